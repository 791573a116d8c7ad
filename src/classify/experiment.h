// Classifier jobs and the real-vs-synthetic experiment: data loading, one training + evaluation
// job (cached by its result file), aggregation over seeds.
#pragma once
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "classify/classifier.h"
#include "lesionflow/data.h"
#include "lesionflow/status.h"

namespace lf {

struct RealData {
  PreparedSet ps;
  std::vector<size_t> train, val, test;
  std::map<std::string, nlohmann::json> captions;
};
// A prepared cache with a lesion-grouped splits file (train/val/test) and optional captions.
Result<RealData> load_real_data(const std::string& prepared_dir, const std::string& splits_csv,
                                const std::string& captions_path);

struct NamedSet {
  std::string name;
  LabeledSet set;
};
// An extra test dataset ("isic:CSV:DIR", "folder:PATH", ...), prepared in memory at `size`;
// evaluated only, never trained on. Corrupt images are skipped and counted in the log.
Result<NamedSet> load_test_dataset(const std::string& spec, int size);

// The diagnosis task (a classifier with one output per dx).
// The classes of a dx classifier: the diagnoses of the training split, in name order, each flagged
// malignant when its images are (into `malignant`).
std::vector<std::string> dx_classes(const RealData& real, std::vector<int>* malignant);
// Gives each image of `set` the class of its diagnosis (its groups' "dx"); an image whose dx is
// missing or not among `classes` is an error naming it (`what`: "synthetic image", ...).
Status set_dx_classes(LabeledSet& set, const std::vector<std::string>& classes,
                      const std::string& what);
// The diagnosis task on a scored set (prob [N, K], rows in `set`'s order; images with cls < 0
// left out): accuracy, balanced accuracy (mean per-class recall), recall_per_class, n per class
// and the confusion matrix {classes, rows: truth, columns: prediction}.
Result<nlohmann::json> dx_evaluation(const torch::Tensor& prob, const LabeledSet& set,
                                     const std::vector<std::string>& classes);
// Per-image class probabilities as CSV: "id,dx,p_<class>..." (dx = the true diagnosis).
std::string dx_probs_csv(const LabeledSet& set, const torch::Tensor& prob,
                         const std::vector<std::string>& classes);

// Synthetic images whose label a real-only classifier contradicts with high confidence: benign
// ones it scores P(malignant) > confidence, malignant ones it scores < 1 - confidence. Returns
// their indices (ascending).
std::vector<int64_t> contradicted_labels(const std::vector<double>& p_malignant,
                                         const std::vector<int>& labels, double confidence);

// The arms a classifier job knows, in the order the experiment's table lists them.
const std::vector<std::string>& classifier_arms();

struct ClsJob {
  // real | real+synthetic | synthetic | real+filtered (real+synthetic without the synthetic
  // images that the classifier in filter_with contradicts; the drops go to DIR/filtered.jsonl)
  std::string arm = "real";
  std::string filter_with;         // real+filtered: a run directory with best.safetensors
  double filter_confidence = 0.9;  // contradicted_labels() confidence
  int64_t real_size = -1;          // -1: the whole training split
  uint64_t seed = 0;
  ClassifierConfig model;
  ClsTrainConfig train;  // train.out = job directory
  double synthetic_weight = 1.0;
  // Synthetic images used: synthetic-only arm, -1 = as many as real_size; real+synthetic arm,
  // -1 = all of them, else a seeded subset (the synthetic:real ratio sweep).
  int64_t synthetic_size = -1;
  // The arm's name in results and reports when one recipe runs at several synthetic:real ratios
  // (e.g. "real+synthetic (0.50x)"); empty: `arm`.
  std::string label;
  double synthetic_ratio = 0;  // the ratio asked for (0: not a ratio sweep)
};
// Trains (or, when DIR/result.json exists, loads) one classifier and evaluates it on the real
// test split and each extra test set. Returns the result JSON (also written to DIR/result.json).
Result<nlohmann::json> run_cls_job(const ClsJob& job, const RealData& real,
                                   const LabeledSet* synthetic,
                                   const std::vector<NamedSet>& extra_tests);

// What evaluation_json reports, versioned: a cached result below this version is re-evaluated
// from its saved scores when an experiment meets it. Raise it with every new metric.
// 1: operating points, calibration and the Platt recalibration (twenty-first sitting).
constexpr int kMetricsVersion = 2;  // 2: by_dx

// A Platt scaling as JSON {a, b[, fitted_on]}; null without one.
nlohmann::json platt_json(const std::optional<Platt>& p, const std::string& fitted_on = "");

// Per-image scores as CSV text: header "[set,]id,label,score[,p_calibrated]" and one row per image
// (the set column when `set_name` is given; p_calibrated with a Platt scaling).
std::string scores_csv(const LabeledSet& set, const std::vector<double>& scores,
                       const std::string& set_name = "",
                       const std::optional<Platt>& platt = std::nullopt, bool header = true);

// Where a classifier's errors are, per diagnosis (the "dx" entry of each image's groups): n,
// positives, mean score and the share called malignant at `threshold` and at the triage
// operating point (threshold_at_sensitivity at kTriageSensitivity on this set):
// {triage_threshold, triage_sensitivity, rows: [{dx, n, positives, mean_score,
// called_malignant_at_threshold, called_malignant_at_triage}]}.
nlohmann::json by_dx_json(const std::vector<double>& scores, const LabeledSet& set,
                          double threshold);

// Metrics of one scored test set: EvalSummary with CIs, ROC curve (subsampled), calibration
// bins, per-group and worst-group metrics; with a recalibration (Platt scaling fitted on the
// validation split), "recalibrated": the Brier score, ECE and bins of the rescaled scores.
nlohmann::json evaluation_json(const std::vector<double>& scores, const LabeledSet& set,
                               double threshold, uint64_t seed,
                               const std::optional<Platt>& recalibration = std::nullopt);

// Paired comparisons on the same test images: for every (arch, requested real size, seed) that
// has a "real" job, each other arm against it (AUC difference other - real, DeLong SE and p,
// paired bootstrap 95% CI; from the jobs' test_scores.csv), and per (arch, size, arm) the mean
// difference over seeds with the DeLong test of the seed-averaged scores.
// `baseline` names the arm the others are compared with ("real"; the experiment's equal-steps
// control is "real (equal steps)").
Result<nlohmann::json> paired_arm_comparisons(const std::vector<nlohmann::json>& results,
                                              const std::string& baseline = "real");

// Mean +- sd over seeds of each (arm, real_size, arch) cell of a list of job results.
nlohmann::json aggregate_results(const std::vector<nlohmann::json>& results);

}  // namespace lf
