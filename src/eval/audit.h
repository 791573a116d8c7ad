// Generative audit: fidelity (Frechet distance, k-NN precision/recall in a feature space
// trained here), classification accuracy score, memorisation (nearest real training image in
// feature and pixel space) and concept adherence (the concepts module measures the images).
#pragma once
#include <algorithm>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "lesionflow/data.h"
#include "pch_torch.h"

namespace lf {

// Frechet distance between Gaussians fitted to feature rows a [N,F] and b [M,F] (float64
// internally; the matrix square root via a symmetric eigendecomposition).
double frechet_distance(const torch::Tensor& a, const torch::Tensor& b);
// Its two parts: |mu_a - mu_b|^2 (where the sets sit) and Tr(Sa + Sb - 2 (Sa Sb)^1/2) (how they
// spread); frechet_distance = mean + covariance (before the clamp at 0).
struct FrechetParts {
  double mean = 0, covariance = 0;
  double total() const { return std::max(0.0, mean + covariance); }  // = frechet_distance
  nlohmann::json to_json() const { return {{"mean", mean}, {"covariance", covariance}}; }
};
// Optional row weights wa [N], wb [M] are frequency weights (a row of weight 2 counts as two
// copies: weighted mean, covariance over sum(w) - 1), e.g. to give one set another's class mix.
FrechetParts frechet_parts(const torch::Tensor& a, const torch::Tensor& b,
                           const torch::Tensor& wa = torch::Tensor(),
                           const torch::Tensor& wb = torch::Tensor());
// The share of each label among `labels` (shares sum to 1).
std::map<std::string, double> label_shares(const std::vector<std::string>& labels);
// Per-row weights that give a set of rows with labels `have` the label mix of `want`
// (w = share in want / share in have, so the weights sum to have.size()); empty when a label of
// `want` is missing from `have` (that mix cannot be matched).
std::vector<double> mix_weights(const std::vector<std::string>& have,
                                const std::vector<std::string>& want);
// Improved precision/recall (Kynkaanniemi et al. 2019): a fake sample is "precise" if it lies in
// the k-NN ball of some real sample, recall symmetrically.
std::pair<double, double> knn_precision_recall(const torch::Tensor& real, const torch::Tensor& fake,
                                               int k = 3);
// Density and coverage (Naeem et al. 2020) of fake rows against the k-NN balls of real rows.
std::pair<double, double> density_coverage(const torch::Tensor& real, const torch::Tensor& fake,
                                           int k = 5);
// Bootstrap 95% interval of the Frechet distance (rows of both sets resampled `reps` times).
std::pair<double, double> frechet_distance_ci(const torch::Tensor& a, const torch::Tensor& b,
                                              int reps, uint64_t seed);
// For each row of q, the index of and Euclidean distance to its nearest row of ref
// (exclude_self: q and ref are the same set; skip the diagonal).
std::pair<std::vector<int64_t>, std::vector<double>> nearest_rows(const torch::Tensor& q,
                                                                  const torch::Tensor& ref,
                                                                  bool exclude_self = false);

// The real-vs-real floor's subset: n of `total` rows, a seeded random permutation's first n
// (prepared sets are stored grouped by dx). `audit` takes its training images this way and
// `ae eval --fd` its raw and reconstructed images, so their FDs are comparable.
torch::Tensor floor_subset(int64_t total, int64_t n);

// FD over disjoint draws: the synthetic rows cut into K sets of `size` (a seeded permutation) and
// K disjoint sets of `size` real training rows (the floor), each against all of `test`. One set of
// 400 says little: on HAM two draws of the same generator's plan and noise gave 2.84 and 1.93.
// K = min(synthetic, train) / size; none when K < 2.
struct FdDraws {
  int64_t size = 0;
  std::vector<double> synthetic, floor;
  nlohmann::json to_json() const;
};
FdDraws fd_draws(const torch::Tensor& synthetic, const torch::Tensor& test,
                 const torch::Tensor& train, int64_t size, uint64_t seed);

struct AuditInputs {
  // The reference network (trained on real data only): feature rows [n,F] of n images of side
  // `size`, and P(malignant) per image (the classification accuracy score).
  std::function<torch::Tensor(const uint8_t* px, int64_t n, int size)> features;
  std::function<std::vector<double>(const LabeledSet&)> p_malignant;
  double threshold = 0.5;  // its operating point (picked on validation)
  const LabeledSet* real_train = nullptr;
  const LabeledSet* real_test = nullptr;
  const LabeledSet* synthetic = nullptr;
  std::vector<nlohmann::json> manifest;                 // synthetic manifest lines ("asked")
  std::map<std::string, nlohmann::json> real_captions;  // id -> captions.jsonl record
  int max_concept_images = 300;
  int bootstrap = 100;      // FD interval resamples
  int64_t draw_size = 400;  // FD over disjoint draws of this many images (0 = off)
  std::string feature_name =
      "penultimate layer of the real-only classifier";  // how the report names the features
  int closest_pairs = 8;
};
// JSON with fd, precision/recall, cas, memorisation (+ closest pairs), concept_adherence.
nlohmann::json run_audit(const AuditInputs& in);

}  // namespace lf
