// Classification metrics (no torch): ROC AUC with ties, ROC curve, accuracy, balanced accuracy,
// sensitivity/specificity at a threshold, operating points read off the ROC, calibration.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace lf {

// Mann-Whitney AUC (ties count half). labels: 0/1. NaN when one class is absent.
double roc_auc(const std::vector<double>& scores, const std::vector<int>& labels);
// ROC points (fpr, tpr) from the highest threshold down, including (0,0) and (1,1).
std::vector<std::pair<double, double>> roc_curve(const std::vector<double>& scores,
                                                 const std::vector<int>& labels);
struct BinaryMetrics {
  double accuracy = 0, balanced_accuracy = 0, sensitivity = 0, specificity = 0;
  int tp = 0, tn = 0, fp = 0, fn = 0;
};
BinaryMetrics binary_metrics(const std::vector<double>& scores, const std::vector<int>& labels,
                             double threshold);

// Operating point chosen on a validation set: the threshold maximising Youden's J
// (sensitivity + specificity - 1), midway between adjacent distinct scores. 0.5 if undefined.
double youden_threshold(const std::vector<double>& scores, const std::vector<int>& labels);

// Operating points read off the ROC curve (thresholds of the form "score >= t"): the highest
// specificity among thresholds reaching sensitivity >= target (triage: miss few malignancies),
// and the highest sensitivity among thresholds keeping specificity >= target. NaN when a class
// is absent.
double specificity_at_sensitivity(const std::vector<double>& scores, const std::vector<int>& labels,
                                  double target);
double sensitivity_at_specificity(const std::vector<double>& scores, const std::vector<int>& labels,
                                  double target);
// The operating points every evaluation reports.
constexpr double kTriageSensitivity = 0.95, kTriageSpecificity = 0.90;
// The threshold of specificity_at_sensitivity: the highest t with sensitivity(score >= t) >=
// target, i.e. the ceil(target x positives)-th highest malignant score. NaN when a class is absent.
double threshold_at_sensitivity(const std::vector<double>& scores, const std::vector<int>& labels,
                                double target);

// Calibration of scores read as P(malignant): the Brier score (mean squared difference to the
// 0/1 label) and the expected calibration error over `bins` equal-width score bins (Guo et al.
// 2017: the |mean score - malignant fraction| of each bin, weighted by its share of the images;
// a score in [k/bins, (k+1)/bins) falls in bin k, 1 in the last). A classifier trained with
// another malignant fraction than the test set's (label-balanced synthetic images) ranks as well
// and is calibrated worse: AUC does not see it, ECE and Brier do.
struct CalibrationBin {
  double lo = 0, hi = 0, mean_score = 0, positive_fraction = 0;
  int n = 0;
};
struct Calibration {
  double brier = 0, ece = 0;
  std::vector<CalibrationBin> bins;  // all `bins` of them, empty ones with n = 0
};
constexpr int kCalibrationBins = 10;
Calibration calibration(const std::vector<double>& scores, const std::vector<int>& labels,
                        int bins = kCalibrationBins);

// Platt scaling: P'(malignant) = sigmoid(a * logit(p) + b), (a, b) the maximum-likelihood fit
// (Newton's method) on held-out scores, e.g. the validation split's. Monotone for a > 0, so AUC
// and the ranking stay; it undoes a class-balanced loss's prior and an over- or under-confident
// temperature. Scores are clamped to [1e-7, 1 - 1e-7] before the logit. The identity when both
// classes are not present.
struct Platt {
  double a = 1, b = 0;
  double apply(double p) const;
};
Platt fit_platt(const std::vector<double>& scores, const std::vector<int>& labels);

struct Interval {
  double value = 0, lo = 0, hi = 0;  // point estimate and percentile bootstrap 95% CI
};
struct EvalSummary {
  int n = 0, positives = 0;
  double threshold = 0.5;
  Interval auc, accuracy, balanced_accuracy, sensitivity, specificity;
  // At kTriageSensitivity / kTriageSpecificity, and the calibration of the scores.
  Interval specificity_at_sensitivity, sensitivity_at_specificity, brier, ece;
};
// AUC, threshold metrics, operating points and calibration with percentile bootstrap CIs (B
// resamples of the test set, seeded). NaN values of resamples with one class are skipped.
EvalSummary evaluate_binary(const std::vector<double>& scores, const std::vector<int>& labels,
                            double threshold, int bootstrap = 1000, uint64_t seed = 0);

