// Classifiers, metrics (vs scikit-learn), synthetic-set planning/generation, audit measures,
// and the end-to-end experiment + report rendered in headless Chromium.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <random>
#include <set>
#include <sstream>

#include "classify/classifier.h"
#include "classify/experiment.h"
#include "data/images_torch.h"
#include "eval/audit.h"
#include "lesionflow/captions.h"
#include "lesionflow/io.h"
#include "lesionflow/jsonl.h"
#include "lesionflow/metrics.h"
#include "lesionflow/phantom.h"
#include "lesionflow/pipeline.h"
#include "lesionflow/record_pixels.h"
#include "lesionflow/runtime.h"
#include "pipeline/classify_runs.h"
#include "synth/synth.h"
#include "test_util.h"
#include "train/common.h"

using namespace lf;

namespace {

LabeledSet phantom_set(int n, int size, uint64_t seed) {
  auto ds = load_dataset("phantom:" + std::to_string(n), {}, seed);
  PrepareStats st;
  auto ps = prepare(*ds, PrepareConfig{size, FitMode::kCrop, 2}, &st);
  std::vector<size_t> all(ps->count());
  std::iota(all.begin(), all.end(), 0);
  return labeled_from_prepared(*ps, all, nullptr);
}

// Runs a python3 script on (score, label) pairs written at full precision to its first argument
// (a CSV); returns what it prints.
std::string python_on_scores(const std::string& name, const std::vector<double>& s,
                             const std::vector<int>& y, const std::string& script) {
  const std::string dir = test::tmp_dir(name);
  {
    std::ofstream f(dir + "/d.csv");
    f.precision(17);
    for (size_t i = 0; i < s.size(); ++i) f << s[i] << "," << y[i] << "\n";
  }
  std::ofstream(dir + "/m.py") << script;
  return run_command_capture("/usr/bin/python3 " + dir + "/m.py " + dir + "/d.csv 2>&1");
}

// `n` phantom lesions at `size` px as real data, split by index: 3/5 train, 1/5 val, 1/5 test.
RealData phantom_real_data(int n, int size, uint64_t seed) {
  RealData real;
  auto ds = load_dataset("phantom:" + std::to_string(n), {}, seed);
  PrepareStats st;
  auto ps = prepare(*ds, PrepareConfig{size, FitMode::kCrop, 2}, &st);
  EXPECT_TRUE(ps.ok()) << ps.status().message();
  if (!ps.ok()) return real;
  real.ps = std::move(*ps);
  for (size_t i = 0; i < real.ps.records.size(); ++i)
    (i % 5 == 0 ? real.test : i % 5 == 1 ? real.val : real.train).push_back(i);
  return real;
}

// Runs a python3 reference on two classifiers' scores with the labels (its first argument, a CSV
// of a, b, label at full precision) and the bootstrap resamples (its second, one row of image
// indices each); returns what it prints.
std::string python_on_pair(const std::string& name, const std::vector<double>& a,
                           const std::vector<double>& b, const std::vector<int>& y,
                           const std::vector<std::vector<size_t>>& R, const std::string& script) {
  const std::string dir = test::tmp_dir(name);
  std::ofstream f(dir + "/d.csv");
  f.precision(17);
  for (size_t i = 0; i < y.size(); ++i) f << a[i] << "," << b[i] << "," << y[i] << "\n";
  std::ofstream g(dir + "/r.csv");
  for (auto& r : R) {
    for (size_t i = 0; i < r.size(); ++i) g << (i ? "," : "") << r[i];
    g << "\n";
  }
  f.close();
  g.close();
  std::ofstream(dir + "/m.py") << script;
  return run_command_capture("/usr/bin/python3 " + dir + "/m.py " + dir + "/d.csv " + dir +
                             "/r.csv 2>&1");
}

// A width-16 CNN for 32 px images, trained from seed 0 on `set` (which also validates); the run
// directory is a fresh temp dir named `name`.
Classifier train_small_cnn(const LabeledSet& set, int epochs, int batch, double lr,
                           const std::string& name, double shift_augment = 0) {
  ClassifierConfig mc;
  mc.image_size = 32;
  mc.width = 16;
  torch::manual_seed(0);
  Classifier m(mc);
  ClsTrainConfig tc;
  tc.epochs = epochs;
  tc.batch = batch;
  tc.lr = lr;
  tc.patience = 1000;
  tc.shift_augment = shift_augment;
  tc.out = test::tmp_dir(name);
  auto r = train_classifier(tc, m, set, set);
  EXPECT_TRUE(r.ok()) << r.status().message();
  return m;
}
}  // namespace

TEST(Metrics, PairedAucDeLongAndBootstrapMatchAPythonReference) {
  // Two correlated classifiers with ties; the python side computes DeLong from the O(mn) kernel
  // definition (not midranks) and the bootstrap AUCs from the same resamples.
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<double> U(0, 1);
  std::vector<double> a, b;
  std::vector<int> y;
  for (int i = 0; i < 300; ++i) {
    y.push_back(U(rng) < 0.3);
    double base = 0.35 * y.back() + U(rng);
    a.push_back(std::round(base * 30) / 30);
    b.push_back(std::round((base + 0.15 * y.back() + 0.4 * U(rng)) * 30) / 30);
  }
  const int B = 200;
  auto R = bootstrap_resamples(y.size(), B, 3);
  const std::string out = python_on_pair("delong", a, b, y, R, R"(import sys, numpy as np
from math import erfc, sqrt
d = np.loadtxt(sys.argv[1], delimiter=','); a, b, y = d[:, 0], d[:, 1], d[:, 2].astype(int)
def psi(s, yy):
    X, Y = s[yy == 1], s[yy == 0]
    return (X[:, None] > Y[None, :]) + 0.5 * (X[:, None] == Y[None, :])
pa, pb = psi(a, y), psi(b, y)
m, n = pa.shape
S10 = np.cov(np.vstack([pa.mean(1), pb.mean(1)])); S01 = np.cov(np.vstack([pa.mean(0), pb.mean(0)]))
var = (S10[0, 0] + S10[1, 1] - 2 * S10[0, 1]) / m + (S01[0, 0] + S01[1, 1] - 2 * S01[0, 1]) / n
A, Bv = pa.mean(), pb.mean(); z = (Bv - A) / sqrt(var)
R = np.loadtxt(sys.argv[2], dtype=int, delimiter=',')
diffs = sorted(psi(b[r], y[r]).mean() - psi(a[r], y[r]).mean() for r in R if 0 < y[r].sum() < len(r))
q = lambda p: diffs[min(len(diffs) - 1, int(p * (len(diffs) - 1) + 0.5))]
print('%.12f %.12f %.12f %.12f %.12f %.12f' % (A, Bv, sqrt(var), erfc(abs(z) / sqrt(2)), q(0.025), q(0.975)))
)");
  std::istringstream is(out);
  double auc_a, auc_b, se, p, lo, hi;
  ASSERT_TRUE(is >> auc_a >> auc_b >> se >> p >> lo >> hi)
      << "python3 + numpy needed (scripts/setup.sh --test): " << out;
  auto r = paired_auc(a, b, y, B, 3);
  EXPECT_NEAR(r.auc_a, auc_a, 1e-9);
  EXPECT_NEAR(r.auc_b, auc_b, 1e-9);
  EXPECT_NEAR(r.se, se, 1e-6);
  EXPECT_NEAR(r.p_value, p, 1e-6);
  EXPECT_NEAR(r.ci_lo, lo, 1e-9);
  EXPECT_NEAR(r.ci_hi, hi, 1e-9);
  EXPECT_GT(r.diff, 0.02);  // B is the better classifier by construction
  EXPECT_LT(r.p_value, 0.05);
  EXPECT_GT(r.ci_lo, 0.0);
  // A classifier against itself: no difference, p = 1, a zero-width interval.
  auto same = paired_auc(a, a, y, 50, 0);
  EXPECT_EQ(same.diff, 0.0);
  EXPECT_EQ(same.p_value, 1.0);
  EXPECT_EQ(same.ci_lo, 0.0);
  EXPECT_EQ(same.ci_hi, 0.0);
}

// The operating points of two classifiers on the same images, paired: the differences and their
// bootstrap CIs against scikit-learn's ROC over the same resamples.
TEST(Metrics, PairedOperatingPointsMatchScikitLearnOverTheSameResamples) {
  std::mt19937_64 rng(21);
  std::uniform_real_distribution<double> U(0, 1);
  std::vector<double> a, b;
  std::vector<int> y;
  for (int i = 0; i < 400; ++i) {
    y.push_back(U(rng) < 0.3);
    const double base = 0.5 * y.back() + U(rng);
    a.push_back(base);
    b.push_back(base + 0.3 * y.back() * (U(rng) < 0.5) + 0.2 * U(rng));  // better on half
  }
  const int B = 100;
  auto R = bootstrap_resamples(y.size(), B, 7);
  const std::string out = python_on_pair("paired_ops", a, b, y, R, R"(import sys, numpy as np
from sklearn.metrics import roc_curve
d = np.loadtxt(sys.argv[1], delimiter=','); a, b, y = d[:, 0], d[:, 1], d[:, 2].astype(int)
def ops(s, yy):
    f, t, _ = roc_curve(yy, s, drop_intermediate=False)
    return np.array([(1 - f)[t >= 0.95 - 1e-12].max(), t[(1 - f) >= 0.9 - 1e-12].max()])
R = np.loadtxt(sys.argv[2], dtype=int, delimiter=',')
D = np.array([ops(b[r], y[r]) - ops(a[r], y[r]) for r in R if 0 < y[r].sum() < len(r)])
def q(v, p):
    v = sorted(v); return v[min(len(v) - 1, int(p * (len(v) - 1) + 0.5))]
d0 = ops(b, y) - ops(a, y)
print('%.12f %.12f %.12f %.12f %.12f %.12f' % (d0[0], q(D[:, 0], 0.025), q(D[:, 0], 0.975), d0[1], q(D[:, 1], 0.025), q(D[:, 1], 0.975)))
)");
  std::istringstream is(out);
  double sd, slo, shi, nd, nlo, nhi;
  ASSERT_TRUE(is >> sd >> slo >> shi >> nd >> nlo >> nhi)
      << "python3 + scikit-learn needed (scripts/setup.sh --test): " << out;
  auto p = paired_operating_points(a, b, y, B, 7);
  EXPECT_NEAR(p.spec_at_sens_diff, sd, 1e-12);
  EXPECT_NEAR(p.spec_at_sens_lo, slo, 1e-12);
  EXPECT_NEAR(p.spec_at_sens_hi, shi, 1e-12);
  EXPECT_NEAR(p.sens_at_spec_diff, nd, 1e-12);
  EXPECT_NEAR(p.sens_at_spec_lo, nlo, 1e-12);
  EXPECT_NEAR(p.sens_at_spec_hi, nhi, 1e-12);
  EXPECT_GT(p.sens_at_spec_diff, 0.05);  // B is better by construction
  // A classifier against itself: no difference anywhere.
  auto same = paired_operating_points(a, a, y, 20, 0);
  EXPECT_EQ(same.spec_at_sens_diff, 0.0);
  EXPECT_EQ(same.sens_at_spec_lo, 0.0);
  EXPECT_EQ(same.sens_at_spec_hi, 0.0);
}

TEST(Metrics, MatchScikitLearnOnRandomData) {
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<double> U(0, 1);
  std::vector<double> s;
  std::vector<int> y;
  for (int i = 0; i < 500; ++i) {
    y.push_back(U(rng) < 0.3);
    double v = 0.3 * y.back() + U(rng);
    s.push_back(std::round(v * 40) / 40);  // ties on purpose
  }
  std::string dir = test::tmp_dir("sklearn");
  std::ofstream f(dir + "/d.csv");
  for (size_t i = 0; i < s.size(); ++i) f << s[i] << "," << y[i] << "\n";
  f.close();
  const double thr = 0.6;
  std::string py =
      "import sys,numpy as np\nfrom sklearn.metrics import "
      "roc_auc_score,accuracy_score,balanced_accuracy_score,recall_score\n"
      "d=np.loadtxt(sys.argv[1],delimiter=',');s,y=d[:,0],d[:,1].astype(int);p=(s>=float(sys.argv["
      "2])).astype(int)\n"
      "print('%.12f %.12f %.12f %.12f "
      "%.12f'%(roc_auc_score(y,s),accuracy_score(y,p),balanced_accuracy_score(y,p),"
      "recall_score(y,p),recall_score(1-y,1-p)))\n";
  std::ofstream(dir + "/m.py") << py;
  std::string out = run_command_capture("/usr/bin/python3 " + dir + "/m.py " + dir + "/d.csv " +
                                        std::to_string(thr) + " 2>&1");
  std::istringstream is(out);
  double auc, acc, bacc, sens, spec;
  ASSERT_TRUE(is >> auc >> acc >> bacc >> sens >> spec)
      << "python3 + scikit-learn needed (scripts/setup.sh --test): " << out;
  // The CSV holds the scores as printed; compare on the same values.
  std::vector<double> s2;
  std::ifstream in(dir + "/d.csv");
  std::string line;
  while (std::getline(in, line)) s2.push_back(std::stod(line.substr(0, line.find(','))));
  EXPECT_NEAR(roc_auc(s2, y), auc, 1e-6);
  auto m = binary_metrics(s2, y, thr);
  EXPECT_NEAR(m.accuracy, acc, 1e-6);
  EXPECT_NEAR(m.balanced_accuracy, bacc, 1e-6);
  EXPECT_NEAR(m.sensitivity, sens, 1e-6);
  EXPECT_NEAR(m.specificity, spec, 1e-6);
}

