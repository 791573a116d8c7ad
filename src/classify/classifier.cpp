#include "classify/classifier.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <opencv2/imgproc.hpp>
#include <random>
#include <regex>

#include "core/autocast.h"
#include "data/images_torch.h"
#include "lesionflow/io.h"
#include "lesionflow/jsonl.h"
#include "lesionflow/log.h"
#include "lesionflow/metrics.h"
#include "lesionflow/record_pixels.h"
#include "lesionflow/rng.h"
#include "lesionflow/runtime.h"
#include "models/checkpoint.h"
#include "models/mmdit.h"
#include "train/common.h"

namespace lf {
using torch::Tensor;
namespace nn = torch::nn;

// ---- data -----------------------------------------------------------------------------
int dx_class_index(const std::vector<std::string>& classes, const std::string& dx) {
  auto it = std::find(classes.begin(), classes.end(), dx);
  return it == classes.end() ? -1 : static_cast<int>(it - classes.begin());
}

LabeledSet labeled_from_prepared(const PreparedSet& ps, const std::vector<size_t>& idx,
                                 const std::map<std::string, nlohmann::json>* captions,
                                 float weight, const std::vector<std::string>* classes) {
  LabeledSet s;
  s.size = ps.size;
  for (auto i : idx) {
    const Record& r = ps.records[i];
    if (r.label < 0) continue;
    const nlohmann::json* cap = nullptr;
    if (captions) {
      auto it = captions->find(r.id);
      if (it != captions->end()) cap = &it->second;
    }
    auto g = record_groups(r, cap);
    g["dx"] = r.dx;  // not a subgroup: per-diagnosis error shares (evaluation_json's by_dx)
    s.add(ps.image(i), r.label, weight, r.id, "real", std::move(g));
    if (classes) s.cls.back() = dx_class_index(*classes, r.dx);
  }
  return s;
}

Result<LabeledSet> load_synthetic(const std::string& dir, int size, float weight,
                                  int64_t* skipped) {
  const std::string manifest = dir + "/manifest.jsonl";
  LF_ASSIGN_OR_RETURN(auto lines, read_jsonl(manifest));
  // In id order, not file order: the ids follow the plan, while the manifest's lines follow
  // generation (grouped per adapter, or a completed set's remade images last). Training draws
  // its batches by position, so two sets with the same images must load in the same order.
  std::stable_sort(lines.begin(), lines.end(), [](const auto& a, const auto& b) {
    return a.value("id", std::string()) < b.value("id", std::string());
  });
  LabeledSet s;
  s.size = size;
  int64_t bad = 0;
  for (auto& j : lines) {
    std::string file = dir + "/" + j.value("file", "");
    auto img = read_image(file);
    if (!img.ok()) {
      ++bad;
      log_warn(img.status().message() + " (skipped)");
      continue;
    }
    cv::Mat rgb;
    cv::cvtColor(*img, rgb, cv::COLOR_BGR2RGB);
    if (rgb.rows != size || rgb.cols != size)
      cv::resize(rgb, rgb, cv::Size(size, size), 0, 0, cv::INTER_AREA);
    if (!rgb.isContinuous()) rgb = rgb.clone();
    std::map<std::string, std::string> g;
    if (j.contains("subgroup"))
      for (auto& [k, v] : j["subgroup"].items()) g[k] = v.get<std::string>();
    if (j.contains("dx") && j["dx"].is_string())
      g["dx"] = j["dx"].get<std::string>();  // for a dx classifier's class (set_dx_classes)
    s.add(rgb.data, j.value("label", 0), weight, j.value("id", file), "synthetic", g);
  }
  if (skipped) *skipped = bad;
  if (s.count() == 0) return Status::error(manifest + ": no readable synthetic images");
  return s;
}

// ---- model ----------------------------------------------------------------------------
Result<ClassifierArch> parse_arch(const std::string& name) {
  if (name == "cnn") return ClassifierArch::kCnn;
  if (name == "vit") return ClassifierArch::kVit;
  return Status::error("classifier arch must be cnn or vit, got '" + name + "'");
}
const char* arch_name(ClassifierArch a) { return a == ClassifierArch::kVit ? "vit" : "cnn"; }

nlohmann::json ClassifierConfig::to_json() const {
  return {
      {"arch", arch_name(arch)}, {"image_size", image_size},
      {"width", width},          {"stem_stride", stem_stride},
      {"vit_dim", vit_dim},      {"vit_depth", vit_depth},
      {"vit_heads", vit_heads},  {"patch", patch},
      {"dropout", dropout},      {"classes", classes},
      {"malignant", malignant},  {"colour_constancy", shades_of_gray ? "shades-of-gray" : "none"}};
}

Result<ClassifierConfig> ClassifierConfig::from_json(const nlohmann::json& j) {
  ClassifierConfig c;
  try {
    auto arch = parse_arch(j.value("arch", std::string("cnn")));
    if (!arch.ok()) return Status::error("classifier config: " + arch.status().message());
    c.arch = *arch;
    c.image_size = j.value("image_size", c.image_size);
    c.width = j.value("width", c.width);
    c.stem_stride = j.value("stem_stride", c.stem_stride);
    c.vit_dim = j.value("vit_dim", c.vit_dim);
    c.vit_depth = j.value("vit_depth", c.vit_depth);
    c.vit_heads = j.value("vit_heads", c.vit_heads);
    c.patch = j.value("patch", c.patch);
    c.dropout = j.value("dropout", c.dropout);
    c.classes = j.value("classes", c.classes);
    c.malignant = j.value("malignant", c.malignant);
    const std::string cc = j.value("colour_constancy", std::string("none"));
    if (cc != "none" && cc != "shades-of-gray")
      return Status::error(
          "classifier config: colour_constancy must be none or shades-of-gray, "
          "not '" +
          cc + "'");
    c.shades_of_gray = cc == "shades-of-gray";
  } catch (const std::exception& e) {
    return Status::error(std::string("classifier config: ") + e.what());
  }
  if (!c.classes.empty() && c.malignant.size() != c.classes.size())
    return Status::error("classifier config: 'malignant' needs one flag per class");
  if (c.arch == ClassifierArch::kVit &&
      (c.image_size % c.patch != 0 || c.vit_dim % c.vit_heads != 0))
    return Status::error(
        "classifier config: image_size must be a multiple of patch and vit_dim of vit_heads");
  return c;
}

int64_t ClassifierConfig::feature_dim() const {
  return arch == ClassifierArch::kCnn ? width * 8 : vit_dim;
}

ClassifierImpl::ClassifierImpl(const ClassifierConfig& c) : cfg_(c) {
  if (c.arch == ClassifierArch::kCnn) {
    if (cfg_.stem_stride <= 0) cfg_.stem_stride = c.image_size >= 64 ? 2 : 1;
    cnn_ = register_module("cnn", ResNetFeatures(c.width, cfg_.stem_stride));
  } else {
    vit_ = register_module("vit",
                           ViTFeatures(c.image_size, c.patch, c.vit_dim, c.vit_depth, c.vit_heads));
  }
  drop_ = register_module("drop", nn::Dropout(c.dropout));
  head_ = register_module("head", nn::Linear(c.feature_dim(), c.outputs()));
}

// Under --precision bf16 the convolutions, linears and attention products run in bfloat16 (CPU
// autocast); the features, head, loss and optimizer stay float32.
Tensor ClassifierImpl::features(const Tensor& x) {
  ScopedBf16Autocast autocast(compute_precision() == Precision::kBF16);
  auto f = cfg_.arch == ClassifierArch::kCnn ? cnn_->forward(x) : vit_->forward(x);
  return f.to(torch::kFloat32);
}

Tensor classifier_input(const ClassifierConfig& c, const std::vector<const uint8_t*>& px,
                        int size) {
  if (!c.shades_of_gray) return images_to_tensor(px, size);
  const int64_t n = static_cast<int64_t>(size) * size;
  std::vector<uint8_t> buf(px.size() * n * 3);
  std::vector<const uint8_t*> ptrs;
  for (size_t i = 0; i < px.size(); ++i) {
    uint8_t* dst = buf.data() + i * n * 3;
    std::copy(px[i], px[i] + n * 3, dst);
    shades_of_gray(dst, n);
    ptrs.push_back(dst);
  }
  return images_to_tensor(ptrs, size);
}

// ---- inference -------------------------------------------------------------------------
namespace {
// Runs `head` (the batch's normalised input on the model's device -> a [b, width] tensor) over
// the n images in batches, in eval mode without gradients; [0, width] when there are none.
Tensor map_batches(Classifier& model, const uint8_t* pixels, int64_t n, int size, int batch,
                   int64_t width, const std::function<Tensor(const Tensor&)>& head) {
  torch::NoGradGuard ng;
  model->eval();
  const auto dev = module_device(*model);
  std::vector<Tensor> parts;
  for (int64_t s = 0; s < n; s += batch) {
    std::vector<const uint8_t*> px;
    for (int64_t i = s; i < std::min(n, s + batch); ++i) px.push_back(pixels + i * size * size * 3);
    parts.push_back(head(classifier_input(model->config(), px, size).to(dev)).to(torch::kCPU));
  }
  return parts.empty() ? torch::zeros({0, width}) : torch::cat(parts);
}
}  // namespace

Tensor predict_proba(Classifier& model, const uint8_t* pixels, int64_t n, int size, int batch) {
  return map_batches(model, pixels, n, size, batch, model->config().outputs(),
                     [&](const Tensor& x) { return torch::softmax(model->forward(x), 1); });
}

std::vector<double> predict_malignant(Classifier& model, const uint8_t* pixels, int64_t n, int size,
                                      int batch) {
  auto pr = predict_proba(model, pixels, n, size, batch);
  const auto& c = model->config();
  Tensor p;
  if (c.classes.empty()) {
    p = pr.select(1, 1);
  } else {
    auto m =
        torch::tensor(std::vector<float>(c.malignant.begin(), c.malignant.end()), torch::kFloat32);
    p = (pr * m).sum(1);
  }
  p = p.to(torch::kFloat64).contiguous();
  return std::vector<double>(p.data_ptr<double>(), p.data_ptr<double>() + p.numel());
}

std::vector<double> predict_malignant(Classifier& model, const LabeledSet& set, int batch) {
  return predict_malignant(model, set.pixels.data(), set.count(), set.size, batch);
}

Tensor extract_features(Classifier& model, const uint8_t* pixels, int64_t n, int size, int batch) {
  return map_batches(model, pixels, n, size, batch, model->config().feature_dim(),
                     [&](const Tensor& x) { return model->features(x); });
}

Status save_classifier(const std::string& path, Classifier& model, double threshold,
                       const std::map<std::string, std::string>& extra,
                       const std::optional<Platt>& platt) {
  std::map<std::string, std::string> meta = extra;
  meta["format"] = "lesionflow.classifier.v1";
  meta["config"] = model->config().to_json().dump();
  meta["threshold"] = std::to_string(threshold);
  if (platt) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.17g", platt->a);
    meta["platt_a"] = buf;
    std::snprintf(buf, sizeof buf, "%.17g", platt->b);
    meta["platt_b"] = buf;
  }
  std::string names;
  for (const auto& c : model->config().classes) names += (names.empty() ? "" : ",") + c;
  meta["classes"] = names.empty() ? "benign,malignant" : names;
  return save_module(path, *model, meta, /*with_buffers=*/true);
}

