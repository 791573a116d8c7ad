// Classification metrics (no torch): ROC AUC with ties, ROC curve, accuracy, balanced accuracy,
// sensitivity/specificity at a threshold.
#pragma once
#include <utility>
#include <vector>

namespace lf {

// Mann-Whitney AUC (ties count half). labels: 0/1. NaN when one class is absent.
double roc_auc(const std::vector<double>& scores, const std::vector<int>& labels);
// ROC points (fpr, tpr) from the highest threshold down, including (0,0) and (1,1).
std::vector<std::pair<double, double>> roc_curve(const std::vector<double>& scores, const std::vector<int>& labels);
struct BinaryMetrics {
  double accuracy = 0, balanced_accuracy = 0, sensitivity = 0, specificity = 0;
  int tp = 0, tn = 0, fp = 0, fn = 0;
};
BinaryMetrics binary_metrics(const std::vector<double>& scores, const std::vector<int>& labels, double threshold);

}  // namespace lf
