// Skin-lesion classifiers trained from scratch: a small ResNet-style CNN and a small ViT
// (patch 8 at 64 px), binary benign (0) vs malignant (1). Training with augmentation,
// class-balanced loss, per-source weights, early stopping on validation AUC, exact resume.
#pragma once
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "lesionflow/data.h"
#include "lesionflow/status.h"
#include "pch_torch.h"

namespace lf {

// Images with labels, a per-image loss weight and subgroup attributes.
struct LabeledSet {
  int size = 0;
  std::vector<uint8_t> pixels;  // N*S*S*3 RGB, NHWC
  std::vector<int> labels;
  std::vector<float> weights;
  std::vector<std::string> ids, sources;                   // source: "real" | "synthetic" | ...
  std::vector<std::map<std::string, std::string>> groups;  // sex, age, site, skin
  std::vector<int> cls;  // class index for a multi-class (dx) classifier; -1 = none
  int64_t count() const { return static_cast<int64_t>(labels.size()); }
  const uint8_t* image(int64_t i) const { return pixels.data() + i * size * size * 3; }
  void add(const uint8_t* px, int label, float weight, const std::string& id, const std::string& source,
           std::map<std::string, std::string> g);
  void append(const LabeledSet& o, float weight_scale = 1.0f);
  LabeledSet subset(const std::vector<int64_t>& idx) const;
};

// Subgroup attributes of a record: sex, age band, site, and skin-tone band when a caption
// record (captions.jsonl line) gives the measured Fitzpatrick-like type.
std::map<std::string, std::string> record_groups(const Record& r, const nlohmann::json* caption);
std::string skin_band(int fitzpatrick);  // 1..6 -> "I-II" | "III-IV" | "V-VI", else "unknown"

// Rows `idx` of a prepared cache (records with unknown label are skipped).
// With `classes` (dx codes), each image's `cls` is the index of its dx (-1 when absent).
LabeledSet labeled_from_prepared(const PreparedSet& ps, const std::vector<size_t>& idx,
                                 const std::map<std::string, nlohmann::json>* captions, float weight = 1.0f,
                                 const std::vector<std::string>* classes = nullptr);
// A synthetic set written by `lesionflow synth` (DIR/manifest.jsonl + PNGs), resized to `size`.
// Unreadable images are skipped and counted in *skipped.
Result<LabeledSet> load_synthetic(const std::string& dir, int size, float weight, int64_t* skipped);

struct ClassifierConfig {
  std::string arch = "cnn";  // cnn | vit
  int image_size = 64;
  int width = 32;       // cnn: channels of the first stage (x2 per stage)
  int stem_stride = 0;  // cnn: 0 = auto (2 from 64 px up, else 1)
  int vit_dim = 128, vit_depth = 6, vit_heads = 4, patch = 8;
  double dropout = 0.1;
  // Outputs: empty `classes` = benign/malignant (2 logits); else one logit per dx code, and
  // P(malignant) is the summed probability of the classes flagged in `malignant`.
  std::vector<std::string> classes;
  std::vector<int> malignant;
  int outputs() const { return classes.empty() ? 2 : static_cast<int>(classes.size()); }
  nlohmann::json to_json() const;
  static Result<ClassifierConfig> from_json(const nlohmann::json& j);
  int64_t feature_dim() const;
};

class ClassifierImpl : public torch::nn::Module {
 public:
  explicit ClassifierImpl(const ClassifierConfig& c);
  torch::Tensor features(const torch::Tensor& x);  // x [N,3,S,S] in [-1,1] -> [N,F]
  torch::Tensor forward(const torch::Tensor& x) { return head_->forward(drop_->forward(features(x))); }
  const ClassifierConfig& config() const { return cfg_; }

 private:
  torch::Tensor cnn_features(const torch::Tensor& x);
  torch::Tensor vit_features(const torch::Tensor& x);
  ClassifierConfig cfg_;
  // cnn
  torch::nn::Sequential stem_{nullptr};
  std::vector<torch::nn::Sequential> blocks_, shortcuts_;
  // vit
  torch::nn::Conv2d patch_embed_{nullptr};
  torch::Tensor cls_, pos_;
  std::vector<torch::nn::LayerNorm> ln1_, ln2_;
  std::vector<torch::nn::Linear> qkv_, proj_, fc1_, fc2_;
  torch::nn::LayerNorm norm_{nullptr};
  torch::nn::Dropout drop_{nullptr};
  torch::nn::Linear head_{nullptr};
};
TORCH_MODULE(Classifier);

struct ClsTrainConfig {
  int epochs = 20;
  int batch = 64;
  double lr = 1e-3;
  double weight_decay = 0.05;
  int warmup_epochs = 1;
  bool balanced = true;   // class weights N / (2 N_c) on the loss
  bool augment = true;    // dihedral, random resized crop, colour jitter
  int patience = 5;       // epochs without validation-AUC improvement before stopping
  double max_minutes = 0; // budget: stop after the epoch that crosses it
  uint64_t seed = 0;
  std::string out;        // run directory
  bool resume = false;
  nlohmann::json to_json() const;
};
struct ClsTrainResult {
  int epochs_run = 0, best_epoch = -1;
  double best_val_auc = 0, threshold = 0.5, seconds = 0, images_per_second = 0;
  bool stopped_early = false;
};
// Run directory: best.safetensors (weights of the best validation epoch, threshold picked on
// validation in the metadata), last.safetensors + state.bin (resume), history.jsonl.
Result<ClsTrainResult> train_classifier(const ClsTrainConfig& cfg, Classifier& model, const LabeledSet& train,
                                        const LabeledSet& val);

// Class probabilities [N, outputs] for images in [-1,1], eval mode.
torch::Tensor predict_proba(Classifier& model, const uint8_t* pixels, int64_t n, int size, int batch = 128);
// P(malignant) for every image, eval mode, in batches.
std::vector<double> predict_malignant(Classifier& model, const LabeledSet& set, int batch = 128);
std::vector<double> predict_malignant(Classifier& model, const uint8_t* pixels, int64_t n, int size, int batch = 128);
// Penultimate features [N,F] (float, CPU).
torch::Tensor extract_features(Classifier& model, const uint8_t* pixels, int64_t n, int size, int batch = 128);

Status save_classifier(const std::string& path, Classifier& model, double threshold,
                       const std::map<std::string, std::string>& extra = {});
struct LoadedClassifier {
  Classifier model{nullptr};
  double threshold = 0.5;
  std::map<std::string, std::string> metadata;
};
Result<LoadedClassifier> load_classifier(const std::string& path);

}  // namespace lf