// Checkpoints written before the backbones became modules of their own (models/cnn.h,
// models/vit.h; e.g. the shipped reference network) name their tensors without the backbone
// prefix ("stem.0.weight", "qkv_3.bias"): renamed here to the current names.
namespace {
SafeTensors with_current_names(SafeTensors st, ClassifierArch arch) {
  bool legacy = false;
  for (auto& [k, t] : st.tensors)
    if (k.rfind("cnn.", 0) != 0 && k.rfind("vit.", 0) != 0 && k.rfind("head.", 0) != 0)
      legacy = true;
  if (!legacy) return st;
  std::map<std::string, RawTensor> renamed;
  static const std::regex block_re("^(ln1|qkv|proj|ln2|fc1|fc2)_([0-9]+)\\.(.*)$");
  for (auto& [k, t] : st.tensors) {
    std::string name = k;
    std::smatch m;
    if (k.rfind("head.", 0) == 0)
      name = k;
    else if (arch == ClassifierArch::kCnn)
      name = "cnn." + k;
    else if (std::regex_match(k, m, block_re))
      name = "vit.blocks." + m[2].str() + "." + m[1].str() + "." + m[3].str();
    else
      name = "vit." + k;
    renamed[name] = std::move(t);
  }
  st.tensors = std::move(renamed);
  return st;
}

}  // namespace

