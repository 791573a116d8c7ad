#include "classify/classifier.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <opencv2/imgproc.hpp>
#include <random>
#include <regex>

#include "core/autocast.h"
#include "data/images_torch.h"
#include "lesionflow/io.h"
#include "lesionflow/jsonl.h"
#include "lesionflow/log.h"
#include "lesionflow/metrics.h"
#include "lesionflow/rng.h"
#include "lesionflow/runtime.h"
#include "models/checkpoint.h"
#include "models/mmdit.h"
#include "train/common.h"

namespace lf {
using torch::Tensor;
namespace nn = torch::nn;

// ---- data -----------------------------------------------------------------------------
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
    s.add(ps.image(i), r.label, weight, r.id, "real", record_groups(r, cap));
    if (classes) {
      auto it = std::find(classes->begin(), classes->end(), r.dx);
      s.cls.back() = it == classes->end() ? -1 : static_cast<int>(it - classes->begin());
    }
  }
  return s;
}

Result<LabeledSet> load_synthetic(const std::string& dir, int size, float weight,
                                  int64_t* skipped) {
  const std::string manifest = dir + "/manifest.jsonl";
  LF_ASSIGN_OR_RETURN(auto lines, read_jsonl(manifest));
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
  return {{"arch", arch_name(arch)},    {"image_size", image_size}, {"width", width},
          {"stem_stride", stem_stride}, {"vit_dim", vit_dim},       {"vit_depth", vit_depth},
          {"vit_heads", vit_heads},     {"patch", patch},           {"dropout", dropout},
          {"classes", classes},         {"malignant", malignant}};
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

// ---- training ---------------------------------------------------------------------------
nlohmann::json ClsTrainConfig::to_json() const {
  return {{"epochs", epochs},
          {"batch", batch},
          {"lr", lr},
          {"weight_decay", weight_decay},
          {"warmup_epochs", warmup_epochs},
          {"balanced", balanced},
          {"augment", augment},
          {"patience", patience},
          {"max_minutes", max_minutes},
          {"seed", seed},
          {"out", out}};
}

namespace {
// Random resized crop (scale 0.7-1, aspect 3/4-4/3), dihedral transform, colour jitter
// (brightness, contrast, saturation +-15%) on one image x [3,S,S] in [-1,1].
Tensor augment_lesion(Tensor x, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> U(0, 1);
  const int64_t S = x.size(1);
  double scale = 0.7 + 0.3 * U(rng),
         ar = std::exp(std::log(0.75) + (std::log(4.0 / 3) - std::log(0.75)) * U(rng));
  int64_t w = std::clamp<int64_t>(std::lround(S * std::sqrt(scale * ar)), 8, S);
  int64_t h = std::clamp<int64_t>(std::lround(S * std::sqrt(scale / ar)), 8, S);
  int64_t x0 = static_cast<int64_t>(U(rng) * (S - w + 1)),
          y0 = static_cast<int64_t>(U(rng) * (S - h + 1));
  x = x.slice(1, y0, y0 + h).slice(2, x0, x0 + w).unsqueeze(0);
  x = torch::nn::functional::interpolate(x, torch::nn::functional::InterpolateFuncOptions()
                                                .size(std::vector<int64_t>{S, S})
                                                .mode(torch::kBilinear)
                                                .align_corners(false))
          .squeeze(0);
  x = augment_dihedral(x, rng);
  auto p = (x + 1) * 0.5;
  double b = 1 + 0.3 * (U(rng) - 0.5), c = 1 + 0.3 * (U(rng) - 0.5), s = 1 + 0.3 * (U(rng) - 0.5);
  p = p * b;
  auto mean = p.mean();
  p = (p - mean) * c + mean;
  auto grey = p.mean(0, true);
  p = (p - grey) * s + grey;
  return p.clamp(0, 1) * 2 - 1;
}

Tensor batch_tensor(const LabeledSet& set, const std::vector<int64_t>& idx) {
  std::vector<const uint8_t*> px;
  for (auto i : idx) px.push_back(set.image(i));
  return images_to_tensor(px, set.size);
}
}  // namespace

Tensor predict_proba(Classifier& model, const uint8_t* pixels, int64_t n, int size, int batch) {
  torch::NoGradGuard ng;
  model->eval();
  std::vector<Tensor> parts;
  for (int64_t s = 0; s < n; s += batch) {
    std::vector<const uint8_t*> px;
    for (int64_t i = s; i < std::min(n, s + batch); ++i) px.push_back(pixels + i * size * size * 3);
    parts.push_back(torch::softmax(model->forward(images_to_tensor(px, size)), 1));
  }
  return parts.empty() ? torch::zeros({0, model->config().outputs()}) : torch::cat(parts);
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
  torch::NoGradGuard ng;
  model->eval();
  std::vector<Tensor> parts;
  for (int64_t s = 0; s < n; s += batch) {
    std::vector<const uint8_t*> px;
    for (int64_t i = s; i < std::min(n, s + batch); ++i) px.push_back(pixels + i * size * size * 3);
    parts.push_back(model->features(images_to_tensor(px, size)));
  }
  return parts.empty() ? torch::zeros({0, model->config().feature_dim()}) : torch::cat(parts);
}

Status save_classifier(const std::string& path, Classifier& model, double threshold,
                       const std::map<std::string, std::string>& extra) {
  std::map<std::string, std::string> meta = extra;
  meta["format"] = "lesionflow.classifier.v1";
  meta["config"] = model->config().to_json().dump();
  meta["threshold"] = std::to_string(threshold);
  std::string names;
  for (const auto& c : model->config().classes) names += (names.empty() ? "" : ",") + c;
  meta["classes"] = names.empty() ? "benign,malignant" : names;
  return save_module(path, *model, meta, /*with_buffers=*/true);
}

// Checkpoints written before the backbones became modules of their own (models/cnn.h,
// models/vit.h; e.g. the shipped reference network) name their tensors without the backbone
// prefix ("stem.0.weight", "qkv_3.bias"): renamed here to the current names.
static SafeTensors with_current_names(SafeTensors st, ClassifierArch arch) {
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
  st = with_current_names(std::move(st), cfg.arch);
  LF_RETURN_IF_ERROR(load_module_tensors(st, *lc.model, path));
  lc.threshold = std::atof(st.metadata["threshold"].c_str());
  lc.metadata = st.metadata;
  lc.model->eval();
  return lc;
}

Result<ClsTrainResult> train_classifier(const ClsTrainConfig& cfg, Classifier& model,
                                        const LabeledSet& train, const LabeledSet& val) {
  if (train.count() < 2) return Status::error("classify: fewer than 2 training images");
  if (cfg.out.empty()) return Status::error("classify: an output directory is required");
  if (train.size != model->config().image_size)
    return Status::error("classify: images are " + std::to_string(train.size) +
                         "px, the model expects " + std::to_string(model->config().image_size) +
                         "px");
  LF_RETURN_IF_ERROR(make_dirs(cfg.out));
  const std::string last = cfg.out + "/last.safetensors", best = cfg.out + "/best.safetensors",
                    state = cfg.out + "/state.bin", hist = cfg.out + "/history.jsonl";
  const int64_t N = train.count();
  const int64_t steps_per_epoch = std::max<int64_t>(1, N / cfg.batch);
  const int64_t total_steps = steps_per_epoch * cfg.epochs;
  // Targets: benign/malignant, or the dx class of a multi-class model. Class weights (balanced,
  // N / (K N_c)) times source weights.
  const int K = model->config().outputs();
  const bool multi = !model->config().classes.empty();
  std::vector<int> target(N);
  for (int64_t i = 0; i < N; ++i) {
    target[i] = multi ? train.cls[i] : train.labels[i];
    if (target[i] < 0 || target[i] >= K)
      return Status::error("classify: training image '" + train.ids[i] +
                           "' has no class among the model's " + std::to_string(K) + " outputs");
  }
  std::vector<double> count(K, 0.0);
  for (int y : target) count[y] += 1;
  std::vector<float> sample_w(N);
  for (int64_t i = 0; i < N; ++i)
    sample_w[i] =
        train.weights[i] * static_cast<float>(cfg.balanced ? N / (K * count[target[i]]) : 1.0);

  torch::optim::AdamW opt(model->parameters(),
                          torch::optim::AdamWOptions(cfg.lr).weight_decay(cfg.weight_decay));
  ClsTrainResult res;
  int epoch = 0, since_best = 0;
  if (cfg.resume && file_exists(state)) {
    LF_ASSIGN_OR_RETURN(SafeTensors w, load_safetensors(last));
    w = with_current_names(std::move(w), model->config().arch);
    LF_RETURN_IF_ERROR(load_module_tensors(w, *model, last));
    LF_ASSIGN_OR_RETURN(int64_t e, load_state(state, opt));
    epoch = static_cast<int>(e);
    res.best_epoch = std::atoi(w.metadata["best_epoch"].c_str());
    res.best_val_auc = std::atof(w.metadata["best_val_auc"].c_str());
    since_best = std::atoi(w.metadata["since_best"].c_str());
    truncate_metrics(hist, epoch);
    log_info("resumed " + cfg.out + " after epoch " + std::to_string(epoch));
  } else {
    std::filesystem::remove(hist);
  }
  BatchPlan plan(N, cfg.batch, cfg.seed);
  Progress prog("classify", total_steps, "step", epoch * steps_per_epoch);
  auto t0 = std::chrono::steady_clock::now();
  int64_t seen = 0;
  for (; epoch < cfg.epochs; ++epoch) {
    torch::manual_seed(
        derive_seed(cfg.seed, Stream::kClsDropout, epoch));  // dropout: same stream after a resume
    model->train();
    double loss_sum = 0;
    for (int64_t b = 0; b < steps_per_epoch; ++b) {
      const int64_t step = epoch * steps_per_epoch + b;
      set_lr(opt, warmup_cosine_lr(cfg.lr, cfg.warmup_epochs * steps_per_epoch, total_steps, 0.01,
                                   step));
      auto idx = plan.at(step);
      auto x = batch_tensor(train, idx);
      if (cfg.augment) {
        std::mt19937_64 rng(derive_seed(cfg.seed, Stream::kClsBatches, step));
        std::vector<Tensor> xs;
        for (int64_t i = 0; i < x.size(0); ++i) xs.push_back(augment_lesion(x[i], rng));
        x = torch::stack(xs);
      }
      std::vector<int64_t> y;
      std::vector<float> w;
      for (auto i : idx) {
        y.push_back(target[i]);
        w.push_back(sample_w[i]);
      }
      auto yt = torch::tensor(y, torch::kInt64), wt = torch::tensor(w, torch::kFloat32);
      auto per = torch::nn::functional::cross_entropy(
          model->forward(x), yt,
          torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
      auto loss = (per * wt).sum() / wt.sum();
      double lv = loss.item<double>();
      if (!std::isfinite(lv))
        return Status::error("classify: loss is " + std::to_string(lv) + " at epoch " +
                             std::to_string(epoch) + " step " + std::to_string(b) +
                             "; stopped (last good weights in " + last + "); try a lower --lr");
      opt.zero_grad();
      loss.backward();
      torch::nn::utils::clip_grad_norm_(model->parameters(), 5.0);
      opt.step();
      loss_sum += lv;
      seen += static_cast<int64_t>(idx.size());
      char extra[64];
      std::snprintf(extra, sizeof extra, "epoch %d loss %.4f", epoch + 1, lv);
      prog.update(step + 1, extra);
    }
    // Validation AUC picks the best epoch.
    double val_auc = std::nan("");
    if (val.count() > 0) val_auc = roc_auc(predict_malignant(model, val), val.labels);
    bool improved = !std::isnan(val_auc) ? val_auc > res.best_val_auc + 1e-6 : true;
    if (improved) {
      res.best_val_auc = std::isnan(val_auc) ? 0 : val_auc;
      res.best_epoch = epoch + 1;
      since_best = 0;
      LF_RETURN_IF_ERROR(save_classifier(best, model, 0.5, {{"epoch", std::to_string(epoch + 1)}}));
    } else {
      ++since_best;
    }
    append_line(hist, nlohmann::json{{"step", epoch + 1},
                                     {"epoch", epoch + 1},
                                     {"train_loss", loss_sum / steps_per_epoch},
                                     {"val_auc", std::isnan(val_auc) ? nlohmann::json(nullptr)
                                                                     : nlohmann::json(val_auc)}}
                          .dump());
    LF_RETURN_IF_ERROR(save_classifier(last, model, 0.5,
                                       {{"best_epoch", std::to_string(res.best_epoch)},
                                        {"best_val_auc", std::to_string(res.best_val_auc)},
                                        {"since_best", std::to_string(since_best)}}));
    LF_RETURN_IF_ERROR(
        save_state(state, epoch + 1, opt));  // last: a state implies matching weights
    res.epochs_run = epoch + 1;
    double minutes =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 60;
    if (since_best >= cfg.patience) {
      res.stopped_early = true;
      log_info("early stop after epoch " + std::to_string(epoch + 1) + " (best " +
               std::to_string(res.best_epoch) + ")");
      break;
    }
    if (cfg.max_minutes > 0 && minutes >= cfg.max_minutes) {
      log_info("classify: time budget reached after epoch " + std::to_string(epoch + 1));
      break;
    }
  }
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  res.images_per_second = seen / std::max(res.seconds, 1e-9);
  // Best weights back; operating point on validation.
  LF_ASSIGN_OR_RETURN(SafeTensors bw, load_safetensors(best));
  LF_RETURN_IF_ERROR(load_module_tensors(bw, *model, best));
  if (val.count() > 0) res.threshold = youden_threshold(predict_malignant(model, val), val.labels);
  LF_RETURN_IF_ERROR(save_classifier(best, model, res.threshold,
                                     {{"epoch", std::to_string(res.best_epoch)},
                                      {"val_auc", std::to_string(res.best_val_auc)},
                                      {"train", cfg.to_json().dump()}}));
  prog.finish(res.stopped_early ? "(early stop)" : "",
              res.epochs_run > 0 ? static_cast<int64_t>(res.epochs_run) * steps_per_epoch : -1);
  return res;
}

}  // namespace lf