TEST(Metrics, OperatingPointsAndCalibrationMatchScikitLearn) {
  std::mt19937_64 rng(9);
  std::uniform_real_distribution<double> U(0, 1);
  std::vector<double> s;
  std::vector<int> y;
  for (int i = 0; i < 800; ++i) {
    y.push_back(U(rng) < 0.25);
    s.push_back(std::round(std::min(0.999, 0.45 * y.back() + 0.6 * U(rng)) * 200) / 200);
  }
  // Independent: sklearn's full ROC (no dropped points) and Brier score; the bins by
  // numpy.digitize on the bin edges.
  std::string out = python_on_scores("sklearn_cal", s, y, R"(import sys, numpy as np
from sklearn.metrics import roc_curve, brier_score_loss
d = np.loadtxt(sys.argv[1], delimiter=','); s, y = d[:, 0], d[:, 1].astype(int)
fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
spec = (1 - fpr)[tpr >= 0.95].max(); sens = tpr[(1 - fpr) >= 0.9].max()
k = np.minimum(np.digitize(s, np.arange(1, 10) / 10.0), 9)
ece = sum(abs(s[k == b].mean() - y[k == b].mean()) * (k == b).sum() for b in range(10) if (k == b).any()) / len(s)
print('%.12f %.12f %.12f %.12f %d' % (spec, sens, brier_score_loss(y, s), ece, (k == 3).sum()))
)");
  std::istringstream is(out);
  double spec, sens, brier, ece;
  int n3;
  ASSERT_TRUE(is >> spec >> sens >> brier >> ece >> n3)
      << "python3 + scikit-learn needed (scripts/setup.sh --test): " << out;
  EXPECT_NEAR(specificity_at_sensitivity(s, y, 0.95), spec, 1e-12);
  EXPECT_NEAR(sensitivity_at_specificity(s, y, 0.90), sens, 1e-12);
  auto c = calibration(s, y, 10);
  EXPECT_NEAR(c.brier, brier, 1e-12);
  EXPECT_NEAR(c.ece, ece, 1e-12);
  ASSERT_EQ(c.bins.size(), 10u);
  EXPECT_EQ(c.bins[3].n, n3);
  auto e = evaluate_binary(s, y, 0.5, 200, 0);
  EXPECT_EQ(e.ece.value, c.ece);
  EXPECT_LE(e.specificity_at_sensitivity.lo, spec);
  EXPECT_GE(e.specificity_at_sensitivity.hi, spec);
  // Known answers: separable scores reach both targets with a specificity/sensitivity of 1;
  // scores of exactly 0 and 1 that are right are perfectly calibrated.
  std::vector<double> sep{0, 0, 0, 1, 1};
  std::vector<int> ys{0, 0, 0, 1, 1};
  EXPECT_EQ(specificity_at_sensitivity(sep, ys, 0.95), 1.0);
  EXPECT_EQ(sensitivity_at_specificity(sep, ys, 0.90), 1.0);
  EXPECT_EQ(calibration(sep, ys).ece, 0.0);
  EXPECT_EQ(calibration(sep, ys).brier, 0.0);
  EXPECT_TRUE(std::isnan(specificity_at_sensitivity(sep, {1, 1, 1, 1, 1}, 0.95)));
}

// A calibrated classifier and the same ranking at another prior (a classifier trained with four
// times the malignant odds of the test set, as label-balanced synthetic images make one): the
// same AUC, and only the second is miscalibrated.
TEST(Metrics, CalibrationSeesAPriorShiftThatAucDoesNot) {
  std::mt19937_64 rng(4);
  std::uniform_real_distribution<double> U(0, 1);
  std::vector<double> p, shifted;
  std::vector<int> y;
  for (int i = 0; i < 20000; ++i) {
    p.push_back(U(rng));
    y.push_back(U(rng) < p.back());  // P(malignant | score) = score: calibrated by construction
    shifted.push_back(4 * p.back() / (4 * p.back() + 1 - p.back()));
  }
  EXPECT_NEAR(roc_auc(p, y), roc_auc(shifted, y), 1e-12);
  const auto a = calibration(p, y), b = calibration(shifted, y);
  EXPECT_LT(a.ece, 0.02);
  EXPECT_GT(b.ece, 0.15);
  EXPECT_LT(a.brier, b.brier);
  // The known Brier score of a calibrated uniform score: E[p(1-p)] = 1/6.
  EXPECT_NEAR(a.brier, 1.0 / 6, 0.005);
  for (const auto& bin : a.bins) EXPECT_NEAR(bin.positive_fraction, bin.mean_score, 0.04);
  // Platt scaling fitted on a held-out half finds the prior shift (logit' = logit + log 4, so
  // a = 1, b = -log 4) and undoes it on the other half.
  std::vector<double> fit_s(shifted.begin(), shifted.begin() + 10000),
      held_s(shifted.begin() + 10000, shifted.end());
  std::vector<int> fit_y(y.begin(), y.begin() + 10000), held_y(y.begin() + 10000, y.end());
  const Platt pl = fit_platt(fit_s, fit_y);
  EXPECT_NEAR(pl.a, 1.0, 0.06);
  EXPECT_NEAR(pl.b, -std::log(4.0), 0.08);
  std::vector<double> fixed;
  for (double v : held_s) fixed.push_back(pl.apply(v));
  EXPECT_LT(calibration(fixed, held_y).ece, 0.025);
  EXPECT_NEAR(roc_auc(fixed, held_y), roc_auc(held_s, held_y), 1e-12);
}

TEST(Metrics, PlattScalingMatchesAnUnpenalisedLogisticRegression) {
  std::mt19937_64 rng(12);
  std::normal_distribution<double> N(0, 1);
  std::vector<double> s;
  std::vector<int> y;
  for (int i = 0; i < 600; ++i) {
    y.push_back(i % 3 == 0);
    s.push_back(1 / (1 + std::exp(-(2.5 * N(rng) + 1.5 * y.back() - 0.3))));  // overconfident
  }
  std::string out = python_on_scores("platt", s, y, R"(import sys, numpy as np
from sklearn.linear_model import LogisticRegression
d = np.loadtxt(sys.argv[1], delimiter=','); s, y = d[:, 0], d[:, 1].astype(int)
z = np.log(s / (1 - s)).reshape(-1, 1)
m = LogisticRegression(C=1e12, tol=1e-12, max_iter=10000).fit(z, y)
print('%.12f %.12f' % (m.coef_[0, 0], m.intercept_[0]))
)");
  std::istringstream is(out);
  double a, b;
  ASSERT_TRUE(is >> a >> b) << "python3 + scikit-learn needed (scripts/setup.sh --test): " << out;
  const Platt p = fit_platt(s, y);
  EXPECT_NEAR(p.a, a, 1e-4);
  EXPECT_NEAR(p.b, b, 1e-4);
  EXPECT_LT(p.a, 0.8);  // the scores were overconfident: the scaling flattens them
  // One class only: the identity.
  const Platt id = fit_platt({0.2, 0.7}, {1, 1});
  EXPECT_EQ(id.a, 1.0);
  EXPECT_EQ(id.b, 0.0);
}

TEST(Metrics, YoudenThresholdBootstrapAndWorstGroup) {
  // Perfectly separable: the Youden threshold splits the classes.
  std::vector<double> s{0.1, 0.2, 0.3, 0.7, 0.8, 0.9};
  std::vector<int> y{0, 0, 0, 1, 1, 1};
  double t = youden_threshold(s, y);
  EXPECT_GT(t, 0.3);
  EXPECT_LT(t, 0.7);
  // Bootstrap CI brackets the point estimate and narrows with more data.
  std::mt19937_64 rng(1);
  std::normal_distribution<double> N(0, 1);
  auto make = [&](int n, std::vector<double>* ss, std::vector<int>* yy) {
    for (int i = 0; i < n; ++i) {
      yy->push_back(i % 2);
      ss->push_back(N(rng) + yy->back());
    }
  };
  std::vector<double> s1, s2;
  std::vector<int> y1, y2;
  make(100, &s1, &y1);
  make(2000, &s2, &y2);
  auto e1 = evaluate_binary(s1, y1, 0.5, 500, 0), e2 = evaluate_binary(s2, y2, 0.5, 500, 0);
  EXPECT_LE(e1.auc.lo, e1.auc.value);
  EXPECT_GE(e1.auc.hi, e1.auc.value);
  EXPECT_LT(e2.auc.hi - e2.auc.lo, e1.auc.hi - e1.auc.lo);
  // Worst group: the small group and the one-class group are not ranked.
  std::vector<double> gs;
  std::vector<int> gy;
  std::vector<std::string> g;
  for (int i = 0; i < 40; ++i) {  // group a: perfect
    gy.push_back(i % 2);
    gs.push_back(gy.back());
    g.push_back("a");
  }
  for (int i = 0; i < 40; ++i) {  // group b: always predicts malignant
    gy.push_back(i % 2);
    gs.push_back(1);
    g.push_back("b");
  }
  for (int i = 0; i < 5; ++i) {  // group c: tiny and wrong
    gy.push_back(i % 2);
    gs.push_back(1 - i % 2);
    g.push_back("c");
  }
  for (int i = 0; i < 60; ++i) {  // group d: large, but its 3 malignant cases all missed
    gy.push_back(i < 3);
    gs.push_back(i >= 3 && i < 13 ? 1 : 0);  // and 10 false alarms: balanced accuracy 0.41
    g.push_back("d");
  }
  auto gm = group_metrics(gs, gy, 0.5, "x", g, 20, 10);
  for (auto& m : gm) {
    if (m.group == "d") {
      EXPECT_FALSE(m.ranked);  // too few malignant cases to rank
    }
  }
  auto loose = group_metrics(gs, gy, 0.5, "x", g, 20, 1);
  EXPECT_EQ(worst_group(loose)->group, "d");  // with the old rule it would be the worst
  auto* w = worst_group(gm);
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->group, "b");
  EXPECT_NEAR(w->balanced_accuracy, 0.5, 1e-12);
}

TEST(Audit, WeightedFrechetEqualsRepeatedRowsAndMixWeightsMatchTheClassMix) {
  torch::manual_seed(1);
  auto a = torch::randn({300, 3}, torch::kFloat64);
  auto b = torch::randn({200, 3}, torch::kFloat64) + 0.5;
  // Integer weights are copies: weight 3 on the first 50 rows of b = those rows three times.
  auto w = torch::ones({200}, torch::kFloat64);
  w.slice(0, 0, 50).fill_(3.0);
  auto b_rep = torch::cat({b, b.slice(0, 0, 50), b.slice(0, 0, 50)});
  const FrechetParts pw = frechet_parts(a, b, torch::Tensor(), w), pr = frechet_parts(a, b_rep);
  EXPECT_NEAR(pw.mean, pr.mean, 1e-10);
  EXPECT_NEAR(pw.covariance, pr.covariance, 1e-10);
  EXPECT_GT(std::abs(pw.total() - frechet_parts(a, b).total()), 1e-3);
  // Two classes far apart: a set with 50/50 against real rows with 90/10 is far in plain FD,
  // but with the real rows weighted to 50/50 it is the same distribution.
  std::vector<std::string> real_dx, syn_dx;
  std::vector<torch::Tensor> real_rows, syn_rows;
  for (int i = 0; i < 2000; ++i) {
    const bool mel = i % 10 == 0;
    real_dx.push_back(mel ? "mel" : "nv");
    real_rows.push_back(torch::randn({1, 3}, torch::kFloat64) + (mel ? 4.0 : 0.0));
  }
  for (int i = 0; i < 2000; ++i) {
    const bool mel = i % 2 == 0;
    syn_dx.push_back(mel ? "mel" : "nv");
    syn_rows.push_back(torch::randn({1, 3}, torch::kFloat64) + (mel ? 4.0 : 0.0));
  }
  auto real = torch::cat(real_rows), syn = torch::cat(syn_rows);
  auto mw = mix_weights(real_dx, syn_dx);
  ASSERT_EQ(mw.size(), 2000u);
  EXPECT_NEAR(mw[0], 0.5 / 0.1, 1e-9);  // a mel row
  EXPECT_NEAR(mw[1], 0.5 / 0.9, 1e-9);
  EXPECT_GT(frechet_parts(syn, real).total(), 3.0);
  EXPECT_LT(frechet_parts(syn, real, torch::Tensor(), torch::tensor(mw, torch::kFloat64)).total(),
            0.2);
  EXPECT_TRUE(mix_weights({"nv", "nv"}, {"nv", "mel"}).empty());  // mel cannot be matched
}

TEST(Audit, FdOverDisjointDrawsGivesTheSpreadAndAFloorOfTheSameSize) {
  torch::manual_seed(3);
  const int d = 3;
  auto test = torch::randn({2000, d}, torch::kFloat64);
  auto train = torch::randn({900, d}, torch::kFloat64);
  auto same = torch::randn({1000, d}, torch::kFloat64);
  auto shifted = torch::randn({1000, d}, torch::kFloat64) + 1.0;  // |mean difference|^2 = 3
  // K = min(1000, 900) / 200 = 4 draws on each side.
  const FdDraws ds = fd_draws(same, test, train, 200, 21);
  ASSERT_EQ(ds.synthetic.size(), 4u);
  ASSERT_EQ(ds.floor.size(), 4u);
  // Draws from the test distribution sit at the floor: both are small-sample bias only.
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_LT(ds.synthetic[i], 0.15);
    EXPECT_LT(ds.floor[i], 0.15);
  }
  EXPECT_NE(ds.synthetic[0], ds.synthetic[1]);  // different rows, different FDs
  const FdDraws dsh = fd_draws(shifted, test, train, 200, 21);
  for (double f : dsh.synthetic) EXPECT_NEAR(f, 3.0, 0.5);
  EXPECT_EQ(dsh.floor, ds.floor);  // the floor draws depend on the seed and the train rows only
  auto j = dsh.to_json();
  EXPECT_EQ(j["draws"].get<int>(), 4);
  EXPECT_GT(j["ratio"].get<double>(), 10.0);
  EXPECT_GT(j["synthetic_sd"].get<double>(), 0.0);
  // Fewer than two draws fit: nothing to report.
  EXPECT_TRUE(fd_draws(same.slice(0, 0, 300), test, train, 200, 21).to_json().is_null());
}

TEST(Audit, FrechetDistanceKnownAnswerAndPrecisionRecall) {
  torch::manual_seed(0);
  const int n = 20000, d = 4;
  auto a = torch::randn({n, d}, torch::kFloat64);
  auto mu = torch::tensor({1.0, -1.0, 0.5, 0.0}, torch::kFloat64);
  auto b = torch::randn({n, d}, torch::kFloat64) * 2 + mu;
  // ||mu||^2 + sum(1 + 4 - 2*sqrt(1*4)) = 2.25 + 4
  EXPECT_NEAR(frechet_distance(a, b), 6.25, 0.2);
  const FrechetParts parts = frechet_parts(a, b);  // the mean shift and the spread apart
  EXPECT_NEAR(parts.mean, 2.25, 0.15);  // 3 standard errors of |mean difference|^2 at n = 20000
  EXPECT_NEAR(parts.covariance, 4.0, 0.2);
  EXPECT_NEAR(parts.mean + parts.covariance, frechet_distance(a, b), 1e-12);
  EXPECT_LT(frechet_distance(a.slice(0, 0, n / 2), a.slice(0, n / 2, n)), 0.02);
  auto r = torch::randn({400, 3}, torch::kFloat64);
  auto [p_same, r_same] = knn_precision_recall(r, r.clone(), 3);
  EXPECT_DOUBLE_EQ(p_same, 1.0);
  EXPECT_DOUBLE_EQ(r_same, 1.0);
  auto [p_far, r_far] = knn_precision_recall(r, r + 100, 3);
  EXPECT_DOUBLE_EQ(p_far, 0.0);
  EXPECT_DOUBLE_EQ(r_far, 0.0);
  auto [idx, dist] = nearest_rows(r.slice(0, 0, 5) + 1e-3, r);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(idx[i], i);
}