Status load_classifier_weights(SafeTensors st, Classifier& model, const std::string& path) {
  st = with_current_names(std::move(st), model->config().arch);
  return load_module_tensors(st, *model, path);
}

Result<LoadedClassifier> load_classifier(const std::string& path) {
  LF_ASSIGN_OR_RETURN(SafeTensors st, load_safetensors(path));
  if (st.metadata["format"] != "lesionflow.classifier.v1")
    return Status::error(path + ": not a lesionflow classifier (metadata format '" +
                         st.metadata["format"] + "')");
  nlohmann::json cj;
  try {
    cj = nlohmann::json::parse(st.metadata["config"]);
  } catch (const std::exception& e) {
    return Status::error(path + ": bad classifier config in metadata: " + e.what());
  }
  LF_ASSIGN_OR_RETURN(ClassifierConfig cfg, ClassifierConfig::from_json(cj));
  LoadedClassifier lc;
  lc.model = Classifier(cfg);
  LF_RETURN_IF_ERROR(load_classifier_weights(st, lc.model, path));
  lc.threshold = std::atof(st.metadata["threshold"].c_str());
  if (st.metadata.count("platt_a") && st.metadata.count("platt_b"))
    lc.platt =
        Platt{std::atof(st.metadata["platt_a"].c_str()), std::atof(st.metadata["platt_b"].c_str())};
  lc.metadata = st.metadata;
  lc.model->eval();
  return lc;
}

}  // namespace lf
