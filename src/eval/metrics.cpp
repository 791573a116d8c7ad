#include "lesionflow/metrics.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace lf {

double roc_auc(const std::vector<double>& s, const std::vector<int>& y) {
  const size_t n = s.size();
  std::vector<size_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return s[a] < s[b]; });
  // Average ranks over ties.
  std::vector<double> rank(n);
  for (size_t i = 0; i < n;) {
    size_t j = i;
    while (j + 1 < n && s[idx[j + 1]] == s[idx[i]]) ++j;
    double r = (i + j) / 2.0 + 1;
    for (size_t k = i; k <= j; ++k) rank[idx[k]] = r;
    i = j + 1;
  }
  double npos = 0, sum = 0;
  for (size_t i = 0; i < n; ++i)
    if (y[i] == 1) {
      npos++;
      sum += rank[i];
    }
  double nneg = n - npos;
  if (npos == 0 || nneg == 0) return std::nan("");
  return (sum - npos * (npos + 1) / 2) / (npos * nneg);
}

std::vector<std::pair<double, double>> roc_curve(const std::vector<double>& s, const std::vector<int>& y) {
  std::vector<size_t> idx(s.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return s[a] > s[b]; });
  double P = std::count(y.begin(), y.end(), 1), N = y.size() - P;
  std::vector<std::pair<double, double>> pts{{0, 0}};
  double tp = 0, fp = 0;
  for (size_t i = 0; i < idx.size(); ++i) {
    (y[idx[i]] == 1 ? tp : fp) += 1;
    if (i + 1 == idx.size() || s[idx[i + 1]] != s[idx[i]]) pts.emplace_back(N > 0 ? fp / N : 0, P > 0 ? tp / P : 0);
  }
  return pts;
}

BinaryMetrics binary_metrics(const std::vector<double>& s, const std::vector<int>& y, double thr) {
  BinaryMetrics m;
  for (size_t i = 0; i < s.size(); ++i) {
    bool pred = s[i] >= thr;
    if (y[i] == 1) (pred ? m.tp : m.fn)++;
    else (pred ? m.fp : m.tn)++;
  }
  double n = s.size();
  m.accuracy = n > 0 ? (m.tp + m.tn) / n : 0;
  m.sensitivity = m.tp + m.fn > 0 ? double(m.tp) / (m.tp + m.fn) : 0;
  m.specificity = m.tn + m.fp > 0 ? double(m.tn) / (m.tn + m.fp) : 0;
  m.balanced_accuracy = 0.5 * (m.sensitivity + m.specificity);
  return m;
}

}  // namespace lf