// Paired comparison of two classifiers A and B scored on the same test images (same labels):
// the AUC difference B - A with DeLong's standard error and two-sided test (DeLong et al. 1988,
// midrank form of Sun & Xu 2014) and a paired percentile bootstrap 95% CI (both classifiers
// resampled with the same images). Unpaired intervals of two AUCs overlap long after a paired
// test sees the difference.
struct PairedAuc {
  int n = 0, positives = 0;
  double auc_a = 0, auc_b = 0, diff = 0;  // diff = auc_b - auc_a
  double se = 0, z = 0, p_value = 1;      // DeLong
  double ci_lo = 0, ci_hi = 0;            // paired bootstrap
};
PairedAuc paired_auc(const std::vector<double>& scores_a, const std::vector<double>& scores_b,
                     const std::vector<int>& labels, int bootstrap = 2000, uint64_t seed = 0);
// The same pairing for the operating points (specificity_at_sensitivity at kTriageSensitivity,
// sensitivity_at_specificity at kTriageSpecificity): the differences B - A and their paired
// percentile bootstrap 95% CIs over the same resamples as paired_auc with these B and seed.
struct PairedOperatingPoints {
  double spec_at_sens_diff = 0, spec_at_sens_lo = 0, spec_at_sens_hi = 0;
  double sens_at_spec_diff = 0, sens_at_spec_lo = 0, sens_at_spec_hi = 0;
};
PairedOperatingPoints paired_operating_points(const std::vector<double>& scores_a,
                                              const std::vector<double>& scores_b,
                                              const std::vector<int>& labels, int bootstrap = 2000,
                                              uint64_t seed = 0);
// The bootstrap resamples paired_auc draws (image indices), for checking it from outside.
std::vector<std::vector<size_t>> bootstrap_resamples(size_t n, int bootstrap, uint64_t seed);
// The percentile 95% interval paired_auc reports for a set of resampled differences.
std::pair<double, double> percentile_interval(std::vector<double> values);

// The diagnosis task (one class per dx): accuracy and balanced accuracy (the mean of the per-class
// recalls over the classes present in `truth`, ISIC 2018 task 3's balanced multi-class accuracy;
// scikit-learn's balanced_accuracy_score). Entries with truth < 0 are left out. `recall` gets
// each class's recall (NaN for a class absent from truth) and `confusion` the K x K counts
// (row = truth, column = prediction) when given.
struct MulticlassMetrics {
  double accuracy = 0, balanced_accuracy = 0;
  int n = 0;
  std::vector<double> recall;
  std::vector<std::vector<int>> confusion;
};
MulticlassMetrics multiclass_metrics(const std::vector<int>& pred, const std::vector<int>& truth,
                                     int classes);
// Two classifiers' predictions of the same images: balanced accuracy B - A and its paired
// percentile bootstrap 95% CI over bootstrap_resamples(n, bootstrap, seed).
struct PairedBalancedAccuracy {
  double a = 0, b = 0, diff = 0, ci_lo = 0, ci_hi = 0;
};
PairedBalancedAccuracy paired_balanced_accuracy(const std::vector<int>& pred_a,
                                                const std::vector<int>& pred_b,
                                                const std::vector<int>& truth, int classes,
                                                int bootstrap = 1000, uint64_t seed = 0);

// Per-subgroup metrics: groups[i] is image i's value of one attribute (e.g. sex "female").
// A group is ranked (can be the worst group) only with at least min_n images and at least
// min_class malignant and min_class benign ones: a balanced accuracy over 3 malignant cases says
// nothing. The others are listed but not ranked.
struct GroupMetrics {
  std::string attribute, group;
  int n = 0, positives = 0;
  double auc = 0, balanced_accuracy = 0, accuracy = 0;
  bool ranked = false;
};
constexpr int kGroupMinImages = 20, kGroupMinPerClass = 10;
std::vector<GroupMetrics> group_metrics(const std::vector<double>& scores,
                                        const std::vector<int>& labels, double threshold,
                                        const std::string& attribute,
                                        const std::vector<std::string>& groups,
                                        int min_n = kGroupMinImages,
                                        int min_class = kGroupMinPerClass);
// The ranked group with the lowest balanced accuracy (nullptr if none is ranked).
const GroupMetrics* worst_group(const std::vector<GroupMetrics>& gm);

// Mean and sample standard deviation (sd 0 for one value; NaNs ignored).
std::pair<double, double> mean_sd(const std::vector<double>& v);

}  // namespace lf