TEST(Synth, PlanBalancesClassesFlattensCellsAndIsDeterministic) {
  auto ds = load_dataset("phantom:600", {}, 3);
  std::map<std::string, nlohmann::json> caps;
  int pos = 0;
  for (auto& r : ds->records) pos += r.label == 1;
  ASSERT_GT(pos, 0);
  ASSERT_LT(pos, 600);
  SynthPlanConfig c;
  c.total = 200;
  nlohmann::json summary;
  auto plan = plan_synthetic(ds->records, caps, c, &summary);
  LF_ASSERT_OK(plan);
  ASSERT_EQ(plan->size(), 200u);
  int syn_pos = 0;
  for (auto& it : *plan) syn_pos += it.label == 1;
  EXPECT_EQ(syn_pos, 100);  // equal classes in the synthetic set
  // fill-label: everything goes to the minority class until it catches up.
  c.balance = "fill-label";
  auto fill = plan_synthetic(ds->records, caps, c, nullptr);
  int minority = pos < 300 ? 1 : 0, fill_min = 0;
  for (auto& it : *fill) fill_min += it.label == minority;
  EXPECT_EQ(fill_min, std::min<int>(200, std::abs(600 - 2 * pos)) +
                          (200 - std::min<int>(200, std::abs(600 - 2 * pos))) / 2);
  // real: the real class mix (largest-remainder rounding: within 1 per cell), whatever flatten
  // says.
  c.balance = "real";
  c.flatten = 0.5;
  nlohmann::json sr;
  auto real_mix = plan_synthetic(ds->records, caps, c, &sr);
  LF_ASSERT_OK(real_mix);
  int real_pos = 0;
  for (auto& it : *real_mix) real_pos += it.label == 1;
  EXPECT_NEAR(real_pos, 200.0 * pos / 600, static_cast<double>(sr["cells"].size()));
  for (auto& cell : sr["cells"])
    EXPECT_NEAR(cell["synthetic"].get<double>(), 200.0 * cell["real"].get<double>() / 600, 1.0);
  // Deterministic for a seed; a different seed draws other prompts.
  c.balance = "label";
  auto again = plan_synthetic(ds->records, caps, c, nullptr);
  c.seed = 1;
  auto other = plan_synthetic(ds->records, caps, c, nullptr);
  int same = 0, differ = 0;
  for (size_t i = 0; i < plan->size(); ++i) {
    same += (*plan)[i].prompt == (*again)[i].prompt && (*plan)[i].seed == (*again)[i].seed;
    differ += (*plan)[i].source_id != (*other)[i].source_id;
  }
  EXPECT_EQ(same, 200);
  EXPECT_GT(differ, 100);
  // Flattening: with flatten 0 every cell of a class gets (almost) the same number.
  c.flatten = 0;
  nlohmann::json s0;
  auto flat = plan_synthetic(ds->records, caps, c, &s0);
  std::map<int, std::pair<int64_t, int64_t>> minmax;
  for (auto& cell : s0["cells"]) {
    int l = cell["label"];
    int64_t n = cell["synthetic"];
    if (!minmax.count(l)) minmax[l] = {n, n};
    minmax[l].first = std::min(minmax[l].first, n);
    minmax[l].second = std::max(minmax[l].second, n);
  }
  for (auto& [l, mm] : minmax) EXPECT_LE(mm.second - mm.first, 1) << "label " << l;
  EXPECT_FALSE(plan_synthetic(ds->records, caps, SynthPlanConfig{10, "bogus"}, nullptr).ok());
}

TEST(Synth, VaryDrawsSizeAndSkinAnewAndKeepsThePlan) {
  // The phrase of a caption is replaced; a caption without one gets it appended.
  EXPECT_EQ(
      with_attribute("a nevus; large lesion, fitzpatrick type II skin", "size", "small lesion"),
      "a nevus; small lesion, fitzpatrick type II skin");
  EXPECT_EQ(with_attribute("a nevus; large lesion, fitzpatrick type II skin", "skin",
                           "fitzpatrick type VI skin"),
            "a nevus; large lesion, fitzpatrick type VI skin");
  EXPECT_EQ(with_attribute("a nevus", "size", "small lesion"), "a nevus; small lesion");
  auto ds = load_dataset("phantom:300", {}, 3);
  ASSERT_TRUE(ds.ok());
  std::map<std::string, nlohmann::json> caps;
  for (auto& r : ds->records)
    caps[r.id] = {{"caption", "dermoscopic image of a " + r.dx + "; large lesion, fitzpatrick " +
                                  "type I skin, two colours"}};
  SynthPlanConfig c;
  c.total = 600;
  auto plain = plan_synthetic(ds->records, caps, c, nullptr);
  c.vary = {"size", "skin"};
  auto varied = plan_synthetic(ds->records, caps, c, nullptr);
  LF_ASSERT_OK(plain);
  LF_ASSERT_OK(varied);
  std::map<std::string, int> sizes, skins;
  for (size_t i = 0; i < varied->size(); ++i) {
    const auto& a = (*plain)[i];
    const auto& b = (*varied)[i];
    // The same cells, sources and noise: only the two phrases differ.
    EXPECT_EQ(a.source_id, b.source_id);
    EXPECT_EQ(a.seed, b.seed);
    const std::string size = b.varied["size"], skin = b.varied["skin"];
    EXPECT_NE(b.prompt.find(size), std::string::npos) << b.prompt;
    EXPECT_NE(b.prompt.find(skin), std::string::npos) << b.prompt;
    EXPECT_EQ(with_attribute(with_attribute(a.prompt, "size", size), "skin", skin), b.prompt);
    EXPECT_TRUE(a.varied.is_null());
    sizes[size]++;
    skins[skin]++;
  }
  // Uniform draws: 3 sizes of ~200 and 6 skin types of ~100 in 600 images.
  ASSERT_EQ(sizes.size(), 3u);
  ASSERT_EQ(skins.size(), 6u);
  for (auto& [k, n] : sizes) EXPECT_NEAR(n, 200, 50) << k;
  for (auto& [k, n] : skins) EXPECT_NEAR(n, 100, 40) << k;
  c.vary = {"colour"};
  EXPECT_FALSE(plan_synthetic(ds->records, caps, c, nullptr).ok());
}

// abcd-discordant draws each cell's sources with weight exp(strength * z) (z the standardised TDS,
// negated for malignant lesions): known answer on captions with known TDS values, against the
// weighted means computed here; none keeps today's uniform draws.
TEST(Synth, AbcdDiscordantEmphasisTiltsTheSourcesByTheirTds) {
  auto ds = load_dataset("phantom:300", {}, 3);
  ASSERT_TRUE(ds.ok());
  std::map<std::string, nlohmann::json> caps;
  std::map<std::string, double> tds_of;
  for (size_t i = 0; i < ds->records.size(); ++i) {
    const auto& r = ds->records[i];
    const double t = 0.5 + 0.05 * static_cast<double>((i * 37) % 101);  // 0.5 .. 5.5
    tds_of[r.id] = t;
    caps[r.id] = {{"caption", "a " + r.dx}, {"measured", {{"tds", t}}}};
  }
  SynthPlanConfig c;
  c.total = 8000;
  c.attributes = {};  // cells are the dx
  auto plain = plan_synthetic(ds->records, caps, c, nullptr);
  LF_ASSERT_OK(plain);
  c.emphasis = "abcd-discordant";
  c.emphasis_strength = 1.0;
  nlohmann::json summary;
  auto tilted = plan_synthetic(ds->records, caps, c, &summary);
  LF_ASSERT_OK(tilted);
  ASSERT_EQ(plain->size(), tilted->size());
  // The expected source TDS per dx: the weighted mean over the dx's records.
  double mean = 0, sq = 0;
  for (auto& [id, t] : tds_of) mean += t;
  mean /= tds_of.size();
  for (auto& [id, t] : tds_of) sq += (t - mean) * (t - mean);
  const double sd = std::sqrt(sq / (tds_of.size() - 1));
  std::map<std::string, double> wsum, wtsum, real_sum, plain_sum, tilted_sum;
  std::map<std::string, int> label_of, real_n, plain_n, tilted_n;
  for (const auto& r : ds->records) {
    const double t = tds_of[r.id], z = (t - mean) / sd;
    const double w = std::exp(r.label > 0 ? -z : z);
    wsum[r.dx] += w;
    wtsum[r.dx] += w * t;
    real_sum[r.dx] += t;
    real_n[r.dx]++;
    label_of[r.dx] = r.label;
  }
  for (const auto& it : *plain) {
    plain_sum[it.dx] += it.asked["tds"].get<double>();
    plain_n[it.dx]++;
  }
  for (const auto& it : *tilted) {
    EXPECT_DOUBLE_EQ(it.asked["tds"].get<double>(), tds_of[it.source_id]);
    tilted_sum[it.dx] += it.asked["tds"].get<double>();
    tilted_n[it.dx]++;
  }
  ASSERT_GE(wsum.size(), 2u);
  for (auto& [dx, w] : wsum) {
    ASSERT_GT(tilted_n[dx], 300) << dx;
    const double real_mean = real_sum[dx] / real_n[dx];
    const double want = wtsum[dx] / w;
    const double got = tilted_sum[dx] / tilted_n[dx];
    EXPECT_NEAR(got, want, 0.12) << dx;
    EXPECT_NEAR(plain_sum[dx] / plain_n[dx], real_mean, 0.12) << dx;
    // Malignant sources shift toward low TDS, benign ones toward high, by a visible amount.
    if (label_of[dx] > 0)
      EXPECT_LT(got, real_mean - 0.4) << dx;
    else
      EXPECT_GT(got, real_mean + 0.4) << dx;
  }
  // The summary reports the same means per class.
  for (auto& [cls, j] : summary["classes"].items()) {
    ASSERT_TRUE(j["source_tds_mean"].is_number()) << cls;
    const int label = std::stoi(cls);
    if (label > 0)
      EXPECT_LT(j["source_tds_mean"].get<double>(), j["real_tds_mean"].get<double>() - 0.4);
    else
      EXPECT_GT(j["source_tds_mean"].get<double>(), j["real_tds_mean"].get<double>() + 0.4);
  }
  EXPECT_EQ(summary["config"]["emphasis"], "abcd-discordant");
  // none is the uniform draw of before (same sources as a default config).
  SynthPlanConfig d;
  d.total = 8000;
  d.attributes = {};
  d.emphasis = "none";
  auto none = plan_synthetic(ds->records, caps, d, nullptr);
  LF_ASSERT_OK(none);
  for (size_t i = 0; i < none->size(); ++i) EXPECT_EQ((*none)[i].source_id, (*plain)[i].source_id);
  // abcd-discordant-malignant: the benign sources are drawn uniformly.
  c.emphasis = "abcd-discordant-malignant";
  auto mal = plan_synthetic(ds->records, caps, c, nullptr);
  LF_ASSERT_OK(mal);
  std::map<std::string, double> mal_sum;
  for (const auto& it : *mal) mal_sum[it.dx] += it.asked["tds"].get<double>();
  for (auto& [dx, w] : wsum) {
    const double got = mal_sum[dx] / tilted_n[dx];
    if (label_of[dx] > 0)
      EXPECT_NEAR(got, wtsum[dx] / w, 0.12) << dx;
    else
      EXPECT_NEAR(got, real_sum[dx] / real_n[dx], 0.12) << dx;
  }
  c.emphasis = "hard";
  auto bad = plan_synthetic(ds->records, caps, c, nullptr);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("abcd-discordant-malignant"), std::string::npos);
  c.emphasis = "abcd-discordant";
  c.emphasis_strength = -1;
  EXPECT_FALSE(plan_synthetic(ds->records, caps, c, nullptr).ok());
}

// Omitting a phrase keeps the rest of the caption's list grammatical, and a planned set keeps
// its cells, sources and noise; the prompts' structure phrases are checked against the
// generator's training captions (the shipped v3 met "pigment network" in 11% of today's prompts
// after a detector change, which cost HAM-FD 0.85 -> 1.01).
TEST(Synth, OmittedPhrasesAndPhraseDriftAgainstTheTrainingCaptions) {
  const std::string x = "pigment network";
  const std::vector<std::string> om{x};
  EXPECT_EQ(without_phrases("a nevus; large lesion, pigment network, dots/globules and "
                            "regression structures, one colour: black",
                            om),
            "a nevus; large lesion, dots/globules and regression structures, one colour: black");
  EXPECT_EQ(without_phrases("a nevus; pigment network and dots/globules, large lesion", om),
            "a nevus; dots/globules, large lesion");
  EXPECT_EQ(without_phrases("a nevus; streaks, pigment network and dots/globules", om),
            "a nevus; streaks and dots/globules");
  EXPECT_EQ(without_phrases("a nevus; large lesion, dots/globules and pigment network", om),
            "a nevus; large lesion, dots/globules");
  EXPECT_EQ(without_phrases("a nevus; pigment network", om), "a nevus");
  EXPECT_EQ(without_phrases("a nevus; pigment network, large lesion", om), "a nevus; large lesion");
  EXPECT_EQ(without_phrases("a nevus; large lesion, pigment network", om), "a nevus; large lesion");
  EXPECT_EQ(without_phrases("a nevus; large lesion", om), "a nevus; large lesion");

  auto ds = load_dataset("phantom:200", {}, 3);
  ASSERT_TRUE(ds.ok());
  std::map<std::string, nlohmann::json> caps;
  int k = 0;
  for (auto& r : ds->records)  // every fourth caption names a network
    caps[r.id] = {{"caption", "dermoscopic image of a " + r.dx + "; large lesion" +
                                  (k++ % 4 == 0 ? ", pigment network and dots/globules" : "") +
                                  ", two colours"}};
  SynthPlanConfig c;
  c.total = 400;
  auto plain = plan_synthetic(ds->records, caps, c, nullptr);
  c.omit = om;
  auto omitted = plan_synthetic(ds->records, caps, c, nullptr);
  LF_ASSERT_OK(plain);
  LF_ASSERT_OK(omitted);
  std::vector<std::string> prompts;
  int had = 0;
  for (size_t i = 0; i < plain->size(); ++i) {
    const auto &a = (*plain)[i], &b = (*omitted)[i];
    EXPECT_EQ(a.source_id, b.source_id);
    EXPECT_EQ(a.seed, b.seed);
    EXPECT_EQ(b.prompt.find(x), std::string::npos) << b.prompt;
    EXPECT_EQ(b.prompt, without_phrases(a.prompt, om));
    had += a.prompt.find(x) != std::string::npos;
    prompts.push_back(a.prompt);
  }
  ASSERT_GT(had, 40);
  const double share = static_cast<double>(had) / prompts.size();
  // No profile in the generator: nothing to compare, the prompts' own shares are reported.
  auto none = prompt_phrase_drift({}, prompts);
  EXPECT_TRUE(none["training"].is_null());
  EXPECT_NEAR(none["prompts"][x].get<double>(), share, 1e-9);
  EXPECT_EQ(none["drifted"].size(), 0u);
  // Trained on captions where the phrase was rare: it drifts; where it was as common: it does not.
  std::vector<std::string> old_captions(50, "a nevus");  // 1 of 50 names a network
  old_captions[0] = "a nevus; pigment network";
  nlohmann::json rare = caption_phrase_profile(old_captions);
  EXPECT_NEAR(rare[x].get<double>(), 0.02, 1e-12);
  EXPECT_EQ(rare["streaks"].get<double>(), 0.0);
  auto drift = prompt_phrase_drift({{"caption_profile", rare.dump()}}, prompts);
  // (dots/globules, never in those captions, drifts too; phrases in alphabetical order.)
  ASSERT_EQ(drift["drifted"].size(), 2u) << drift.dump();
  EXPECT_EQ(drift["drifted"][0]["phrase"], "dots/globules");
  EXPECT_EQ(drift["drifted"][1]["phrase"], x);
  EXPECT_NEAR(drift["drifted"][1]["training"].get<double>(), 0.02, 1e-12);
  EXPECT_NEAR(drift["drifted"][1]["prompts"].get<double>(), share, 1e-9);
  auto same =
      prompt_phrase_drift({{"caption_profile", caption_phrase_profile(prompts).dump()}}, prompts);
  EXPECT_EQ(same["drifted"].size(), 0u) << same.dump();
}

