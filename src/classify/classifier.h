// Skin-lesion classifiers trained from scratch: a small ResNet-style CNN and a small ViT
// (patch 8 at 64 px), binary benign (0) vs malignant (1). Training with augmentation,
// class-balanced loss, per-source weights, early stopping on validation AUC (a dx model: balanced
// accuracy over the diagnoses), exact resume.
#pragma once
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "lesionflow/data.h"
#include "lesionflow/io.h"
#include "lesionflow/metrics.h"
#include "lesionflow/status.h"
#include "models/cnn.h"
#include "models/vit.h"
#include "pch_torch.h"
#include "train/dist.h"

namespace lf {

// The index of `dx` among a dx classifier's `classes`, -1 when it is not one of them.
int dx_class_index(const std::vector<std::string>& classes, const std::string& dx);
// Rows `idx` of a prepared cache (records with unknown label are skipped).
// With `classes` (dx codes), each image's `cls` is the index of its dx (-1 when absent).
LabeledSet labeled_from_prepared(const PreparedSet& ps, const std::vector<size_t>& idx,
                                 const std::map<std::string, nlohmann::json>* captions,
                                 float weight = 1.0f,
                                 const std::vector<std::string>* classes = nullptr);
// A synthetic set written by `lesionflow synth` (DIR/manifest.jsonl + PNGs), resized to `size`.
// Unreadable images are skipped and counted in *skipped.
Result<LabeledSet> load_synthetic(const std::string& dir, int size, float weight, int64_t* skipped);

// Backbone of a classifier: models/cnn.h or models/vit.h.
enum class ClassifierArch { kCnn, kVit };
Result<ClassifierArch> parse_arch(const std::string& name);  // "cnn" | "vit"
const char* arch_name(ClassifierArch a);

struct ClassifierConfig {
  ClassifierArch arch = ClassifierArch::kCnn;
  int image_size = 64;
  int width = 32;       // cnn: channels of the first stage (x2 per stage)
  int stem_stride = 0;  // cnn: 0 = auto (2 from 64 px up, else 1)
  int vit_dim = 128, vit_depth = 6, vit_heads = 4, patch = 8;
  double dropout = 0.1;
  // Outputs: empty `classes` = benign/malignant (2 logits); else one logit per dx code, and
  // P(malignant) is the summed probability of the classes flagged in `malignant`.
  std::vector<std::string> classes;
  std::vector<int> malignant;
  // Shades-of-Gray colour constancy on every input image, in training and at inference (saved
  // with the model, so `classify eval` and the audit normalise test images the same way).
  bool shades_of_gray = false;
  int outputs() const { return classes.empty() ? 2 : static_cast<int>(classes.size()); }
  nlohmann::json to_json() const;
  static Result<ClassifierConfig> from_json(const nlohmann::json& j);
  int64_t feature_dim() const;
};

class ClassifierImpl : public torch::nn::Module {
 public:
  explicit ClassifierImpl(const ClassifierConfig& c);
  torch::Tensor features(const torch::Tensor& x);  // x [N,3,S,S] in [-1,1] -> [N,F]
  torch::Tensor forward(const torch::Tensor& x) {
    return head_->forward(drop_->forward(features(x)));
  }
  const ClassifierConfig& config() const { return cfg_; }

 private:
  ClassifierConfig cfg_;
  ResNetFeatures cnn_{nullptr};  // arch cnn
  ViTFeatures vit_{nullptr};     // arch vit
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
  bool balanced = true;      // class weights N / (2 N_c) on the loss
  bool augment = true;       // dihedral, random resized crop, colour jitter
  double shift_augment = 0;  // chance per image of an acquisition shift (lesionflow/shift.h)
  int patience = 5;          // epochs without validation improvement before stopping (selected_on)
  double max_minutes = 0;    // budget: stop after the epoch that crosses it
  uint64_t seed = 0;
  std::string out;  // run directory
  bool resume = false;
  torch::Device device = torch::kCPU;  // model, optimizer state and batches (moved there)
  // Data-parallel training (train/dist.h): each rank trains on its rows of every global batch,
  // gradients summed over the ranks; rank 0 validates, decides early stopping and writes. With
  // batch norm (the CNN) each rank normalises over its own rows, as PyTorch's DDP does without
  // SyncBatchNorm; rank 0's running statistics are broadcast before every validation.
  std::shared_ptr<Dist> dist;
  nlohmann::json to_json() const;
};
struct ClsTrainResult {
  int epochs_run = 0, best_epoch = -1;
  // The best epoch's validation score: the malignant AUC of a binary model, the balanced accuracy
  // over the diagnoses of a dx model (`selected_on` names it).
  double best_val = 0, threshold = 0.5, seconds = 0, images_per_second = 0;
  std::string selected_on = "val_auc";
  bool stopped_early = false;
  std::optional<Platt> platt;  // fitted on the validation split's scores (none without one)
};
// One step's loss: images x [B,3,S,S] in [-1,1], targets y [B] (int64) and weights w [B] are
// moved to the model's device; returns sum(w * cross-entropy) / sum(w) there, without a host
// synchronisation (the training loop and the device test call this).
torch::Tensor classifier_loss(Classifier& model, const torch::Tensor& x, const torch::Tensor& y,
                              const torch::Tensor& w);
// Run directory: best.safetensors (weights of the best validation epoch; the threshold picked
// and the Platt scaling fitted on validation in the metadata), last.safetensors + state.bin
// (resume), history.jsonl.
Result<ClsTrainResult> train_classifier(const ClsTrainConfig& cfg, Classifier& model,
                                        const LabeledSet& train, const LabeledSet& val);

// The model input [N,3,S,S] in [-1,1] for 8-bit RGB images, with the config's colour constancy.
torch::Tensor classifier_input(const ClassifierConfig& c, const std::vector<const uint8_t*>& px,
                               int size);
// Class probabilities [N, outputs] for images in [-1,1], eval mode.
torch::Tensor predict_proba(Classifier& model, const uint8_t* pixels, int64_t n, int size,
                            int batch = 128);
// P(malignant) for every image, eval mode, in batches.
std::vector<double> predict_malignant(Classifier& model, const LabeledSet& set, int batch = 128);
std::vector<double> predict_malignant(Classifier& model, const uint8_t* pixels, int64_t n, int size,
                                      int batch = 128);
// Penultimate features [N,F] (float, CPU).
torch::Tensor extract_features(Classifier& model, const uint8_t* pixels, int64_t n, int size,
                               int batch = 128);

Status save_classifier(const std::string& path, Classifier& model, double threshold,
                       const std::map<std::string, std::string>& extra = {},
                       const std::optional<Platt>& platt = std::nullopt);
struct LoadedClassifier {
  Classifier model{nullptr};
  double threshold = 0.5;
  std::optional<Platt> platt;  // metadata platt_a / platt_b (checkpoints from before: none)
  std::map<std::string, std::string> metadata;
};
Result<LoadedClassifier> load_classifier(const std::string& path);
// Weights of a classifier checkpoint (or training snapshot) into `model` (names of checkpoints
// written before the backbones were modules of their own are mapped).
Status load_classifier_weights(SafeTensors st, Classifier& model, const std::string& path);

}  // namespace lf
