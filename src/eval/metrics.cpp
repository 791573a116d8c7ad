#include "lesionflow/metrics.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <random>
#include <tuple>

#include "lesionflow/rng.h"

namespace lf {

namespace {
// Midranks (1-based, ties averaged) of v.
std::vector<double> midranks(const std::vector<double>& v) {
  const size_t n = v.size();
  std::vector<size_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return v[a] < v[b]; });
  std::vector<double> r(n);
  for (size_t i = 0; i < n;) {
    size_t j = i;
    while (j + 1 < n && v[idx[j + 1]] == v[idx[i]]) ++j;
    for (size_t k = i; k <= j; ++k) r[idx[k]] = (i + j) / 2.0 + 1;
    i = j + 1;
  }
  return r;
}

bool has_both_classes(const std::vector<int>& y) {
  return std::count(y.begin(), y.end(), 1) > 0 && std::count(y.begin(), y.end(), 0) > 0;
}
}  // namespace

double roc_auc(const std::vector<double>& s, const std::vector<int>& y) {
  const size_t n = s.size();
  const std::vector<double> rank = midranks(s);
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

namespace {
// Both operating points off one ROC curve: {specificity at sensitivity >= kTriageSensitivity,
// sensitivity at specificity >= kTriageSpecificity} by default, each the best among the ROC
// points whose other rate reaches its target; NaN with one class.
std::pair<double, double> operating_points(const std::vector<double>& s, const std::vector<int>& y,
                                           double sens_target = kTriageSensitivity,
                                           double spec_target = kTriageSpecificity) {
  double spec = std::nan(""), sens = std::nan("");
  if (!has_both_classes(y)) return {spec, sens};
  for (auto [fpr, tpr] : roc_curve(s, y)) {
    if (tpr >= sens_target - 1e-12 && (std::isnan(spec) || 1 - fpr > spec)) spec = 1 - fpr;
    if (1 - fpr >= spec_target - 1e-12 && (std::isnan(sens) || tpr > sens)) sens = tpr;
  }
  return {spec, sens};
}
}  // namespace

double specificity_at_sensitivity(const std::vector<double>& s, const std::vector<int>& y,
                                  double target) {
  return operating_points(s, y, target, kTriageSpecificity).first;
}

double threshold_at_sensitivity(const std::vector<double>& s, const std::vector<int>& y,
                                double target) {
  if (!has_both_classes(y)) return std::nan("");
  std::vector<double> pos;
  for (size_t i = 0; i < s.size() && i < y.size(); ++i)
    if (y[i] == 1) pos.push_back(s[i]);
  std::sort(pos.begin(), pos.end(), std::greater<double>());
  const auto k = static_cast<size_t>(std::ceil(target * pos.size() - 1e-9));
  return pos[std::clamp<size_t>(k, 1, pos.size()) - 1];
}

double sensitivity_at_specificity(const std::vector<double>& s, const std::vector<int>& y,
                                  double target) {
  return operating_points(s, y, kTriageSensitivity, target).second;
}

Calibration calibration(const std::vector<double>& s, const std::vector<int>& y, int bins) {
  Calibration c;
  bins = std::max(1, bins);
  c.bins.resize(bins);
  std::vector<double> sum_s(bins, 0), sum_y(bins, 0);
  for (size_t i = 0; i < s.size(); ++i) {
    const double p = std::clamp(s[i], 0.0, 1.0);
    const int k = std::min(bins - 1, static_cast<int>(p * bins));
    sum_s[k] += p;
    sum_y[k] += y[i];
    c.bins[k].n++;
    c.brier += (p - y[i]) * (p - y[i]);
  }
  const double n = s.size();
  for (int k = 0; k < bins; ++k) {
    auto& b = c.bins[k];
    b.lo = double(k) / bins;
    b.hi = double(k + 1) / bins;
    if (b.n == 0) continue;
    b.mean_score = sum_s[k] / b.n;
    b.positive_fraction = sum_y[k] / b.n;
    c.ece += b.n / n * std::abs(b.mean_score - b.positive_fraction);
  }
  c.brier = n > 0 ? c.brier / n : std::nan("");
  if (n == 0) c.ece = std::nan("");
  return c;
}

namespace {
double logit_clamped(double p) {
  p = std::clamp(p, 1e-7, 1 - 1e-7);
  return std::log(p / (1 - p));
}
}  // namespace

double Platt::apply(double p) const { return 1 / (1 + std::exp(-(a * logit_clamped(p) + b))); }

Platt fit_platt(const std::vector<double>& s, const std::vector<int>& y) {
  Platt f;
  if (!has_both_classes(y) || s.size() != y.size()) return f;
  std::vector<double> z(s.size());
  for (size_t i = 0; i < s.size(); ++i) z[i] = logit_clamped(s[i]);
  // Newton steps on the negative log-likelihood with a backtracking line search; separable
  // data would send a to infinity, so a tiny ridge pulling a towards 1 keeps the fit finite.
  const double ridge = 1e-6 * z.size();
  auto objective = [&](double a, double b) {
    double l = 0.5 * ridge * (a - 1) * (a - 1);
    for (size_t i = 0; i < z.size(); ++i) {
      const double u = y[i] ? a * z[i] + b : -(a * z[i] + b);
      l += std::log1p(std::exp(-std::abs(u))) + std::max(-u, 0.0);  // -log sigmoid(u), stable
    }
    return l;
  };
  double cur = objective(f.a, f.b);
  for (int it = 0; it < 100; ++it) {
    double ga = ridge * (f.a - 1), gb = 0, haa = ridge, hab = 0, hbb = 0;
    for (size_t i = 0; i < z.size(); ++i) {
      const double q = 1 / (1 + std::exp(-(f.a * z[i] + f.b))), r = q - y[i], w = q * (1 - q);
      ga += r * z[i];
      gb += r;
      haa += w * z[i] * z[i];
      hab += w * z[i];
      hbb += w;
    }
    const double det = haa * hbb - hab * hab;
    if (!(det > 0)) break;
    const double da = (hbb * ga - hab * gb) / det, db = (haa * gb - hab * ga) / det;
    if (std::abs(da) + std::abs(db) < 1e-12) break;
    double step = 1, next = cur;
    for (; step > 1e-8; step /= 2) {
      next = objective(f.a - step * da, f.b - step * db);
      if (next <= cur) break;
    }
    if (step <= 1e-8) break;
    f.a -= step * da;
    f.b -= step * db;
    cur = next;
  }
  return f;
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
  std::vector<double> auc, acc, bacc, sens, spec, spec_at, sens_at, brier, ece;
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
    const auto [sp, se] = operating_points(bs, by);
    spec_at.push_back(sp);
    sens_at.push_back(se);
    auto cb = calibration(bs, by);
    brier.push_back(cb.brier);
    ece.push_back(cb.ece);
  }
  e.auc = percentile_ci(roc_auc(s, y), auc);
  e.accuracy = percentile_ci(m.accuracy, acc);
  e.balanced_accuracy = percentile_ci(m.balanced_accuracy, bacc);
  e.sensitivity = percentile_ci(m.sensitivity, sens);
  e.specificity = percentile_ci(m.specificity, spec);
  const auto [sp, se] = operating_points(s, y);
  e.specificity_at_sensitivity = percentile_ci(sp, spec_at);
  e.sensitivity_at_specificity = percentile_ci(se, sens_at);
  auto cal = calibration(s, y);
  e.brier = percentile_ci(cal.brier, brier);
  e.ece = percentile_ci(cal.ece, ece);
  return e;
}