// An untrained 16-px pixel generator (tiny preset, patch 4) with a tokenizer trained on the
// records' composed captions; g.tok is empty if the tokenizer fails to train.
static LoadedGenerator tiny_pixel_generator(const std::vector<Record>& records) {
  std::vector<std::string> corpus;
  for (auto& r : records) corpus.push_back(compose_caption(facts_from_record(r), 0));
  auto tok = Tokenizer::train(corpus, {96, "bpe", 0});
  LoadedGenerator g;
  if (!tok.ok()) {
    ADD_FAILURE() << tok.status().message();
    return g;
  }
  MMDiTConfig mc = MMDiTConfig::preset("tiny");
  mc.image_size = 16;
  mc.patch = 4;
  mc.vocab_size = tok->vocab_size();
  torch::manual_seed(0);
  g.model = MMDiT(mc);
  g.tok = std::make_shared<Tokenizer>(std::move(*tok));
  g.hash = "test";
  return g;
}

TEST(Synth, ImageToImageStartsFromTheSourceImageAndRecordsIt) {
  auto ds = load_dataset("phantom:24", {}, 1);
  ASSERT_TRUE(ds.ok());
  PrepareStats st;
  auto ps = prepare(*ds, PrepareConfig{16, FitMode::kCrop, 2}, &st);
  LF_ASSERT_OK(ps);
  LoadedGenerator g = tiny_pixel_generator(ds->records);
  ASSERT_TRUE(g.tok) << "tokenizer training failed";
  SynthPlanConfig pc;
  pc.total = 4;
  nlohmann::json summary;
  auto plan = plan_synthetic(ps->records, {}, pc, &summary);
  LF_ASSERT_OK(plan);
  auto init = source_images(g, "", *ps);
  LF_ASSERT_OK(init);
  auto run = [&](double strength, const std::string& name) {
    SynthGenConfig sc;
    sc.gen.sampler.method = SamplerMethod::kDpm2m;
    sc.gen.sampler.steps = 10;
    sc.gen.sampler.start = strength;
    sc.gen.cfg_scale = 1.0;
    sc.init = *init;
    sc.out = test::tmp_dir(name);
    auto made = generate_synthetic(g, *plan, sc, summary);
    EXPECT_TRUE(made.ok() && *made == 4);
    return sc.out;
  };
  auto image = [](const std::string& file) {
    auto m = read_image(file);
    EXPECT_TRUE(m.ok());
    return *m;
  };
  // Strength 0.02: each image is its source real image (under its dihedral transform) up to
  // the 8-bit rounding and the little the untrained network moves it; strength 1 ignores it.
  const std::string near = run(0.02, "synth_i2i_near"), far = run(1.0, "synth_i2i_far");
  auto recs = *read_jsonl(near + "/manifest.jsonl");
  ASSERT_EQ(recs.size(), 4u);
  double d_near = 0, d_far = 0;
  for (auto& j : recs) {
    ASSERT_TRUE(j.contains("init"));
    EXPECT_EQ(j["init"]["source_id"], j["source_id"]);
    EXPECT_DOUBLE_EQ(j["init"]["strength"].get<double>(), 0.02);
    int64_t row = -1;
    for (int64_t i = 0; i < ps->count(); ++i)
      if (ps->records[i].id == j["source_id"]) row = i;
    ASSERT_GE(row, 0);
    auto src = dihedral(images_to_tensor({ps->image(row)}, 16), j["init"]["dihedral"].get<int>());
    auto as_tensor = [](const cv::Mat& bgr) {
      cv::Mat rgb;
      cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
      return images_to_tensor({rgb.data}, rgb.rows);
    };
    const std::string f = j["file"];
    d_near += (as_tensor(image(near + "/" + f)) - src).abs().mean().item<double>();
    d_far += (as_tensor(image(far + "/" + f)) - src).abs().mean().item<double>();
    EXPECT_FALSE(read_jsonl(far + "/manifest.jsonl")->at(0).contains("init"));
  }
  EXPECT_LT(d_near / 4, 0.05);
  EXPECT_GT(d_far / 4, 4 * (d_near / 4));
  // Without the source images, a strength below 1 is refused with a message.
  SynthGenConfig bad;
  bad.gen.sampler.start = 0.5;
  bad.out = test::tmp_dir("synth_i2i_bad");
  auto r = generate_synthetic(g, *plan, bad, summary);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("--strength"), std::string::npos);
}

TEST(Synth, GenerationResumesWithIdenticalImages) {
  auto ds = load_dataset("phantom:50", {}, 1);
  LoadedGenerator g = tiny_pixel_generator(ds->records);
  ASSERT_TRUE(g.tok) << "tokenizer training failed";
  SynthPlanConfig pc;
  pc.total = 6;
  nlohmann::json summary;
  auto plan = plan_synthetic(ds->records, {}, pc, &summary);
  LF_ASSERT_OK(plan);
  SynthGenConfig sc;
  sc.gen.sampler.steps = 3;
  sc.gen.batch = 4;
  sc.out = test::tmp_dir("synth_resume");
  auto made = generate_synthetic(g, *plan, sc, summary);
  LF_ASSERT_OK(made);
  EXPECT_EQ(*made, 6);
  auto first = read_file(sc.out + "/images/synth_000005.png");
  ASSERT_TRUE(first.ok());
  // Interrupt: lose the last two images and their manifest lines.
  auto lines = *read_jsonl(sc.out + "/manifest.jsonl");
  std::string kept;
  for (int i = 0; i < 4; ++i) kept += lines[i].dump() + "\n";
  ASSERT_TRUE(write_file_atomic(sc.out + "/manifest.jsonl", kept).ok());
  std::filesystem::remove(sc.out + "/images/synth_000005.png");
  std::filesystem::remove(sc.out + "/images/synth_000004.png");
  auto again = generate_synthetic(g, *plan, sc, summary);
  LF_ASSERT_OK(again);
  EXPECT_EQ(*again, 2);
  EXPECT_EQ(*read_file(sc.out + "/images/synth_000005.png"), *first);
  auto all = *read_jsonl(sc.out + "/manifest.jsonl");
  ASSERT_EQ(all.size(), 6u);
  for (auto& j : all) {
    EXPECT_TRUE(j.contains("prompt") && j.contains("seed") && j.contains("generator_hash") &&
                j.contains("subgroup"));
  }
  // A kill during the manifest append leaves a torn last line: the resume drops it and remakes
  // that image (identically).
  std::string torn;
  for (int i = 0; i < 5; ++i) torn += all[i].dump() + "\n";
  torn += all[5].dump().substr(0, 40);
  ASSERT_TRUE(write_file_atomic(sc.out + "/manifest.jsonl", torn).ok());
  auto after_torn = generate_synthetic(g, *plan, sc, summary);
  LF_ASSERT_OK(after_torn);
  EXPECT_EQ(*after_torn, 1);
  EXPECT_EQ(*read_file(sc.out + "/images/synth_000005.png"), *first);
  ASSERT_EQ(read_jsonl(sc.out + "/manifest.jsonl")->size(), 6u);
  // Resuming with another generator, or another plan, is refused and leaves the set as it was.
  const auto before = *read_file(sc.out + "/manifest.jsonl");
  LoadedGenerator other = g;
  other.hash = "another";
  auto mixed = generate_synthetic(other, *plan, sc, summary);
  ASSERT_FALSE(mixed.ok());
  EXPECT_NE(mixed.status().message().find("refusing to mix two generators"), std::string::npos)
      << mixed.status().message();
  EXPECT_NE(mixed.status().message().find("manifest.jsonl"), std::string::npos);
  pc.seed = 7;
  auto other_plan = plan_synthetic(ds->records, {}, pc, nullptr);
  LF_ASSERT_OK(other_plan);
  auto replanned = generate_synthetic(g, *other_plan, sc, summary);
  ASSERT_FALSE(replanned.ok());
  EXPECT_NE(replanned.status().message().find("another prompt or seed"), std::string::npos)
      << replanned.status().message();
  EXPECT_EQ(*read_file(sc.out + "/manifest.jsonl"), before);

  // Export: both layouts read back through lesionflow's own loaders with the manifest's labels;
  // the HAM layout carries the source image's age and sex.
  std::map<std::string, Record> sources;
  for (auto& r : ds->records) sources.emplace(r.id, r);
  std::map<std::string, nlohmann::json> by_id;
  for (auto& j : all) by_id[j["id"].get<std::string>()] = j;
  const std::string ex = test::tmp_dir("synth_export");
  auto ham = export_synthetic(sc.out, "ham", ex + "/ham", sources);
  LF_ASSERT_OK(ham);
  auto folder = export_synthetic(sc.out, "imagefolder", ex + "/folder", sources);
  LF_ASSERT_OK(folder);
  EXPECT_FALSE(export_synthetic(sc.out, "ham", ex + "/ham", sources).ok()) << "overwrote";
  EXPECT_FALSE(std::filesystem::exists(ex + "/ham.partial"));
  auto back_ham = load_dataset("ham10000:" + ex + "/ham");
  LF_ASSERT_OK(back_ham);
  ASSERT_EQ(back_ham->records.size(), 6u);
  for (const auto& r : back_ham->records) {
    const auto& j = by_id.at(r.id);
    EXPECT_EQ(r.dx, j["dx"].get<std::string>());
    EXPECT_EQ(r.label, j["label"].get<int>());
    EXPECT_EQ(r.dx_type, "synthetic");
    const Record& src = sources.at(j["source_id"].get<std::string>());
    EXPECT_EQ(r.sex, src.sex);
    EXPECT_NEAR(r.age, src.age, 0.05);
    EXPECT_EQ(r.lesion_id, "syn_" + src.id);
  }
  auto back_folder = load_dataset("folder:" + ex + "/folder");
  LF_ASSERT_OK(back_folder);
  ASSERT_EQ(back_folder->records.size(), 6u);
  for (const auto& r : back_folder->records) {
    const auto& j = by_id.at(r.id.substr(r.id.find('/') + 1));
    EXPECT_EQ(r.dx, j["dx"].get<std::string>());
    EXPECT_EQ(r.label, j["label"].get<int>());
  }

  // The same set with its manifest lines in another order (as per-diagnosis adapters or a
  // completed set write them) loads in the same, id, order: training sees the same batches.
  const std::string shuffled = test::tmp_dir("synth_reordered");
  std::filesystem::create_directory_symlink(std::filesystem::absolute(sc.out + "/images"),
                                            shuffled + "/images");
  std::string reordered;
  for (int i : {3, 5, 0, 4, 2, 1}) reordered += all[i].dump() + "\n";
  ASSERT_TRUE(write_file_atomic(shuffled + "/manifest.jsonl", reordered).ok());
  auto in_order = load_synthetic(sc.out, 32, 1.0f, nullptr);
  auto out_of_order = load_synthetic(shuffled, 32, 1.0f, nullptr);
  LF_ASSERT_OK(in_order);
  LF_ASSERT_OK(out_of_order);
  ASSERT_EQ(out_of_order->count(), 6);
  EXPECT_EQ(out_of_order->ids, in_order->ids);
  EXPECT_TRUE(std::is_sorted(out_of_order->ids.begin(), out_of_order->ids.end()));
  EXPECT_EQ(out_of_order->pixels, in_order->pixels);
  EXPECT_EQ(out_of_order->labels, in_order->labels);
}

TEST(Classifier, CnnAndVitOverfitASmallSetAndRoundTrip) {
  auto set = phantom_set(48, 32, 2);
  for (std::string arch : {"cnn", "vit"}) {
    ClassifierConfig mc;
    mc.arch = *parse_arch(arch);
    mc.image_size = 32;
    mc.width = 16;
    mc.vit_dim = 64;
    mc.vit_depth = 2;
    mc.dropout = 0;
    torch::manual_seed(0);
    Classifier m(mc);
    ClsTrainConfig tc;
    tc.epochs = arch == "cnn" ? 25 : 40;
    tc.batch = 16;
    tc.lr = arch == "cnn" ? 3e-3 : 1e-3;
    tc.augment = false;
    tc.patience = 1000;
    tc.out = test::tmp_dir("cls_overfit_" + arch);
    auto r = train_classifier(tc, m, set, set);
    LF_ASSERT_OK(r);
    auto p = predict_malignant(m, set);
    EXPECT_GT(roc_auc(p, set.labels), 0.99) << arch;
    EXPECT_GT(binary_metrics(p, set.labels, r->threshold).accuracy, 0.95) << arch;
    // best.safetensors rebuilds the same model (BatchNorm statistics included).
    auto lc = load_classifier(tc.out + "/best.safetensors");
    LF_ASSERT_OK(lc);
    auto p2 = predict_malignant(lc->model, set);
    for (size_t i = 0; i < p.size(); ++i) ASSERT_NEAR(p[i], p2[i], 1e-6) << arch;
    EXPECT_DOUBLE_EQ(lc->threshold, std::atof(std::to_string(r->threshold).c_str()));
  }
}

