// Classifier, Frechet-distance and synthetic-set stages as library calls (classify train|eval,
// fd, synth); each takes an options struct and returns a JSON summary.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "classify/experiment.h"
#include "lesionflow/status.h"
#include "synth/synth.h"
#include "train/generator.h"

namespace lf {

// Extra test datasets ("isic:CSV:DIR", "folder:PATH", ...) at `size` px.
Result<std::vector<NamedSet>> load_test_datasets(const std::vector<std::string>& specs, int size);

struct ClassifyTrainOptions {
  std::string data, splits, captions, synthetic, out;
  std::string arm = "real";  // real | real+synthetic | real+filtered | synthetic
  std::string filter_with;   // real+filtered: run directory of a real-only classifier
  double filter_confidence = 0.9;
  std::string arch = "cnn";        // cnn | vit
  std::string classes = "binary";  // binary | dx (one output per diagnosis)
  std::vector<std::string> test_datasets;
  int64_t real_size = -1;
  int epochs = 20, batch = 64, width = 32, patience = 5;
  double lr = 1e-3, synthetic_weight = 1.0, max_minutes = 0;
  double shift_augment = 0;               // chance per training image of an acquisition shift
  std::string colour_constancy = "none";  // none | shades-of-gray (every input image)
  bool resume = false;
  uint64_t seed = 0;
  std::string device = "cpu";
  std::shared_ptr<Dist> dist;  // data-parallel rank (train/dist.h); nullptr = one process
};
// Trains in `out` and evaluates on the test split and the extra test sets: run_cls_job's JSON.
Result<nlohmann::json> run_classify_train(const ClassifyTrainOptions& o);

struct ClassifyEvalOptions {
  std::string model;                   // best.safetensors
  std::string data, splits, captions;  // optional: a split of a prepared cache
  std::string split = "test";          // which split of `data`: test | val | train
  std::vector<std::string> test_datasets;
  std::string out;     // optional metrics JSON
  std::string scores;  // optional per-image CSV: set,id,label,score[,p_calibrated]
  uint64_t seed = 0;
  std::string device = "cpu";
};
// {set name: evaluation_json}
Result<nlohmann::json> run_classify_eval(const ClassifyEvalOptions& o);

// Refits a classifier's Platt scaling on a labelled dataset the user brings (e.g. their own
// camera's validation images: the validation split's scaling transfers only in part under an
// acquisition shift) and writes the model with it to `out` (weights, threshold and the other
// metadata unchanged; `platt_fitted_on` names the dataset). Returns {dataset, n, positives,
// platt, previous_platt, before {brier, ece}, after {brier, ece}, out}; before/after are on the
// fitting set itself, so "after" is optimistic.
struct ClassifyCalibrateOptions {
  std::string model, dataset, out;
  std::string device = "cpu";
};
Result<nlohmann::json> run_classify_calibrate(const ClassifyCalibrateOptions& o);

struct FdOptions {
  std::string features;  // classifier whose penultimate layer gives the features ("" = shipped
                         // reference network)
  std::string data, splits, split = "train", images;
  std::vector<std::string> filter;
};
// {fd, pixel_stat_distance, real_images, generated_images, p_malignant_generated, p_malignant_real,
// skipped, ...}
Result<nlohmann::json> run_fd(const FdOptions& o);

struct SynthRunOptions {
  std::string generator, data, splits, captions, out;
  SynthPlanConfig plan;  // total, balance, flatten (plan.seed = seed)
  GenerateConfig gen;    // sampler settings
  SamplerFlags
      given;  // which sampler flags the user gave (the rest: a checkpoint's recommendation)
  bool plan_only = false;
  bool save_latents = false;  // latents/<id>.safetensors beside the images (latent generators)
  // "DX=FILE[:STRENGTH]": the images of that diagnosis are made with this LoRA adapter on the
  // generator (use_dx_adapters); plan.json records them under "adapters_by_dx".
  std::vector<std::string> adapter_for;
  uint64_t seed = 0;
};
// plan.json (plan_only) or the synthetic set with manifest.jsonl; {planned, generated_now, seconds,
// images_per_second, manifest}.
Result<nlohmann::json> run_synth(const SynthRunOptions& o);

struct SynthExportOptions {
  std::string synthetic, format, out;
  std::string data;  // optional prepared cache: age, sex and site of each source image
};
// export_synthetic() of synth/synth.h; {out, format, images, per_class}.
Result<nlohmann::json> run_synth_export(const SynthExportOptions& o);

}  // namespace lf
