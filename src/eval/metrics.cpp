#include "lesionflow/metrics.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <random>

#include "lesionflow/rng.h"

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

std::vector<std::pair<double, double>> roc_curve(const std::vector<double>& s,
                                                 const std::vector<int>& y) {
  std::vector<size_t> idx(s.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return s[a] > s[b]; });
  double P = std::count(y.begin(), y.end(), 1), N = y.size() - P;
  std::vector<std::pair<double, double>> pts{{0, 0}};
  double tp = 0, fp = 0;
  for (size_t i = 0; i < idx.size(); ++i) {
    (y[idx[i]] == 1 ? tp : fp) += 1;
    if (i + 1 == idx.size() || s[idx[i + 1]] != s[idx[i]])
      pts.emplace_back(N > 0 ? fp / N : 0, P > 0 ? tp / P : 0);
  }
  return pts;
}

BinaryMetrics binary_metrics(const std::vector<double>& s, const std::vector<int>& y, double thr) {
  BinaryMetrics m;
  for (size_t i = 0; i < s.size(); ++i) {
    bool pred = s[i] >= thr;
    if (y[i] == 1)
      (pred ? m.tp : m.fn)++;
    else
      (pred ? m.fp : m.tn)++;
  }
  double n = s.size();
  m.accuracy = n > 0 ? (m.tp + m.tn) / n : 0;
  m.sensitivity = m.tp + m.fn > 0 ? double(m.tp) / (m.tp + m.fn) : 0;
  m.specificity = m.tn + m.fp > 0 ? double(m.tn) / (m.tn + m.fp) : 0;
  m.balanced_accuracy = 0.5 * (m.sensitivity + m.specificity);
  return m;
}

}  // namespace lf

namespace lf {

double youden_threshold(const std::vector<double>& s, const std::vector<int>& y) {
  std::vector<size_t> idx(s.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return s[a] > s[b]; });
  double P = std::count(y.begin(), y.end(), 1), N = y.size() - P;
  if (P == 0 || N == 0) return 0.5;
  double tp = 0, fp = 0, best_j = -1, best_thr = 0.5;
  for (size_t i = 0; i < idx.size(); ++i) {
    (y[idx[i]] == 1 ? tp : fp) += 1;
    bool boundary = i + 1 == idx.size() || s[idx[i + 1]] != s[idx[i]];
    if (!boundary) continue;
    double j = tp / P - fp / N;  // predict positive for scores >= s[idx[i]]
    if (j > best_j) {
      best_j = j;
      best_thr = i + 1 < idx.size() ? 0.5 * (s[idx[i]] + s[idx[i + 1]]) : s[idx[i]];
    }
  }
  return best_thr;
}

namespace {
Interval percentile_ci(double value, std::vector<double> v) {
  v.erase(std::remove_if(v.begin(), v.end(), [](double x) { return std::isnan(x); }), v.end());
  Interval r{value, value, value};
  if (v.empty()) return r;
  std::sort(v.begin(), v.end());
  auto q = [&](double p) {
    return v[std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5))];
  };
  r.lo = q(0.025);
  r.hi = q(0.975);
  return r;
}
}  // namespace

EvalSummary evaluate_binary(const std::vector<double>& s, const std::vector<int>& y, double thr,
                            int B, uint64_t seed) {
  EvalSummary e;
  e.n = static_cast<int>(s.size());
  e.positives = static_cast<int>(std::count(y.begin(), y.end(), 1));
  e.threshold = thr;
  auto m = binary_metrics(s, y, thr);
  std::vector<double> auc, acc, bacc, sens, spec;
  std::mt19937_64 rng(derive_seed(seed, Stream::kBootstrap));
  std::uniform_int_distribution<size_t> pick(0, s.empty() ? 0 : s.size() - 1);
  std::vector<double> bs(s.size());
  std::vector<int> by(s.size());
  for (int b = 0; b < B && !s.empty(); ++b) {
    for (size_t i = 0; i < s.size(); ++i) {
      size_t k = pick(rng);
      bs[i] = s[k];
      by[i] = y[k];
    }
    auto mb = binary_metrics(bs, by, thr);
    auc.push_back(roc_auc(bs, by));
    acc.push_back(mb.accuracy);
    bacc.push_back(mb.balanced_accuracy);
    sens.push_back(mb.sensitivity);
    spec.push_back(mb.specificity);
  }
  e.auc = percentile_ci(roc_auc(s, y), auc);
  e.accuracy = percentile_ci(m.accuracy, acc);
  e.balanced_accuracy = percentile_ci(m.balanced_accuracy, bacc);
  e.sensitivity = percentile_ci(m.sensitivity, sens);
  e.specificity = percentile_ci(m.specificity, spec);
  return e;
}

std::vector<GroupMetrics> group_metrics(const std::vector<double>& s, const std::vector<int>& y,
                                        double thr, const std::string& attribute,
                                        const std::vector<std::string>& groups, int min_n) {
  std::map<std::string, std::vector<size_t>> members;
  for (size_t i = 0; i < groups.size() && i < s.size(); ++i) members[groups[i]].push_back(i);
  std::vector<GroupMetrics> out;
  for (auto& [g, idx] : members) {
    std::vector<double> gs;
    std::vector<int> gy;
    for (auto i : idx) {
      gs.push_back(s[i]);
      gy.push_back(y[i]);
    }
    GroupMetrics gm;
    gm.attribute = attribute;
    gm.group = g;
    gm.n = static_cast<int>(idx.size());
    gm.positives = static_cast<int>(std::count(gy.begin(), gy.end(), 1));
    auto m = binary_metrics(gs, gy, thr);
    gm.auc = roc_auc(gs, gy);
    gm.accuracy = m.accuracy;
    gm.balanced_accuracy = m.balanced_accuracy;
    gm.ranked = gm.n >= min_n && gm.positives > 0 && gm.positives < gm.n && g != "unknown";
    out.push_back(gm);
  }
  return out;
}

const GroupMetrics* worst_group(const std::vector<GroupMetrics>& gm) {
  const GroupMetrics* w = nullptr;
  for (auto& g : gm)
    if (g.ranked && (!w || g.balanced_accuracy < w->balanced_accuracy)) w = &g;
  return w;
}

std::pair<double, double> mean_sd(const std::vector<double>& v) {
  double sum = 0, n = 0;
  for (double x : v)
    if (!std::isnan(x)) {
      sum += x;
      n += 1;
    }
  if (n == 0) return {std::nan(""), std::nan("")};
  double mean = sum / n, ss = 0;
  for (double x : v)
    if (!std::isnan(x)) ss += (x - mean) * (x - mean);
  return {mean, n > 1 ? std::sqrt(ss / (n - 1)) : 0.0};
}

}  // namespace lf