// Acquisition-shift augmentation changes what the network sees and is seed-exact (its shifts are
// drawn from (seed, step), so a resumed run draws the same ones).
TEST(Classifier, ShiftAugmentationIsSeedExactAndChangesTraining) {
  auto set = phantom_set(32, 32, 2);
  auto run = [&](double p, const std::string& name) {
    Classifier m = train_small_cnn(set, 3, 16, 1e-3, name, p);
    return predict_malignant(m, set);
  };
  auto a = run(0.8, "cls_shift_a"), b = run(0.8, "cls_shift_b"), c = run(0.0, "cls_shift_c");
  EXPECT_EQ(a, b);
  double diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff += std::abs(a[i] - c[i]);
  EXPECT_GT(diff, 1e-3);
}

// The real+filtered recipe: a real-only classifier drops synthetic images whose label it
// contradicts with high confidence. A planted mislabelled image (a confident malignant labelled
// benign) goes; the correctly labelled ones stay.
TEST(Classifier, FilterDropsAPlantedMislabelledSyntheticImageAndKeepsCorrectOnes) {
  auto real = phantom_set(48, 32, 2);
  Classifier m = train_small_cnn(real, 25, 16, 3e-3, "cls_filter");
  auto syn = phantom_set(24, 32, 9);  // other phantoms, correctly labelled
  auto p = predict_malignant(m, syn);
  int64_t planted = -1;
  for (int64_t i = 0; i < syn.count() && planted < 0; ++i)
    if (syn.labels[i] == 1 && p[i] > 0.95) planted = i;
  ASSERT_GE(planted, 0) << "the real-only classifier should be confident on some melanoma";
  syn.labels[planted] = 0;
  auto drop = contradicted_labels(p, syn.labels, 0.9);
  EXPECT_NE(std::find(drop.begin(), drop.end(), planted), drop.end());
  EXPECT_LE(drop.size(), 3u) << "too many correctly labelled images dropped";
  int64_t kept_malignant = 0;
  for (int64_t i = 0; i < syn.count(); ++i)
    if (syn.labels[i] == 1 && std::find(drop.begin(), drop.end(), i) == drop.end())
      ++kept_malignant;
  EXPECT_GT(kept_malignant, 0);
  // The boundary: a benign image exactly at the confidence is kept; above it, dropped.
  EXPECT_TRUE(contradicted_labels({0.9}, {0}, 0.9).empty());
  EXPECT_EQ(contradicted_labels({0.91, 0.05, 0.5}, {0, 1, 1}, 0.9), (std::vector<int64_t>{0, 1}));
}

// synthetic-then-real: pretrain on synthetic, fine-tune on real. Interrupted at the phase boundary
// (the fine-tune's files lost), the rerun skips the finished pretraining and ends bit-identical to
// the uninterrupted run; the fine-tune really starts from the pretrained weights.
TEST(Classifier, PretrainThenFinetuneResumesExactlyAtThePhaseBoundary) {
  RealData real = phantom_real_data(60, 16, 3);
  ASSERT_EQ(real.test.size(), 12u);
  auto syn = phantom_set(30, 16, 5);
  ClsJob job;
  job.arm = "synthetic-then-real";
  job.seed = 1;
  job.model.width = 8;
  job.train.epochs = 3;
  job.train.batch = 16;
  job.train.resume = true;
  const std::string dir_a = test::tmp_dir("pretrain_a"), dir_b = test::tmp_dir("pretrain_b"),
                    dir_c = test::tmp_dir("pretrain_none");
  job.train.out = dir_a;
  auto a = run_cls_job(job, real, &syn, {});
  LF_ASSERT_OK(a);
  EXPECT_TRUE(file_exists(dir_a + "/pretrain/done"));
  EXPECT_EQ((*a)["synthetic_size"].get<int64_t>(), syn.count());
  job.train.out = dir_b;
  LF_ASSERT_OK(run_cls_job(job, real, &syn, {}));
  for (const char* f : {"result.json", "last.safetensors", "best.safetensors", "state.bin",
                        "history.jsonl", "test_scores.csv"})
    std::filesystem::remove(dir_b + "/" + f);
  auto b = run_cls_job(job, real, &syn, {});
  LF_ASSERT_OK(b);
  EXPECT_EQ((*a)["test"]["auc"], (*b)["test"]["auc"]);
  EXPECT_EQ(*read_file(dir_a + "/test_scores.csv"), *read_file(dir_b + "/test_scores.csv"));
  // Phase 2 starts from the pretrained weights: the same training without them scores
  // differently.
  job.arm = "real";
  job.train.out = dir_c;
  LF_ASSERT_OK(run_cls_job(job, real, &syn, {}));
  EXPECT_NE(*read_file(dir_c + "/test_scores.csv"), *read_file(dir_a + "/test_scores.csv"));
}

// A cached job from before the operating points and calibration (its result.json without them)
// is re-evaluated from its saved scores, on the test split and the extra test set alike, and
// the AUCs it had stay.
TEST(Experiment, CachedResultsFromBeforeTheMetricsAreReevaluatedFromTheirScores) {
  RealData real = phantom_real_data(60, 16, 3);
  ASSERT_EQ(real.test.size(), 12u);
  std::vector<NamedSet> extra{{"phantom:40", phantom_set(40, 16, 8)}};
  ClsJob job;
  job.seed = 2;
  job.model.width = 8;
  job.train.epochs = 2;
  job.train.batch = 16;
  job.train.out = test::tmp_dir("reevaluate");
  auto fresh = run_cls_job(job, real, nullptr, extra);
  LF_ASSERT_OK(fresh);
  ASSERT_TRUE((*fresh)["test"].contains("calibration_bins"));
  ASSERT_TRUE((*fresh)["test"].contains("recalibrated"));
  // The Platt scaling fitted on validation travels with the model.
  auto lc = load_classifier(job.train.out + "/best.safetensors");
  LF_ASSERT_OK(lc);
  ASSERT_TRUE(lc->platt.has_value());
  EXPECT_DOUBLE_EQ(lc->platt->a, (*fresh)["platt"]["a"].get<double>());
  EXPECT_DOUBLE_EQ(lc->platt->b, (*fresh)["platt"]["b"].get<double>());
  ASSERT_TRUE((*fresh)["extra_tests"]["phantom:40"].contains("ece"));
  // Make it an old result: no operating points, no calibration.
  nlohmann::json old = *fresh;
  for (auto* t : {&old["test"], &old["extra_tests"]["phantom:40"]})
    for (const char* k : {"calibration_bins", "brier", "ece", "specificity_at_sensitivity",
                          "sensitivity_at_specificity", "recalibrated", "metrics_version"})
      t->erase(k);
  old.erase("platt");  // fitted again from the saved weights on the validation split
  const std::string result = job.train.out + "/result.json";
  Status w = write_file_atomic(result, old.dump(2));
  ASSERT_TRUE(w.ok()) << w.message();
  auto again = run_cls_job(job, real, nullptr, extra);
  LF_ASSERT_OK(again);
  auto on_disk = nlohmann::json::parse(*read_file(result));
  // The saved scores are rounded to 9 digits: equal up to that.
  auto v = [](const nlohmann::json& j) { return j["value"].get<double>(); };
  const auto &ft = (*fresh)["test"], &fx = (*fresh)["extra_tests"]["phantom:40"];
  for (const auto* r : {&*again, &on_disk}) {
    const auto &t = (*r)["test"], &x = (*r)["extra_tests"]["phantom:40"];
    ASSERT_TRUE(t.contains("calibration_bins") && t.contains("recalibrated") && x.contains("ece"));
    EXPECT_NEAR(v(t["auc"]), v(ft["auc"]), 1e-9);
    EXPECT_NEAR(v(t["ece"]), v(ft["ece"]), 1e-7);
    EXPECT_NEAR(v(t["brier"]), v(ft["brier"]), 1e-7);
    EXPECT_NEAR(v(t["specificity_at_sensitivity"]), v(ft["specificity_at_sensitivity"]), 1e-9);
    ASSERT_EQ(t["calibration_bins"].size(), ft["calibration_bins"].size());
    for (size_t b = 0; b < ft["calibration_bins"].size(); ++b)
      EXPECT_EQ(t["calibration_bins"][b]["n"], ft["calibration_bins"][b]["n"]);
    EXPECT_NEAR(v(x["auc"]), v(fx["auc"]), 1e-9);
    EXPECT_NEAR(v(x["ece"]), v(fx["ece"]), 1e-7);
    EXPECT_NEAR((*r)["platt"]["a"].get<double>(), (*fresh)["platt"]["a"].get<double>(), 1e-6);
    EXPECT_NEAR(t["recalibrated"]["ece"].get<double>(), ft["recalibrated"]["ece"].get<double>(),
                1e-6);
    EXPECT_NEAR(t["recalibrated"]["accuracy"].get<double>(),
                ft["recalibrated"]["accuracy"].get<double>(), 1e-9);
  }
  // The cell of the re-evaluated job carries the new metrics.
  auto cells = aggregate_results({*again});
  ASSERT_EQ(cells.size(), 1u);
  EXPECT_NEAR(cells[0]["ece"]["mean"].get<double>(), v(ft["ece"]), 1e-7);
  EXPECT_TRUE(cells[0]["extra_tests"]["phantom:40"].contains("specificity_at_sensitivity"));
  EXPECT_TRUE(cells[0].contains("ece_recalibrated"));
  EXPECT_TRUE(cells[0].contains("called_malignant_at_triage"));
  EXPECT_TRUE((*again)["test"]["by_dx"]["triage_threshold"].is_number());
}

// `classify calibrate` refits the Platt scaling on a labelled set a user brings and writes a
// model that predicts as before and carries the new scaling.
TEST(Classifier, CalibrateRefitsPlattOnAUsersSetAndKeepsTheWeights) {
  auto train = phantom_set(80, 32, 21);
  train_small_cnn(train, 2, 16, 1e-3, "calibrate");
  const std::string dir = std::filesystem::temp_directory_path() / "lesionflow_test_calibrate";
  ClassifyCalibrateOptions o;
  o.model = dir + "/best.safetensors";
  o.dataset = "phantom:150";
  o.out = dir + "/recalibrated.safetensors";
  auto r = run_classify_calibrate(o);
  LF_ASSERT_OK(r);
  auto before = load_classifier(o.model), after = load_classifier(o.out);
  LF_ASSERT_OK(before);
  LF_ASSERT_OK(after);
  auto users = load_test_dataset(o.dataset, 32);
  LF_ASSERT_OK(users);
  const auto s0 = predict_malignant(before->model, users->set),
             s1 = predict_malignant(after->model, users->set);
  EXPECT_EQ(s0, s1);  // the same weights
  EXPECT_EQ(after->threshold, before->threshold);
  ASSERT_TRUE(after->platt.has_value());
  const Platt want = fit_platt(s0, users->set.labels);
  EXPECT_DOUBLE_EQ(after->platt->a, want.a);
  EXPECT_DOUBLE_EQ(after->platt->b, want.b);
  EXPECT_EQ(after->metadata["platt_fitted_on"], "phantom:150");
  EXPECT_EQ(after->metadata["epoch"], before->metadata["epoch"]);
  EXPECT_EQ((*r)["n"], users->set.count());
  // The maximum-likelihood scaling cannot raise the log-loss it minimises; the Brier score on
  // the same images follows it here.
  EXPECT_LE((*r)["after"]["brier"].get<double>(), (*r)["before"]["brier"].get<double>() + 1e-9);
  // A missing model is named.
  o.model = dir + "/none.safetensors";
  auto bad = run_classify_calibrate(o);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("none.safetensors"), std::string::npos);
}

// Where the errors are, per diagnosis, at the model's threshold and at the triage operating point:
// known answer on hand-placed scores (one melanoma scored 0.10 is the 5% the triage point may
// miss).
TEST(Metrics, ByDiagnosisSharesCalledMalignantAtTheTriagePoint) {
  LabeledSet set;
  set.size = 1;
  const uint8_t px[3] = {0, 0, 0};
  std::vector<double> s;
  auto add = [&](const std::string& dx, int label, double score) {
    set.add(px, label, 1.0f, dx + std::to_string(set.count()), "real", {{"dx", dx}});
    s.push_back(score);
  };
  for (int i = 0; i < 19; ++i) add(i < 4 ? "mel" : "bcc", 1, 0.80 + 0.01 * i);
  add("mel", 1, 0.10);
  for (int i = 0; i < 10; ++i) add("nv", 0, 0.05 * (i + 1));  // 0.05 .. 0.50
  for (int i = 0; i < 10; ++i) add("bkl", 0, i < 4 ? 0.85 : 0.30);
  EXPECT_NEAR(threshold_at_sensitivity(s, set.labels, 0.95), 0.80, 1e-12);
  EXPECT_NEAR(threshold_at_sensitivity(s, set.labels, 1.0), 0.10, 1e-12);
  EXPECT_NEAR(specificity_at_sensitivity(s, set.labels, 0.95), 0.80, 1e-12);
  const auto j = by_dx_json(s, set, 0.5);
  EXPECT_NEAR(j["triage_threshold"].get<double>(), 0.80, 1e-12);
  std::map<std::string, nlohmann::json> row;
  for (const auto& r : j["rows"]) row[r["dx"]] = r;
  ASSERT_EQ(row.size(), 4u);
  const std::map<std::string, std::pair<double, double>> want = {
      {"mel", {0.8, 0.8}}, {"bcc", {1.0, 1.0}}, {"nv", {0.1, 0.0}}, {"bkl", {0.4, 0.4}}};
  for (auto& [dx, w] : want) {
    EXPECT_NEAR(row[dx]["called_malignant_at_threshold"].get<double>(), w.first, 1e-12) << dx;
    EXPECT_NEAR(row[dx]["called_malignant_at_triage"].get<double>(), w.second, 1e-12) << dx;
  }
  EXPECT_EQ(row["mel"]["n"], 5);
  EXPECT_EQ(row["mel"]["positives"], 5);
  EXPECT_NEAR(row["nv"]["mean_score"].get<double>(), 0.275, 1e-12);
  // The benign rows' shares at the triage point are its specificity's complement.
  EXPECT_NEAR(1 - (10 * row["nv"]["called_malignant_at_triage"].get<double>() +
                   10 * row["bkl"]["called_malignant_at_triage"].get<double>()) /
                      20,
              specificity_at_sensitivity(s, set.labels, kTriageSensitivity), 1e-12);
  // One class only: no triage point.
  LabeledSet benign = set.subset({20, 21, 22});
  const auto k = by_dx_json({0.1, 0.2, 0.3}, benign, 0.5);
  EXPECT_TRUE(k["triage_threshold"].is_null());
  EXPECT_TRUE(std::isnan(threshold_at_sensitivity({0.1, 0.2}, {0, 0}, 0.95)));
}

