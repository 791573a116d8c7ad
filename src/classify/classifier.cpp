#include <algorithm>
#include "classify/classifier.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <opencv2/imgproc.hpp>
#include <random>

#include "lesionflow/io.h"
#include "lesionflow/jsonl.h"
#include "lesionflow/log.h"
#include "lesionflow/metrics.h"
#include "models/checkpoint.h"
#include "train/common.h"
#include "train/generator.h"

namespace lf {
using torch::Tensor;
namespace nn = torch::nn;

// ---- data -----------------------------------------------------------------------------
void LabeledSet::add(const uint8_t* px, int label, float weight, const std::string& id, const std::string& source,
                     std::map<std::string, std::string> g) {
  pixels.insert(pixels.end(), px, px + size * size * 3);
  labels.push_back(label);
  weights.push_back(weight);
  ids.push_back(id);
  sources.push_back(source);
  groups.push_back(std::move(g));
  cls.push_back(-1);
}

void LabeledSet::append(const LabeledSet& o, float scale) {
  if (size == 0) size = o.size;
  for (int64_t i = 0; i < o.count(); ++i) {
    add(o.image(i), o.labels[i], o.weights[i] * scale, o.ids[i], o.sources[i], o.groups[i]);
    cls.back() = o.cls[i];
  }
}

LabeledSet LabeledSet::subset(const std::vector<int64_t>& idx) const {
  LabeledSet s;
  s.size = size;
  for (auto i : idx) {
    s.add(image(i), labels[i], weights[i], ids[i], sources[i], groups[i]);
    s.cls.back() = cls[i];
  }
  return s;
}

std::string skin_band(int f) {
  if (f == 1 || f == 2) return "I-II";
  if (f == 3 || f == 4) return "III-IV";
  if (f == 5 || f == 6) return "V-VI";
  return "unknown";
}

std::map<std::string, std::string> record_groups(const Record& r, const nlohmann::json* cap) {
  std::map<std::string, std::string> g{{"sex", r.sex}, {"age", age_band(r.age)}, {"site", r.site}, {"skin", "unknown"}};
  if (cap && cap->contains("measured")) g["skin"] = skin_band((*cap)["measured"].value("fitzpatrick", 0));
  return g;
}

LabeledSet labeled_from_prepared(const PreparedSet& ps, const std::vector<size_t>& idx,
                                 const std::map<std::string, nlohmann::json>* captions, float weight,
                                 const std::vector<std::string>* classes) {
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

Result<LabeledSet> load_synthetic(const std::string& dir, int size, float weight, int64_t* skipped) {
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
    if (rgb.rows != size || rgb.cols != size) cv::resize(rgb, rgb, cv::Size(size, size), 0, 0, cv::INTER_AREA);
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
nlohmann::json ClassifierConfig::to_json() const {
  return {{"arch", arch}, {"image_size", image_size}, {"width", width}, {"stem_stride", stem_stride}, {"vit_dim", vit_dim},
          {"vit_depth", vit_depth}, {"vit_heads", vit_heads}, {"patch", patch}, {"dropout", dropout},
          {"classes", classes}, {"malignant", malignant}};
}

Result<ClassifierConfig> ClassifierConfig::from_json(const nlohmann::json& j) {
  ClassifierConfig c;
  try {
    c.arch = j.value("arch", c.arch);
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
  if (c.arch != "cnn" && c.arch != "vit") return Status::error("classifier config: arch must be cnn or vit, got '" + c.arch + "'");
  if (c.arch == "vit" && (c.image_size % c.patch != 0 || c.vit_dim % c.vit_heads != 0))
    return Status::error("classifier config: image_size must be a multiple of patch and vit_dim of vit_heads");
  return c;
}

int64_t ClassifierConfig::feature_dim() const { return arch == "cnn" ? width * 8 : vit_dim; }

namespace {
void add_conv_bn(nn::Sequential& s, int in, int out, int stride, bool relu) {
  s->push_back(nn::Conv2d(nn::Conv2dOptions(in, out, 3).stride(stride).padding(1).bias(false)));
  s->push_back(nn::BatchNorm2d(out));
  if (relu) s->push_back(nn::ReLU(nn::ReLUOptions(true)));
}
}  // namespace

ClassifierImpl::ClassifierImpl(const ClassifierConfig& c) : cfg_(c) {
  if (c.arch == "cnn") {
    // ResNet-style: stem, four stages of one basic block each (widths w, 2w, 4w, 8w; stride 2
    // from the second stage), global average pooling.
    if (cfg_.stem_stride <= 0) cfg_.stem_stride = c.image_size >= 64 ? 2 : 1;
    stem_ = nn::Sequential();
    add_conv_bn(stem_, 3, c.width, cfg_.stem_stride, true);
    register_module("stem", stem_);
    int in = c.width;
    for (int s = 0; s < 4; ++s) {
      int out = c.width << s, stride = s == 0 ? 1 : 2;
      nn::Sequential body;
      add_conv_bn(body, in, out, stride, true);
      add_conv_bn(body, out, out, 1, false);
      blocks_.push_back(register_module("block" + std::to_string(s), body));
      nn::Sequential sc;
      if (in != out || stride != 1)
        sc = nn::Sequential(nn::Conv2d(nn::Conv2dOptions(in, out, 1).stride(stride).bias(false)), nn::BatchNorm2d(out));
      shortcuts_.push_back(register_module("shortcut" + std::to_string(s), sc));
      in = out;
    }
  } else {
    const int D = c.vit_dim, T = (c.image_size / c.patch) * (c.image_size / c.patch);
    patch_embed_ = register_module("patch_embed", nn::Conv2d(nn::Conv2dOptions(3, D, c.patch).stride(c.patch)));
    cls_ = register_parameter("cls", torch::zeros({1, 1, D}));
    pos_ = register_parameter("pos", torch::randn({1, T + 1, D}) * 0.02);
    for (int l = 0; l < c.vit_depth; ++l) {
      auto n = std::to_string(l);
      ln1_.push_back(register_module("ln1_" + n, nn::LayerNorm(nn::LayerNormOptions({D}))));
      qkv_.push_back(register_module("qkv_" + n, nn::Linear(D, 3 * D)));
      proj_.push_back(register_module("proj_" + n, nn::Linear(D, D)));
      ln2_.push_back(register_module("ln2_" + n, nn::LayerNorm(nn::LayerNormOptions({D}))));
      fc1_.push_back(register_module("fc1_" + n, nn::Linear(D, 4 * D)));
      fc2_.push_back(register_module("fc2_" + n, nn::Linear(4 * D, D)));
    }
    norm_ = register_module("norm", nn::LayerNorm(nn::LayerNormOptions({D})));
  }
  drop_ = register_module("drop", nn::Dropout(c.dropout));
  head_ = register_module("head", nn::Linear(c.feature_dim(), c.outputs()));
}

Tensor ClassifierImpl::cnn_features(const Tensor& x) {
  auto h = stem_->forward(x);
  for (size_t s = 0; s < blocks_.size(); ++s) {
    auto sc = shortcuts_[s]->size() ? shortcuts_[s]->forward(h) : h;
    h = torch::relu(blocks_[s]->forward(h) + sc);
  }
  return h.mean({2, 3});
}

Tensor ClassifierImpl::vit_features(const Tensor& x) {
  const int64_t N = x.size(0), D = cfg_.vit_dim, H = cfg_.vit_heads, dh = D / H;
  auto t = patch_embed_->forward(x).flatten(2).transpose(1, 2);  // [N,T,D]
  t = torch::cat({cls_.expand({N, 1, D}), t}, 1) + pos_;
  const int64_t L = t.size(1);
  for (size_t l = 0; l < qkv_.size(); ++l) {
    auto qkv = qkv_[l]->forward(ln1_[l]->forward(t)).view({N, L, 3, H, dh}).permute({2, 0, 3, 1, 4});
    auto o = attention(qkv[0], qkv[1], qkv[2], Tensor()).transpose(1, 2).reshape({N, L, D});  // models/mmdit.h
    t = t + proj_[l]->forward(o);
    t = t + fc2_[l]->forward(torch::gelu(fc1_[l]->forward(ln2_[l]->forward(t))));
  }
  return norm_->forward(t.select(1, 0));
}

Tensor ClassifierImpl::features(const Tensor& x) { return cfg_.arch == "cnn" ? cnn_features(x) : vit_features(x); }

// ---- training ---------------------------------------------------------------------------
nlohmann::json ClsTrainConfig::to_json() const {
  return {{"epochs", epochs}, {"batch", batch}, {"lr", lr}, {"weight_decay", weight_decay},
          {"warmup_epochs", warmup_epochs}, {"balanced", balanced}, {"augment", augment},
          {"patience", patience}, {"max_minutes", max_minutes}, {"seed", seed}, {"out", out}};
}

namespace {
// Random resized crop (scale 0.7-1, aspect 3/4-4/3), dihedral transform, colour jitter
// (brightness, contrast, saturation +-15%) on one image x [3,S,S] in [-1,1].
Tensor augment_lesion(Tensor x, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> U(0, 1);
  const int64_t S = x.size(1);
  double scale = 0.7 + 0.3 * U(rng), ar = std::exp(std::log(0.75) + (std::log(4.0 / 3) - std::log(0.75)) * U(rng));
  int64_t w = std::clamp<int64_t>(std::lround(S * std::sqrt(scale * ar)), 8, S);
  int64_t h = std::clamp<int64_t>(std::lround(S * std::sqrt(scale / ar)), 8, S);
  int64_t x0 = static_cast<int64_t>(U(rng) * (S - w + 1)), y0 = static_cast<int64_t>(U(rng) * (S - h + 1));
  x = x.slice(1, y0, y0 + h).slice(2, x0, x0 + w).unsqueeze(0);
  x = torch::nn::functional::interpolate(
          x, torch::nn::functional::InterpolateFuncOptions().size(std::vector<int64_t>{S, S}).mode(torch::kBilinear).align_corners(false))
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

std::vector<double> predict_malignant(Classifier& model, const uint8_t* pixels, int64_t n, int size, int batch) {
  auto pr = predict_proba(model, pixels, n, size, batch);
  const auto& c = model->config();
  Tensor p;
  if (c.classes.empty()) {
    p = pr.select(1, 1);
  } else {
    auto m = torch::tensor(std::vector<float>(c.malignant.begin(), c.malignant.end()), torch::kFloat32);
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

Result<LoadedClassifier> load_classifier(const std::string& path) {
  LF_ASSIGN_OR_RETURN(SafeTensors st, load_safetensors(path));
  if (st.metadata["format"] != "lesionflow.classifier.v1")
    return Status::error(path + ": not a lesionflow classifier (metadata format '" + st.metadata["format"] + "')");
  nlohmann::json cj;
  try {
    cj = nlohmann::json::parse(st.metadata["config"]);
  } catch (const std::exception& e) {
    return Status::error(path + ": bad classifier config in metadata: " + e.what());
  }
  LF_ASSIGN_OR_RETURN(ClassifierConfig cfg, ClassifierConfig::from_json(cj));
  LoadedClassifier lc;
  lc.model = Classifier(cfg);
  LF_RETURN_IF_ERROR(load_module_tensors(st, *lc.model, path));
  lc.threshold = std::atof(st.metadata["threshold"].c_str());
  lc.metadata = st.metadata;
  lc.model->eval();
  return lc;
}

Result<ClsTrainResult> train_classifier(const ClsTrainConfig& cfg, Classifier& model, const LabeledSet& train,
                                        const LabeledSet& val) {
  if (train.count() < 2) return Status::error("classify: fewer than 2 training images");
  if (cfg.out.empty()) return Status::error("classify: an output directory is required");
  if (train.size != model->config().image_size)
    return Status::error("classify: images are " + std::to_string(train.size) + "px, the model expects " +
                         std::to_string(model->config().image_size) + "px");
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
      return Status::error("classify: training image '" + train.ids[i] + "' has no class among the model's " +
                           std::to_string(K) + " outputs");
  }
  std::vector<double> count(K, 0.0);
  for (int y : target) count[y] += 1;
  std::vector<float> sample_w(N);
  for (int64_t i = 0; i < N; ++i)
    sample_w[i] = train.weights[i] * static_cast<float>(cfg.balanced ? N / (K * count[target[i]]) : 1.0);

  torch::optim::AdamW opt(model->parameters(), torch::optim::AdamWOptions(cfg.lr).weight_decay(cfg.weight_decay));
  ClsTrainResult res;
  int epoch = 0, since_best = 0;
  if (cfg.resume && file_exists(state)) {
    LF_ASSIGN_OR_RETURN(SafeTensors w, load_safetensors(last));
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
    torch::manual_seed(cfg.seed * 1000003ULL + epoch);  // dropout: same stream after a resume
    model->train();
    double loss_sum = 0;
    for (int64_t b = 0; b < steps_per_epoch; ++b) {
      const int64_t step = epoch * steps_per_epoch + b;
      set_lr(opt, warmup_cosine_lr(cfg.lr, cfg.warmup_epochs * steps_per_epoch, total_steps, 0.01, step));
      auto idx = plan.at(step);
      auto x = batch_tensor(train, idx);
      if (cfg.augment) {
        std::mt19937_64 rng(cfg.seed * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(step) * 2654435761ULL + 3);
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
      auto per = torch::nn::functional::cross_entropy(model->forward(x), yt,
                                                      torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
      auto loss = (per * wt).sum() / wt.sum();
      double lv = loss.item<double>();
      if (!std::isfinite(lv))
        return Status::error("classify: loss is " + std::to_string(lv) + " at epoch " + std::to_string(epoch) +
                             " step " + std::to_string(b) + "; stopped (last good weights in " + last + "); try a lower --lr");
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
    append_line(hist, nlohmann::json{{"step", epoch + 1}, {"epoch", epoch + 1}, {"train_loss", loss_sum / steps_per_epoch},
                                     {"val_auc", std::isnan(val_auc) ? nlohmann::json(nullptr) : nlohmann::json(val_auc)}}
                          .dump());
    LF_RETURN_IF_ERROR(save_classifier(last, model, 0.5,
                                       {{"best_epoch", std::to_string(res.best_epoch)},
                                        {"best_val_auc", std::to_string(res.best_val_auc)},
                                        {"since_best", std::to_string(since_best)}}));
    LF_RETURN_IF_ERROR(save_state(state, epoch + 1, opt));  // last: a state implies matching weights
    res.epochs_run = epoch + 1;
    double minutes = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 60;
    if (since_best >= cfg.patience) {
      res.stopped_early = true;
      log_info("early stop after epoch " + std::to_string(epoch + 1) + " (best " + std::to_string(res.best_epoch) + ")");
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
                                     {{"epoch", std::to_string(res.best_epoch)}, {"val_auc", std::to_string(res.best_val_auc)},
                                      {"train", cfg.to_json().dump()}}));
  prog.finish(res.stopped_early ? "(early stop)" : "", res.epochs_run > 0 ? static_cast<int64_t>(res.epochs_run) * steps_per_epoch : -1);
  return res;
}

}  // namespace lf