std::vector<GroupMetrics> group_metrics(const std::vector<double>& s, const std::vector<int>& y,
                                        double thr, const std::string& attribute,
                                        const std::vector<std::string>& groups, int min_n,
                                        int min_class) {
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
    gm.ranked = gm.n >= min_n && gm.positives >= std::max(1, min_class) &&
                gm.n - gm.positives >= std::max(1, min_class) && g != "unknown";
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

namespace {
// DeLong's structural components of one classifier: V10 over positives, V01 over negatives.
void delong_components(const std::vector<double>& s, const std::vector<int>& y,
                       std::vector<double>& v10, std::vector<double>& v01) {
  std::vector<double> pos, neg;
  for (size_t i = 0; i < s.size(); ++i) (y[i] == 1 ? pos : neg).push_back(s[i]);
  const double m = pos.size(), n = neg.size();
  std::vector<double> all(pos);
  all.insert(all.end(), neg.begin(), neg.end());
  auto rz = midranks(all), rx = midranks(pos), ry = midranks(neg);
  v10.resize(pos.size());
  v01.resize(neg.size());
  for (size_t i = 0; i < pos.size(); ++i) v10[i] = (rz[i] - rx[i]) / n;
  for (size_t j = 0; j < neg.size(); ++j) v01[j] = 1.0 - (rz[pos.size() + j] - ry[j]) / m;
}

double covariance(const std::vector<double>& a, const std::vector<double>& b) {
  const size_t n = a.size();
  if (n < 2) return 0;
  double ma = std::accumulate(a.begin(), a.end(), 0.0) / n;
  double mb = std::accumulate(b.begin(), b.end(), 0.0) / n;
  double c = 0;
  for (size_t i = 0; i < n; ++i) c += (a[i] - ma) * (b[i] - mb);
  return c / (n - 1);
}
}  // namespace

std::vector<std::vector<size_t>> bootstrap_resamples(size_t n, int B, uint64_t seed) {
  std::mt19937_64 rng(derive_seed(seed, Stream::kBootstrap));
  std::uniform_int_distribution<size_t> pick(0, n == 0 ? 0 : n - 1);
  std::vector<std::vector<size_t>> out(n == 0 ? 0 : std::max(0, B), std::vector<size_t>(n));
  for (auto& r : out)
    for (auto& k : r) k = pick(rng);
  return out;
}

std::pair<double, double> percentile_interval(std::vector<double> v) {
  Interval r = percentile_ci(std::nan(""), std::move(v));
  return {r.lo, r.hi};
}

MulticlassMetrics multiclass_metrics(const std::vector<int>& pred, const std::vector<int>& truth,
                                     int classes) {
  MulticlassMetrics m;
  m.confusion.assign(classes, std::vector<int>(classes, 0));
  std::vector<int> hit(classes, 0), n(classes, 0);
  int correct = 0;
  for (size_t i = 0; i < truth.size() && i < pred.size(); ++i) {
    const int t = truth[i], p = pred[i];
    if (t < 0 || t >= classes) continue;
    ++m.n;
    ++n[t];
    if (p == t) {
      ++hit[t];
      ++correct;
    }
    if (p >= 0 && p < classes) ++m.confusion[t][p];
  }
  m.recall.assign(classes, std::nan(""));
  double sum = 0;
  int present = 0;
  for (int k = 0; k < classes; ++k)
    if (n[k] > 0) {
      m.recall[k] = static_cast<double>(hit[k]) / n[k];
      sum += m.recall[k];
      ++present;
    }
  m.accuracy = m.n ? static_cast<double>(correct) / m.n : std::nan("");
  m.balanced_accuracy = present ? sum / present : std::nan("");
  return m;
}

PairedBalancedAccuracy paired_balanced_accuracy(const std::vector<int>& pred_a,
                                                const std::vector<int>& pred_b,
                                                const std::vector<int>& truth, int classes,
                                                int bootstrap, uint64_t seed) {
  PairedBalancedAccuracy r;
  r.a = multiclass_metrics(pred_a, truth, classes).balanced_accuracy;
  r.b = multiclass_metrics(pred_b, truth, classes).balanced_accuracy;
  r.diff = r.b - r.a;
  std::vector<double> diffs;
  std::vector<int> pa(truth.size()), pb(truth.size()), t(truth.size());
  for (const auto& idx : bootstrap_resamples(truth.size(), bootstrap, seed)) {
    for (size_t j = 0; j < idx.size(); ++j) {
      pa[j] = pred_a[idx[j]];
      pb[j] = pred_b[idx[j]];
      t[j] = truth[idx[j]];
    }
    diffs.push_back(multiclass_metrics(pb, t, classes).balanced_accuracy -
                    multiclass_metrics(pa, t, classes).balanced_accuracy);
  }
  std::tie(r.ci_lo, r.ci_hi) = percentile_interval(std::move(diffs));
  return r;
}

namespace {
// Calls f(scores_a, scores_b, labels) for each of bootstrap_resamples(n, B, seed), both
// classifiers resampled with the same images.
template <class F>
void for_each_paired_resample(const std::vector<double>& a, const std::vector<double>& b,
                              const std::vector<int>& y, int B, uint64_t seed, F f) {
  std::vector<double> sa(y.size()), sb(y.size());
  std::vector<int> sy(y.size());
  for (const auto& idx : bootstrap_resamples(y.size(), B, seed)) {
    for (size_t i = 0; i < idx.size(); ++i) {
      sa[i] = a[idx[i]];
      sb[i] = b[idx[i]];
      sy[i] = y[idx[i]];
    }
    f(sa, sb, sy);
  }
}
}  // namespace

PairedAuc paired_auc(const std::vector<double>& a, const std::vector<double>& b,
                     const std::vector<int>& y, int B, uint64_t seed) {
  PairedAuc r;
  r.n = static_cast<int>(y.size());
  r.positives = static_cast<int>(std::count(y.begin(), y.end(), 1));
  r.auc_a = roc_auc(a, y);
  r.auc_b = roc_auc(b, y);
  r.diff = r.auc_b - r.auc_a;
  const int m = r.positives, n = r.n - r.positives;
  if (m < 2 || n < 2 || a.size() != y.size() || b.size() != y.size()) {
    r.se = r.z = r.ci_lo = r.ci_hi = std::nan("");
    return r;
  }
  std::vector<double> a10, a01, b10, b01;
  delong_components(a, y, a10, a01);
  delong_components(b, y, b10, b01);
  // var(AUC_b - AUC_a) = (S10_aa + S10_bb - 2 S10_ab) / m + (S01_aa + S01_bb - 2 S01_ab) / n.
  double var = (covariance(a10, a10) + covariance(b10, b10) - 2 * covariance(a10, b10)) / m +
               (covariance(a01, a01) + covariance(b01, b01) - 2 * covariance(a01, b01)) / n;
  r.se = std::sqrt(std::max(0.0, var));
  if (r.se > 0) {
    r.z = r.diff / r.se;
    r.p_value = std::erfc(std::abs(r.z) / std::sqrt(2.0));
  } else {
    r.z = 0;
    r.p_value = r.diff == 0 ? 1.0 : 0.0;
  }
  std::vector<double> diffs;
  for_each_paired_resample(a, b, y, B, seed, [&](const auto& sa, const auto& sb, const auto& sy) {
    diffs.push_back(roc_auc(sb, sy) - roc_auc(sa, sy));  // NaN (one class) is skipped
  });
  std::tie(r.ci_lo, r.ci_hi) = percentile_interval(std::move(diffs));
  return r;
}

PairedOperatingPoints paired_operating_points(const std::vector<double>& a,
                                              const std::vector<double>& b,
                                              const std::vector<int>& y, int B, uint64_t seed) {
  PairedOperatingPoints r;
  const auto [spec_a, sens_a] = operating_points(a, y);
  const auto [spec_b, sens_b] = operating_points(b, y);
  r.spec_at_sens_diff = spec_b - spec_a;
  r.sens_at_spec_diff = sens_b - sens_a;
  std::vector<double> d_spec, d_sens;
  for_each_paired_resample(a, b, y, B, seed, [&](const auto& sa, const auto& sb, const auto& sy) {
    const auto [pa, ea] = operating_points(sa, sy);
    const auto [pb, eb] = operating_points(sb, sy);
    d_spec.push_back(pb - pa);  // NaN (one class) is skipped
    d_sens.push_back(eb - ea);
  });
  std::tie(r.spec_at_sens_lo, r.spec_at_sens_hi) = percentile_interval(std::move(d_spec));
  std::tie(r.sens_at_spec_lo, r.sens_at_spec_hi) = percentile_interval(std::move(d_sens));
  return r;
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