// classify eval scores any split of a prepared cache and writes every image's score: the CSV holds
// the val split's images with the model's own scores and the Platt-rescaled ones, and its AUC
// is the one in the metrics.
TEST(Classifier, EvalScoresTheValSplitPerImage) {
  auto train = phantom_set(80, 32, 21);
  train_small_cnn(train, 2, 16, 1e-3, "evalsplit");
  const std::string model =
      std::string(std::filesystem::temp_directory_path() / "lesionflow_test_evalsplit") +
      "/best.safetensors";
  const std::string dir = test::tmp_dir("evalsplit_data");
  auto ds = load_dataset("phantom:120", {}, 5);
  LF_ASSERT_OK(ds);
  PrepareStats st;
  auto ps = prepare(*ds, PrepareConfig{32, FitMode::kCrop, 2}, &st);
  LF_ASSERT_OK(ps);
  ASSERT_TRUE(save_prepared(dir + "/cache", *ps, st).ok());
  auto sp = make_splits(ds->records, {0.6, 0.2, 0.2, 3});
  LF_ASSERT_OK(sp);
  ASSERT_TRUE(write_splits(dir + "/splits.csv", ds->records, *sp).ok());
  ClassifyEvalOptions o;
  o.model = model;
  o.data = dir + "/cache";
  o.splits = dir + "/splits.csv";
  o.split = "val";
  o.scores = dir + "/scores.csv";
  auto r = run_classify_eval(o);
  LF_ASSERT_OK(r);
  const std::string name = "val split of " + o.data;
  ASSERT_TRUE(r->contains(name)) << r->dump();
  // The val images, scored independently.
  std::vector<size_t> val;
  for (size_t i = 0; i < sp->size(); ++i)
    if ((*sp)[i] == "val") val.push_back(i);
  ASSERT_GT(val.size(), 10u);
  auto lc = load_classifier(model);
  LF_ASSERT_OK(lc);
  ASSERT_TRUE(lc->platt.has_value());
  const LabeledSet vs = labeled_from_prepared(*ps, val, nullptr);
  const auto want = predict_malignant(lc->model, vs);
  auto text = read_file(o.scores);
  LF_ASSERT_OK(text);
  std::istringstream in(*text);
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, "set,id,label,score,p_calibrated");
  std::map<std::string, std::pair<int, double>> want_of;
  for (int64_t i = 0; i < vs.count(); ++i) want_of[vs.ids[i]] = {vs.labels[i], want[i]};
  std::vector<double> got;
  std::vector<int> y;
  while (std::getline(in, line)) {
    // The set name has no comma here: set,id,label,score,p_calibrated.
    std::vector<std::string> f;
    std::stringstream ls(line);
    for (std::string c; std::getline(ls, c, ',');) f.push_back(c);
    ASSERT_EQ(f.size(), 5u) << line;
    EXPECT_EQ(f[0], name);
    ASSERT_TRUE(want_of.count(f[1])) << f[1] << " is not a val image";
    EXPECT_EQ(std::stoi(f[2]), want_of[f[1]].first);
    EXPECT_NEAR(std::stod(f[3]), want_of[f[1]].second, 1e-7);
    EXPECT_NEAR(std::stod(f[4]), lc->platt->apply(want_of[f[1]].second), 1e-7);
    got.push_back(std::stod(f[3]));
    y.push_back(std::stoi(f[2]));
  }
  EXPECT_EQ(got.size(), val.size());
  EXPECT_NEAR((*r)[name]["auc"]["value"].get<double>(), roc_auc(got, y), 1e-6);
  o.split = "holdout";
  auto bad = run_classify_eval(o);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("--split"), std::string::npos);
}

// Every arm is its own cell, in a fixed order (an earlier version pooled every arm after
// real+synthetic into one cell).
TEST(Experiment, AggregateKeepsEachArmInItsOwnCell) {
  std::vector<nlohmann::json> results;
  const std::vector<std::string> arms = {
      "synthetic",      "synthetic-then-real",    "real+filtered", "real+synthetic (4.00x)",
      "real+synthetic", "real+synthetic (0.50x)", "real"};
  for (size_t a = 0; a < arms.size(); ++a)
    for (int seed = 0; seed < 2; ++seed)
      results.push_back({{"arch", "cnn"},
                         {"arm", arms[a]},
                         {"requested_real_size", 500},
                         {"real_size", 500},
                         {"synthetic_size", 100},
                         {"seed", seed},
                         {"test", {}}});
  for (auto& r : results) {
    const size_t a =
        std::find(arms.begin(), arms.end(), r["arm"].get<std::string>()) - arms.begin();
    for (const char* m : {"auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity"})
      r["test"][m] = {{"value", 0.5 + 0.1 * a + 0.01 * r["seed"].get<int>()}, {"lo", 0}, {"hi", 1}};
  }
  auto cells = aggregate_results(results);
  ASSERT_EQ(cells.size(), arms.size());
  // A ratio sweep's arms sit with their recipe, ordered by ratio.
  const std::vector<std::string> order = {"real",
                                          "real+synthetic",
                                          "real+synthetic (0.50x)",
                                          "real+synthetic (4.00x)",
                                          "real+filtered",
                                          "synthetic-then-real",
                                          "synthetic"};
  for (size_t i = 0; i < order.size(); ++i) {
    EXPECT_EQ(cells[i]["arm"], order[i]);
    const size_t a = std::find(arms.begin(), arms.end(), order[i]) - arms.begin();
    EXPECT_NEAR(cells[i]["auc"]["mean"].get<double>(), 0.5 + 0.1 * a + 0.005, 1e-9);
  }
}

TEST(Classifier, ResumeEqualsUninterruptedTraining) {
  auto set = phantom_set(40, 16, 4), val = phantom_set(37, 16, 5);
  ClassifierConfig mc;
  mc.image_size = 16;
  mc.width = 8;
  // Uninterrupted: 4 epochs.
  std::string a = test::tmp_dir("cls_resume_a"), b = test::tmp_dir("cls_resume_b");
  ClsTrainResult res;
  auto train = [&](const std::string& dir, bool resume, double max_minutes_marker) {
    torch::manual_seed(0);
    Classifier m(mc);
    ClsTrainConfig tc;
    tc.epochs = 4;
    tc.batch = 8;
    tc.patience = 1000;
    tc.out = dir;
    tc.resume = resume;
    tc.max_minutes = max_minutes_marker;
    auto r = train_classifier(tc, m, set, val);
    EXPECT_TRUE(r.ok()) << r.status().message();
    if (r.ok()) res = *r;
    return m;
  };
  train(a, false, 0);
  const ClsTrainResult ra = res;
  // Interrupted after epoch 1 (a budget of ~0 minutes stops after the first epoch), then resumed.
  train(b, false, 1e-9);
  auto h1 = *read_jsonl(b + "/history.jsonl");
  ASSERT_EQ(h1.size(), 1u);
  train(b, true, 0);
  auto wa = *load_safetensors(a + "/last.safetensors"),
       wb = *load_safetensors(b + "/last.safetensors");
  ASSERT_EQ(wa.tensors.size(), wb.tensors.size());
  for (auto& [k, t] : wa.tensors) EXPECT_EQ(t.data, wb.tensors[k].data) << k;
  auto ha = *read_jsonl(a + "/history.jsonl"), hb = *read_jsonl(b + "/history.jsonl");
  ASSERT_EQ(ha.size(), hb.size());
  for (size_t i = 0; i < ha.size(); ++i) EXPECT_EQ(ha[i]["train_loss"], hb[i]["train_loss"]);
  // The best validation AUC survives the checkpoint bit-exact (it was kept to 6 decimals, so a run
  // resumed after its best epoch reported another val_auc than the uninterrupted one).
  EXPECT_EQ(res.best_val, ra.best_val);
  EXPECT_EQ(res.threshold, ra.threshold);
  auto best = *load_safetensors(b + "/best.safetensors");
  EXPECT_EQ(std::strtod(best.metadata["val_auc"].c_str(), nullptr), ra.best_val);
  EXPECT_EQ(std::strtod(wb.metadata["best_val"].c_str(), nullptr), ra.best_val);
}

// The whole pipeline through the CLI on phantoms (tiny generator, 1 seed, 2 epochs), then the
// report rendered by headless Chromium: the screenshot must show content, not a blank page.
TEST(ExperimentSlow, PhantomPipelineAndReportRendersInChromium) {
  std::string dir = test::tmp_dir("experiment_e2e");
  std::string lf = std::string(LF_BINARY_DIR) + "/lesionflow";
  auto sh = [&](const std::string& cmd) {
    int rc = std::system((cmd + " > " + dir + "/log.txt 2>&1").c_str());
    if (rc != 0) ADD_FAILURE() << cmd << "\n" << *read_file(dir + "/log.txt");
    return rc == 0;
  };
  ASSERT_TRUE(sh(lf + " data split --dataset phantom:500 --out " + dir + "/splits.csv"));
  ASSERT_TRUE(sh(lf + " caption --dataset phantom:500 --out " + dir + "/captions.jsonl --quiet"));
  ASSERT_TRUE(
      sh(lf + " data prepare --dataset phantom:500 --size 16 --out " + dir + "/cache --quiet"));
  std::ofstream(dir + "/config.json") << nlohmann::json{
      {"data", dir + "/cache"},
      {"splits", dir + "/splits.csv"},
      {"captions", dir + "/captions.jsonl"},
      {"generator",
       {{"train_args",
         {"--preset", "tiny", "--steps", "20", "--batch", "16", "--sample-every", "0",
          "--val-every", "0"}}}},
      {"synth", {{"total", 40}, {"steps", 4}}},
      // The ratio sweep: the mix arm twice, with a seeded 15 and 30 of the 40 synthetic images.
      {"synthetic_mix_ratios", {0.25, 0.5}},
      {"real_sizes", {60}},
      {"seeds", {0}},
      {"classifier", {{"archs", {"cnn"}}, {"epochs", 2}, {"width", 8}}},
      {"test_datasets", {"phantom:80"}},  // an extra test set: its own columns and paired rows
      {"budget_minutes", 600},            // ample: recorded, epochs not scaled
      {"out", dir + "/exp"}}.dump();
  ASSERT_TRUE(sh(lf + " experiment --config " + dir + "/config.json"));
  auto summary = nlohmann::json::parse(*read_file(dir + "/exp/summary.json"));
  // real, real+synthetic at two ratios, synthetic
  ASSERT_EQ(summary["cells"].size(), 4u);
  EXPECT_EQ(summary["synthetic"]["images"], 40);
  EXPECT_EQ(summary["cells"][1]["arm"], "real+synthetic (0.25x)");
  EXPECT_EQ(summary["cells"][1]["synthetic_size"], 15);
  EXPECT_EQ(summary["cells"][2]["arm"], "real+synthetic (0.50x)");
  EXPECT_EQ(summary["cells"][2]["synthetic_size"], 30);
  EXPECT_EQ(summary["cells"][3]["arm"], "synthetic");
  for (auto& r : summary["runs"]) {
    if (r["arm"] != "real" && r["arm"] != "synthetic") {
      EXPECT_EQ(r["recipe"], "real+synthetic");
    }
  }
  EXPECT_TRUE(summary["audit"].contains("fd") && summary["audit"].contains("memorisation"));
  EXPECT_EQ(summary["budget"]["minutes"], 600);
  EXPECT_EQ(summary["budget"]["epoch_factor"], 1.0);
  EXPECT_EQ(summary["budget"]["epochs_used"], 2);
  EXPECT_EQ(summary["classifier_epochs"]["planned"], 2);
  EXPECT_EQ(summary["classifier_epochs"]["used"], 2);
  // Paired comparisons: each non-real arm against real on the same test images, on the test split
  // and on the extra test set.
  ASSERT_EQ(summary["paired"]["per_seed"].size(), 6u);
  std::map<std::string, int> per_test_set;
  for (auto& p : summary["paired"]["per_seed"]) {
    ++per_test_set[p["test_set"].get<std::string>()];
    EXPECT_NE(p["arm"], "real");
    const double d = p["auc_arm"].get<double>() - p["auc_real"].get<double>();
    EXPECT_NEAR(p["diff"].get<double>(), d, 1e-12);
    EXPECT_LE(p["ci_lo"].get<double>(), p["ci_hi"].get<double>());
    EXPECT_GE(p["p_value"].get<double>(), 0.0);
    EXPECT_LE(p["p_value"].get<double>(), 1.0);
  }
  EXPECT_EQ(per_test_set, (std::map<std::string, int>{{"phantom:80", 3}, {"test", 3}}));
  EXPECT_EQ(summary["paired"]["pooled"].size(), 6u);
  for (auto& p : summary["paired"]["pooled"]) {
    const auto& op = p["seed_averaged"]["sensitivity_at_specificity"];
    EXPECT_LE(op["ci_lo"].get<double>(), op["ci_hi"].get<double>()) << p.dump();
    EXPECT_EQ(op["target"], kTriageSpecificity);
  }
  for (auto& cell : summary["cells"]) {
    const auto& e = cell["extra_tests"]["phantom:80"];
    EXPECT_GT(e["auc"]["mean"].get<double>(), 0.0) << cell.dump();
    EXPECT_EQ(e["auc"]["values"].size(), 1u);
    EXPECT_TRUE(e["sensitivity"]["mean"].is_number());
  }
  // Rerun: every stage is cached (no training), same summary cells.
  ASSERT_TRUE(sh(lf + " experiment --config " + dir + "/config.json"));
  auto again = nlohmann::json::parse(*read_file(dir + "/exp/summary.json"));
  EXPECT_EQ(again["cells"], summary["cells"]);
  EXPECT_EQ(again["audit"], summary["audit"]);
  EXPECT_NE(read_file(dir + "/log.txt")->find("has the same inputs; reused"), std::string::npos);
  // Calibration and the operating points, before and after the validation split's Platt scaling.
  for (auto& cell : summary["cells"]) {
    EXPECT_TRUE(cell["ece"]["mean"].is_number()) << cell.dump();
    EXPECT_TRUE(cell["ece_recalibrated"]["mean"].is_number()) << cell.dump();
    EXPECT_TRUE(cell["accuracy_recalibrated"]["mean"].is_number()) << cell.dump();
    EXPECT_TRUE(cell["specificity_at_sensitivity"]["mean"].is_number()) << cell.dump();
    // Per diagnosis at the triage point: every phantom dx of the test split has a share.
    ASSERT_TRUE(cell.contains("called_malignant_at_triage")) << cell.dump();
    EXPECT_GE(cell["called_malignant_at_triage"].size(), 2u) << cell.dump();
    for (auto& [dx, v] : cell["called_malignant_at_triage"].items()) {
      EXPECT_GE(v["mean"].get<double>(), 0.0) << dx;
      EXPECT_LE(v["mean"].get<double>(), 1.0) << dx;
    }
  }
  ASSERT_TRUE(sh(lf + " report --experiment " + dir + "/exp --captions " + dir +
                 "/captions.jsonl --out " + dir + "/report.html"));
  std::string html = *read_file(dir + "/report.html");
  EXPECT_NE(html.find("real+synthetic"), std::string::npos);
  EXPECT_NE(html.find("Fréchet"), std::string::npos);
  EXPECT_NE(html.find("a shift of the whole set"), std::string::npos);  // FD's two parts
  const auto& fd = summary["audit"]["fd"];
  EXPECT_NEAR(fd["synthetic_vs_real_test_parts"]["mean"].get<double>() +
                  fd["synthetic_vs_real_test_parts"]["covariance"].get<double>(),
              fd["synthetic_vs_real_test"].get<double>(), 1e-9);
  // The label-balanced synthetic set against real images weighted to its dx mix.
  ASSERT_TRUE(fd["mix_matched"].is_object()) << fd.dump();
  ASSERT_TRUE(fd["mix_matched"].contains("synthetic_vs_real_test")) << fd["mix_matched"].dump();
  EXPECT_NE(fd["mix_matched"]["dx_mix"]["synthetic"], fd["mix_matched"]["dx_mix"]["real_test"]);
  EXPECT_NE(html.find("weighted per diagnosis"), std::string::npos);
  EXPECT_NE(html.find("Time budget 600 min"), std::string::npos);
  EXPECT_NE(html.find("not scaled"), std::string::npos);
  EXPECT_NE(html.find("Does synthetic data help?"), std::string::npos);
  EXPECT_NE(html.find("AUC, phantom:80"), std::string::npos);
  EXPECT_NE(html.find("Brier / ECE"), std::string::npos);
  EXPECT_NE(html.find("reliability, test split"), std::string::npos);
  EXPECT_NE(html.find("reliability after Platt scaling"), std::string::npos);
  EXPECT_NE(html.find("Per diagnosis at sensitivity 0.95"), std::string::npos);
  std::string shot = dir + "/shot.png";
  std::system(("chromium --headless --no-sandbox --disable-gpu --hide-scrollbars "
               "--window-size=1200,1600 --screenshot=" +
               shot + " file://" + dir + "/report.html > /dev/null 2>&1")
                  .c_str());
  cv::Mat img = cv::imread(shot);
  ASSERT_FALSE(img.empty())
      << "no screenshot from headless chromium (scripts/setup.sh --test installs it)";
  cv::Mat grey;
  cv::cvtColor(img, grey, cv::COLOR_BGR2GRAY);
  double non_white = cv::countNonZero(grey < 200) / static_cast<double>(grey.total());
  EXPECT_GT(non_white, 0.01) << "the rendered report looks blank";
  // A rerun with more epochs planned and no budget finds every job done: the summary and the
  // report give the epochs the results were trained with, not the config's.
  auto cfg3 = nlohmann::json::parse(*read_file(dir + "/config.json"));
  cfg3["classifier"]["epochs"] = 3;
  cfg3.erase("budget_minutes");
  std::ofstream(dir + "/config3.json") << cfg3.dump();
  ASSERT_TRUE(sh(lf + " experiment --config " + dir + "/config3.json"));
  auto third = nlohmann::json::parse(*read_file(dir + "/exp/summary.json"));
  EXPECT_EQ(third["classifier_epochs"]["planned"], 3);
  EXPECT_EQ(third["classifier_epochs"]["used"], 2);
  EXPECT_TRUE(third["budget"].is_null());
  ASSERT_TRUE(sh(lf + " report --experiment " + dir + "/exp --out " + dir + "/report3.html"));
  const std::string html3 = *read_file(dir + "/report3.html");
  EXPECT_NE(html3.find("other than planned"), std::string::npos);
  EXPECT_NE(html3.find("3 planned, 2 used"), std::string::npos);
  // The diagnosis task with the equal-steps control, from the trained generator: one output per
  // diagnosis, a dx-balanced synthetic set, and a real-only job trained as many steps as the mix.
  auto cfg4 = nlohmann::json::parse(*read_file(dir + "/config.json"));
  cfg4.erase("synthetic_mix_ratios");
  cfg4.erase("budget_minutes");
  cfg4["generator"] = {{"checkpoint", dir + "/exp/generator/ema.safetensors"}};
  cfg4["classifier"]["classes"] = "dx";
  cfg4["arms"] = {"real", "real+synthetic"};
  cfg4["equal_steps_control"] = true;
  // Into the binary run's directory (same synthetic set): its results are not reused for dx
  // models, by name.
  std::ofstream(dir + "/config4.json") << cfg4.dump();
  EXPECT_NE(
      std::system((lf + " experiment --config " + dir + "/config4.json > " + dir + "/log4.txt 2>&1")
                      .c_str()),
      0);
  EXPECT_NE(read_file(dir + "/log4.txt")->find("was trained with model classes"),
            std::string::npos);
  cfg4["out"] = dir + "/exp4";
  cfg4["synth"]["balance"] = "dx";
  // The melanomas from a LoRA adapter of the generator (synth.adapters), the rest from the base.
  ASSERT_TRUE(sh(lf + " finetune --base " + dir + "/exp/generator/ema.safetensors --data " + dir +
                 "/cache --captions " + dir + "/captions.jsonl --splits " + dir +
                 "/splits.csv --filter dx=mel --rank 2 --alpha 2 --steps 2 --batch 8 " +
                 "--ckpt-every 2 --sample-every 0 --val-every 0 --out " + dir + "/lora_mel"));
  cfg4["synth"]["adapters"] = {{"mel", dir + "/lora_mel/ema.safetensors"}};
  std::ofstream(dir + "/config4.json") << cfg4.dump();
  ASSERT_TRUE(sh(lf + " experiment --config " + dir + "/config4.json"));
  {
    auto plan4 = nlohmann::json::parse(*read_file(dir + "/exp4/synthetic/plan.json"));
    ASSERT_EQ(plan4["adapters_by_dx"]["mel"]["file"], dir + "/lora_mel/ema.safetensors");
    const std::string tag =
        plan4["adapters_by_dx"]["mel"]["hash"].get<std::string>() + ":" + std::to_string(1.0);
    std::map<std::string, int> per_dx;
    for (auto& j : *read_jsonl(dir + "/exp4/synthetic/manifest.jsonl")) {
      per_dx[j["dx"]]++;
      EXPECT_EQ(j["adapter_hash"], j["dx"] == "mel" ? tag : "") << j.dump();
    }
    EXPECT_GT(per_dx["mel"], 0);
    EXPECT_GT(per_dx.size(), 1u);
  }
  auto fourth = nlohmann::json::parse(*read_file(dir + "/exp4/summary.json"));
  ASSERT_EQ(fourth["cells"].size(), 3u);
  EXPECT_EQ(fourth["cells"][1]["arm"], "real (equal steps)");
  for (auto& r : fourth["runs"]) {
    const int e = r["train"]["epochs"].get<int>();
    // (60 real + 40 synthetic) / 60 real x 2 epochs, rounded
    EXPECT_EQ(e, r["arm"] == "real (equal steps)" ? 3 : 2) << r["arm"];
    EXPECT_TRUE(r.contains("val_balanced_accuracy")) << r["arm"];
  }
  for (auto& cell : fourth["cells"])
    EXPECT_TRUE(cell["dx_balanced_accuracy"]["mean"].is_number()) << cell.dump();
  ASSERT_EQ(fourth["paired"]["vs_equal_steps"]["baseline"], "real (equal steps)");
  std::set<std::string> vs_eq;
  for (auto& p : fourth["paired"]["vs_equal_steps"]["pooled"])
    vs_eq.insert(p["arm"].get<std::string>());
  EXPECT_EQ(vs_eq, (std::set<std::string>{"real", "real+synthetic"}));
  EXPECT_EQ(fourth["paired"]["dx_pooled"].size(), 2u);  // equal steps and mix, against real
  ASSERT_TRUE(sh(lf + " report --experiment " + dir + "/exp4 --out " + dir + "/report4.html"));
  const std::string html4 = *read_file(dir + "/report4.html");
  EXPECT_NE(html4.find("The diagnosis task"), std::string::npos);
  EXPECT_NE(html4.find("Against the equal-steps control"), std::string::npos);
  EXPECT_NE(html4.find("<th>vs real, equal steps</th>"), std::string::npos);
}

namespace lf {
TEST(Classifier, DxClassifierMapsClassesAndSumsMalignantProbabilities) {
  auto ds = load_dataset("phantom:48", {}, 2);
  PrepareStats st;
  auto ps = prepare(*ds, PrepareConfig{32, FitMode::kCrop, 2}, &st);
  std::vector<size_t> all(ps->count());
  std::iota(all.begin(), all.end(), 0);
  // Classes in an order where the malignant one is output 0 (a binary model reads output 1).
  const std::vector<std::string> classes = {"mel", "nv", "bkl"};
  auto set = labeled_from_prepared(*ps, all, nullptr, 1.0f, &classes);
  for (int64_t i = 0; i < set.count(); ++i) ASSERT_EQ(set.cls[i], set.labels[i] ? 0 : 1);
  ClassifierConfig mc;
  mc.image_size = 32;
  mc.width = 16;
  mc.dropout = 0;
  mc.classes = classes;
  mc.malignant = {1, 0, 0};
  torch::manual_seed(0);
  Classifier m(mc);
  ClsTrainConfig tc;
  tc.epochs = 25;
  tc.batch = 16;
  tc.lr = 3e-3;
  tc.augment = false;
  tc.patience = 1000;
  tc.out = test::tmp_dir("cls_dx");
  LF_ASSERT_OK(train_classifier(tc, m, set, set));
  auto p = predict_malignant(m, set);
  EXPECT_GT(roc_auc(p, set.labels), 0.99);
  auto pr = predict_proba(m, set.pixels.data(), set.count(), set.size);
  EXPECT_EQ(pr.size(1), 3);
  for (int64_t i = 0; i < set.count(); ++i) ASSERT_NEAR(p[i], pr[i][0].item<double>(), 1e-6);
  auto lc = load_classifier(tc.out + "/best.safetensors");
  LF_ASSERT_OK(lc);
  EXPECT_EQ(lc->model->config().classes, classes);
  EXPECT_EQ(lc->metadata["classes"], "mel,nv,bkl");
  // An image without a class cannot train a dx model: a clear error.
  set.cls[3] = -1;
  tc.out = test::tmp_dir("cls_dx_bad");
  Classifier m2(mc);
  auto bad = train_classifier(tc, m2, set, set);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find(set.ids[3]), std::string::npos);
}

TEST(Audit, DensityCoverageAndFdIntervalKnownAnswers) {
  torch::manual_seed(1);
  auto r = torch::randn({500, 3}, torch::kFloat64);
  auto [d_same, c_same] = density_coverage(r, r.clone(), 5);
  EXPECT_NEAR(c_same, 1.0, 1e-12);
  EXPECT_GT(d_same, 0.9);
  auto [d_far, c_far] = density_coverage(r, r + 100, 5);
  EXPECT_DOUBLE_EQ(d_far, 0.0);
  EXPECT_DOUBLE_EQ(c_far, 0.0);
  auto a = torch::randn({400, 3}, torch::kFloat64),
       b = torch::randn({400, 3}, torch::kFloat64) + 1.0;
  auto [lo, hi] = frechet_distance_ci(a, b, 200, 3);
  double fd = frechet_distance(a, b);  // about |mu|^2 = 3
  EXPECT_LT(lo, fd);
  EXPECT_GT(hi, fd);
  EXPECT_LT(lo, 3.0);
  EXPECT_GT(hi, 3.0);
}
}  // namespace lf

// --precision bf16 for the classifiers: the same CNN trained from the same seed on the same
// phantom task reaches a held-out AUC within 0.01 of its fp32 twin (issue 20).
TEST(ClassifierSlow, Bf16AucWithinOneHundredthOfFp32OnPhantoms) {
  if (!cpu_has_bf16()) GTEST_SKIP() << "no AVX512_BF16/AMX on this CPU: bf16 would be emulated";
  auto train_set = phantom_set(320, 32, 21), test_set = phantom_set(400, 32, 22);
  auto run = [&](Precision p) {
    set_compute_precision(p);
    Classifier m =
        train_small_cnn(train_set, 12, 32, 2e-3, std::string("cls_prec_") + precision_name(p));
    double auc = roc_auc(predict_malignant(m, test_set), test_set.labels);
    set_compute_precision(Precision::kFP32);
    return auc;
  };
  const double fp32 = run(Precision::kFP32), bf16 = run(Precision::kBF16);
  std::printf("phantom CNN held-out AUC: fp32 %.4f, bf16 %.4f\n", fp32, bf16);
  EXPECT_GT(fp32, 0.85);
  EXPECT_NEAR(bf16, fp32, 0.01);
}

// The experiment trains its generator in-process; its options come from generator.train and
// generator.train_args (CLI flags), and a typo is an error that names the known options.
TEST(Experiment, GeneratorTrainingOptionsFromObjectAndFlags) {
  nlohmann::json g = {
      {"train", {{"preset", "tiny"}, {"steps", 300}, {"lr", 1e-3}}},
      {"train_args",
       {"--batch", "24", "--sample-every", "0", "--freeze-text", "--max-minutes", "2.5"}}};
  auto t = experiment_train_options(g);
  LF_ASSERT_OK(t);
  EXPECT_EQ(t->preset, "tiny");
  EXPECT_EQ(t->loop.steps, 300);
  EXPECT_DOUBLE_EQ(t->loop.lr, 1e-3);
  EXPECT_EQ(t->loop.batch, 24);
  EXPECT_EQ(t->loop.sample_every, 0);
  EXPECT_TRUE(t->freeze_text);
  EXPECT_DOUBLE_EQ(t->loop.max_minutes, 2.5);
  auto bad = experiment_train_options({{"train_args", {"--stpes", "10"}}});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("stpes"), std::string::npos);
  EXPECT_NE(bad.status().message().find("steps"), std::string::npos);
  EXPECT_FALSE(experiment_train_options({{"train_args", {"--steps"}}}).ok());
  EXPECT_FALSE(experiment_train_options({{"train", {{"steps", "many"}}}}).ok());
}

// Shades-of-Gray colour constancy: a colour cast of the light/camera is largely undone (the
// normalised cast image is much closer to the normalised original than the cast is to the
// original), a grey-balanced image is nearly unchanged, and the setting travels with the model.
TEST(Classifier, ShadesOfGrayUndoesAColourCastAndTravelsWithTheModel) {
  double before = 0, after = 0;
  for (uint64_t s = 0; s < 8; ++s) {
    cv::Mat rgb, mask;
    render_phantom(sample_phantom_params(500 + s), 64, &rgb, &mask);
    cv::Mat cast = rgb.clone();
    for (int i = 0; i < 64 * 64; ++i) {  // warm cast: red up, blue down
      auto* p = cast.data + 3 * i;
      p[0] = cv::saturate_cast<uint8_t>(p[0] * 1.15);
      p[2] = cv::saturate_cast<uint8_t>(p[2] * 0.75);
    }
    cv::Mat a = rgb.clone(), b = cast.clone();
    shades_of_gray(a.data, 64 * 64);
    shades_of_gray(b.data, 64 * 64);
    before += cv::norm(rgb, cast, cv::NORM_L1) / (64 * 64 * 3);
    after += cv::norm(a, b, cv::NORM_L1) / (64 * 64 * 3);
  }
  std::printf("mean |cast - original| %.2f grey levels; after Shades-of-Gray on both: %.2f\n",
              before / 8, after / 8);
  EXPECT_LT(after, 0.35 * before);
  // A grey world stays as it is.
  std::vector<uint8_t> grey(64 * 3);
  for (int i = 0; i < 64; ++i) grey[3 * i] = grey[3 * i + 1] = grey[3 * i + 2] = 40 + 2 * i;
  auto g2 = grey;
  shades_of_gray(g2.data(), 64);
  EXPECT_EQ(g2, grey);
  ClassifierConfig c;
  c.shades_of_gray = true;
  auto back = ClassifierConfig::from_json(c.to_json());
  ASSERT_TRUE(back.ok());
  EXPECT_TRUE(back->shades_of_gray);
  EXPECT_FALSE(ClassifierConfig::from_json({{"colour_constancy", "retinex"}}).ok());
  cv::Mat rgb, mask;
  render_phantom(sample_phantom_params(9), 32, &rgb, &mask);
  std::vector<const uint8_t*> px{rgb.data};
  c.image_size = 32;
  EXPECT_FALSE(torch::equal(classifier_input(c, px, 32), images_to_tensor(px, 32)));
  c.shades_of_gray = false;
  EXPECT_TRUE(torch::equal(classifier_input(c, px, 32), images_to_tensor(px, 32)));
}

// The diagnosis task's metrics against scikit-learn: accuracy, balanced accuracy (a class absent
// from the truth left out, unknown truths skipped), the confusion matrix, and the paired bootstrap
// CI of a balanced-accuracy difference over the same resamples.
TEST(Metrics, MulticlassBalancedAccuracyAndItsPairedIntervalMatchScikitLearn) {
  std::mt19937_64 rng(11);
  const int K = 5, n = 300;  // class 4 never true; a few unknown (-1) truths
  std::vector<int> truth, a, b;
  std::discrete_distribution<int> prior({50, 25, 15, 10, 0});
  std::uniform_real_distribution<double> U(0, 1);
  std::uniform_int_distribution<int> any(0, K - 1);
  for (int i = 0; i < n; ++i) {
    const int t = U(rng) < 0.03 ? -1 : prior(rng);
    truth.push_back(t);
    a.push_back(t >= 0 && U(rng) < 0.6 ? t : any(rng));
    b.push_back(t >= 0 && U(rng) < 0.7 ? t : any(rng));
  }
  const MulticlassMetrics m = multiclass_metrics(a, truth, K);
  EXPECT_TRUE(std::isnan(m.recall[4]));
  const auto R = bootstrap_resamples(n, 200, 3);
  const PairedBalancedAccuracy p = paired_balanced_accuracy(a, b, truth, K, 200, 3);
  std::vector<double> ad(a.begin(), a.end()), bd(b.begin(), b.end());
  const std::string out = python_on_pair(
      "dx_metrics", ad, bd, truth, R,
      "import sys,numpy as np,warnings\n"
      "from sklearn.metrics import accuracy_score,balanced_accuracy_score,confusion_matrix\n"
      "warnings.simplefilter('ignore')\n"
      "d=np.loadtxt(sys.argv[1],delimiter=',').astype(int);a,b,t=d[:,0],d[:,1],d[:,2]\n"
      "k=t>=0\n"
      "ba=lambda p,t:balanced_accuracy_score(t[t>=0],p[t>=0])\n"
      "cm=confusion_matrix(t[k],a[k],labels=range(5))\n"
      "D=[]\n"
      "for line in open(sys.argv[2]):\n"
      "  r=np.array([int(x) for x in line.split(',')]);D.append(ba(b[r],t[r])-ba(a[r],t[r]))\n"
      "lo,hi=np.percentile(D,[2.5,97.5])\n"
      "print('%.12f %.12f %.12f %.12f %.12f %d "
      "%d'%(accuracy_score(t[k],a[k]),ba(a,t),ba(b,t)-ba(a,t),"
      "lo,hi,cm[0,0],cm[2,1]))\n");
  std::istringstream is(out);
  double acc, bacc, diff, lo, hi;
  int c00, c21;
  ASSERT_TRUE(is >> acc >> bacc >> diff >> lo >> hi >> c00 >> c21)
      << "python3 + scikit-learn needed (scripts/setup.sh --test): " << out;
  EXPECT_NEAR(m.accuracy, acc, 1e-12);
  EXPECT_NEAR(m.balanced_accuracy, bacc, 1e-12);
  EXPECT_EQ(m.confusion[0][0], c00);
  EXPECT_EQ(m.confusion[2][1], c21);
  EXPECT_NEAR(p.diff, diff, 1e-12);
  EXPECT_GT(p.diff, 0.02);  // b is right more often
  // numpy's percentile interpolates; ours is the same rule within one resample's step.
  EXPECT_NEAR(p.ci_lo, lo, 0.01);
  EXPECT_NEAR(p.ci_hi, hi, 0.01);
  EXPECT_LT(p.ci_lo, p.diff);
  EXPECT_GT(p.ci_hi, p.diff);
  // Identical predictions: no difference in any resample.
  const PairedBalancedAccuracy same = paired_balanced_accuracy(a, a, truth, K, 50, 1);
  EXPECT_EQ(same.diff, 0);
  EXPECT_EQ(same.ci_lo, 0);
  EXPECT_EQ(same.ci_hi, 0);
}

// A dx classifier trains on real and synthetic images, each with its diagnosis's class, picks its
// epochs on the validation balanced accuracy, writes every test image's class probabilities, and
// the experiment's cells and paired comparison read them: checked against an independent
// computation in python (scikit-learn) from the CSVs.
TEST(Experiment, DxJobsTrainOnSyntheticImagesOfTheirDiagnosisAndArePairedOnTheirProbabilities) {
  RealData real = phantom_real_data(90, 16, 4);
  // Three diagnoses: every third benign phantom becomes a benign keratosis.
  int nb = 0;
  for (auto& r : real.ps.records)
    if (r.label == 0 && nb++ % 3 == 0) r.dx = "bkl";
  std::vector<int> malignant;
  const std::vector<std::string> classes = dx_classes(real, &malignant);
  ASSERT_EQ(classes, (std::vector<std::string>{"bkl", "mel", "nv"}));
  EXPECT_EQ(malignant, (std::vector<int>{0, 1, 0}));
  // The "synthetic" images: other phantoms, with their diagnosis in the groups as load_synthetic
  // gives it from the manifest.
  LabeledSet syn = phantom_set(40, 16, 9);
  for (int64_t i = 0; i < syn.count(); ++i) ASSERT_FALSE(syn.groups[i]["dx"].empty());
  std::vector<nlohmann::json> results;
  const std::string root = test::tmp_dir("dx_jobs");
  for (const char* arm : {"real", "real+synthetic"})
    for (uint64_t seed : {0, 1}) {
      ClsJob job;
      job.arm = arm;
      job.seed = seed;
      job.model.width = 8;
      job.model.classes = classes;
      job.model.malignant = malignant;
      job.train.epochs = 3;
      job.train.batch = 16;
      job.train.out = root + "/" + (job.arm == "real" ? "real" : "mix") + std::to_string(seed);
      auto r = run_cls_job(job, real, &syn, {});
      LF_ASSERT_OK(r);
      ASSERT_TRUE(r->contains("val_balanced_accuracy")) << r->dump();
      ASSERT_FALSE(r->contains("val_auc"));
      ASSERT_TRUE((*r)["test_dx"]["balanced_accuracy"].is_number());
      EXPECT_EQ((*r)["test_dx"]["n"].get<int>(), static_cast<int>(real.test.size()));
      EXPECT_EQ((*r)["test"]["auc"]["value"].is_number(), true);  // P(malignant) still evaluated
      auto hist = read_jsonl(job.train.out + "/history.jsonl");
      LF_ASSERT_OK(hist);
      EXPECT_TRUE(hist->front().contains("val_balanced_accuracy"));
      results.push_back(*r);
    }
  // The result's balanced accuracy and the pooled comparison, recomputed from the CSVs.
  auto paired = paired_arm_comparisons(results);
  LF_ASSERT_OK(paired);
  ASSERT_EQ((*paired)["dx_pooled"].size(), 1u);
  const auto& dp = (*paired)["dx_pooled"][0];
  EXPECT_EQ(dp["arm"], "real+synthetic");
  EXPECT_EQ(dp["seeds"].get<int>(), 2);
  std::string files;
  for (auto& r : results) files += " " + r["test_dx_probs"].get<std::string>();
  const std::string py = root + "/check.py";
  std::ofstream(py)
      << "import sys,numpy as np,csv,warnings\n"
         "from sklearn.metrics import balanced_accuracy_score as B\n"
         "warnings.simplefilter('ignore')\n"
         "def rd(p):\n"
         "  rows=list(csv.reader(open(p)));cls=[c[2:] for c in rows[0][2:]]\n"
         "  t=np.array([cls.index(r[1]) for r in rows[1:]]);P=np.array([[float(x) for x in "
         "r[2:]] for r in rows[1:]])\n"
         "  assert np.allclose(P.sum(1),1,atol=1e-6)\n"
         "  return t,P\n"
         "f=sys.argv[1:];t,_=rd(f[0])\n"
         "ba=[B(t,rd(p)[1].argmax(1)) for p in f]\n"
         "real=sum(rd(p)[1] for p in f[:2])/2;mix=sum(rd(p)[1] for p in f[2:])/2\n"
         "print(' '.join('%.12f'%v for v in ba+[B(t,mix.argmax(1))-B(t,real.argmax(1))]))\n";
  const std::string out = run_command_capture("/usr/bin/python3 " + py + files + " 2>&1");
  std::istringstream is(out);
  std::vector<double> v(5);
  for (auto& x : v) ASSERT_TRUE(is >> x) << out;
  for (size_t k = 0; k < 4; ++k)
    EXPECT_NEAR(results[k]["test_dx"]["balanced_accuracy"].get<double>(), v[k], 1e-9) << k;
  EXPECT_NEAR(dp["seed_averaged"]["diff"].get<double>(), v[4], 1e-9);
  EXPECT_NEAR(dp["mean_diff"].get<double>(), ((v[2] - v[0]) + (v[3] - v[1])) / 2, 1e-9);
  // The cells: the mean over seeds of the balanced accuracy and of each class's recall.
  auto cells = aggregate_results(results);
  ASSERT_EQ(cells.size(), 2u);
  EXPECT_NEAR(cells[0]["dx_balanced_accuracy"]["mean"].get<double>(), (v[0] + v[1]) / 2, 1e-9);
  EXPECT_NEAR(cells[1]["dx_balanced_accuracy"]["mean"].get<double>(), (v[2] + v[3]) / 2, 1e-9);
  EXPECT_EQ(cells[1]["dx_recall"].size(), 3u);
  // `classify eval` of a dx model gives the diagnosis task on a dataset a user brings.
  {
    ClassifyEvalOptions eo;
    eo.model = root + "/mix0/best.safetensors";
    eo.test_datasets = {"phantom:40"};
    auto ev = run_classify_eval(eo);
    LF_ASSERT_OK(ev);
    const auto& d = (*ev)["phantom:40"]["dx"];
    EXPECT_EQ(d["n"].get<int>(), 40);
    EXPECT_EQ(d["images_of_other_diagnoses"].get<int>(), 0);
    auto lc = load_classifier(eo.model);
    LF_ASSERT_OK(lc);
    LabeledSet ph = phantom_set(40, 16, 0);  // phantom:40 with the default seed
    std::vector<int> truth;
    for (int64_t i = 0; i < ph.count(); ++i)
      truth.push_back(ph.labels[i] ? 1 : 2);  // mel, nv among {bkl, mel, nv}
    auto am = predict_proba(lc->model, ph.pixels.data(), ph.count(), ph.size).argmax(1);
    std::vector<int> pred(am.data_ptr<int64_t>(), am.data_ptr<int64_t>() + am.numel());
    EXPECT_NEAR(d["balanced_accuracy"].get<double>(),
                multiclass_metrics(pred, truth, 3).balanced_accuracy, 1e-12);
    EXPECT_TRUE(d["recall_per_class"]["bkl"].is_null());  // no benign keratosis among phantoms
  }
  // A synthetic image of a diagnosis the classifier does not have, or of none, is refused by name.
  for (const char* dx : {"vasc", ""}) {
    LabeledSet bad = syn;
    bad.groups[5]["dx"] = dx;
    ClsJob job;
    job.arm = "real+synthetic";
    job.model.width = 8;
    job.model.classes = classes;
    job.model.malignant = malignant;
    job.train.epochs = 1;
    job.train.out = root + "/bad";
    auto r = run_cls_job(job, real, &bad, {});
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find(syn.ids[5]), std::string::npos) << r.status().message();
  }
}
