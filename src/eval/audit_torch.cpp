#include <algorithm>
#include <cmath>
#include <map>
#include <opencv2/core.hpp>
#include <set>

#include "eval/audit.h"
#include "lesionflow/concepts.h"
#include "lesionflow/image_metrics.h"
#include "lesionflow/log.h"
#include "lesionflow/metrics.h"

namespace lf {
using torch::Tensor;

namespace {
// Mean and covariance of rows x with frequency weights w (undefined: all 1).
std::pair<Tensor, Tensor> weighted_moments(const Tensor& x, const Tensor& w0) {
  Tensor w = w0.defined() ? w0.to(torch::kFloat64).view({-1, 1})
                          : torch::ones({x.size(0), 1}, x.options());
  const double n = w.sum().item<double>();
  auto mu = (x * w).sum(0) / n;
  auto c = x - mu;
  return {mu, (c * w).t().mm(c) / std::max(1.0, n - 1)};
}
}  // namespace

FrechetParts frechet_parts(const Tensor& a0, const Tensor& b0, const Tensor& wa, const Tensor& wb) {
  auto a = a0.to(torch::kFloat64), b = b0.to(torch::kFloat64);
  auto [mu_a, sa] = weighted_moments(a, wa);
  auto [mu_b, sb] = weighted_moments(b, wb);
  // Tr sqrt(Sa Sb) = Tr sqrt(Sa^1/2 Sb Sa^1/2), a symmetric PSD matrix.
  auto sym_sqrt = [](const Tensor& m) {
    auto [w, v] = torch::linalg::eigh(m, "L");
    return v.mm(torch::diag(w.clamp_min(0).sqrt())).mm(v.t());
  };
  auto ra = sym_sqrt(sa);
  auto inner = ra.mm(sb).mm(ra);
  inner = (inner + inner.t()) / 2;
  auto ev = std::get<0>(torch::linalg::eigh(inner, "L")).clamp_min(0).sqrt().sum();
  return {(mu_a - mu_b).pow(2).sum().item<double>(),
          (sa.trace() + sb.trace() - 2 * ev).item<double>()};
}

double frechet_distance(const Tensor& a, const Tensor& b) { return frechet_parts(a, b).total(); }

std::map<std::string, double> label_shares(const std::vector<std::string>& labels) {
  std::map<std::string, double> m;
  for (auto& x : labels) m[x] += 1.0 / labels.size();
  return m;
}

std::vector<double> mix_weights(const std::vector<std::string>& have,
                                const std::vector<std::string>& want) {
  auto h = label_shares(have), w = label_shares(want);
  for (auto& [k, v] : w)
    if (!h.count(k)) return {};
  std::vector<double> out;
  for (auto& x : have) out.push_back(w.count(x) ? w[x] / h[x] : 0.0);
  return out;
}

namespace {
Tensor pairwise_dist(const Tensor& a, const Tensor& b) {
  auto a2 = a.pow(2).sum(1, true), b2 = b.pow(2).sum(1, true).t();
  return (a2 + b2 - 2 * a.mm(b.t())).clamp_min(0).sqrt();
}
Tensor kth_nn_radius(const Tensor& x, int k) {  // distance to the k-th nearest other row
  auto d = pairwise_dist(x, x);
  d.fill_diagonal_(std::numeric_limits<double>::infinity());
  return std::get<0>(d.topk(std::min<int64_t>(k, x.size(0) - 1), 1, false)).select(1, -1);
}
double coverage_fraction(const Tensor& points, const Tensor& centres, const Tensor& radii) {
  auto d = pairwise_dist(points, centres);
  return (d <= radii.unsqueeze(0)).any(1).to(torch::kFloat64).mean().item<double>();
}
}  // namespace

std::pair<double, double> density_coverage(const Tensor& real0, const Tensor& fake0, int k) {
  auto real = real0.to(torch::kFloat64), fake = fake0.to(torch::kFloat64);
  if (real.size(0) <= k || fake.size(0) < 1) return {std::nan(""), std::nan("")};
  auto r = kth_nn_radius(real, k);                            // [N]
  auto inside = pairwise_dist(fake, real) <= r.unsqueeze(0);  // [M,N]
  double density =
      inside.to(torch::kFloat64).sum().item<double>() / (k * static_cast<double>(fake.size(0)));
  double coverage = inside.any(0).to(torch::kFloat64).mean().item<double>();
  return {density, coverage};
}

std::pair<double, double> frechet_distance_ci(const Tensor& a, const Tensor& b, int reps,
                                              uint64_t seed) {
  std::vector<double> v;
  auto gen = at::detail::createCPUGenerator(seed);
  for (int r = 0; r < reps; ++r) {
    auto ia = torch::randint(a.size(0), {a.size(0)}, gen, torch::kInt64);
    auto ib = torch::randint(b.size(0), {b.size(0)}, gen, torch::kInt64);
    v.push_back(frechet_distance(a.index_select(0, ia), b.index_select(0, ib)));
  }
  std::sort(v.begin(), v.end());
  if (v.empty()) return {std::nan(""), std::nan("")};
  return {v[static_cast<size_t>(0.025 * (v.size() - 1))],
          v[static_cast<size_t>(0.975 * (v.size() - 1))]};
}

std::pair<double, double> knn_precision_recall(const Tensor& real0, const Tensor& fake0, int k) {
  auto real = real0.to(torch::kFloat64), fake = fake0.to(torch::kFloat64);
  if (real.size(0) <= k || fake.size(0) <= k) return {std::nan(""), std::nan("")};
  double precision = coverage_fraction(fake, real, kth_nn_radius(real, k));
  double recall = coverage_fraction(real, fake, kth_nn_radius(fake, k));
  return {precision, recall};
}

std::pair<std::vector<int64_t>, std::vector<double>> nearest_rows(const Tensor& q,
                                                                  const Tensor& ref,
                                                                  bool exclude_self) {
  std::vector<int64_t> idx;
  std::vector<double> dist;
  auto r = ref.to(torch::kFloat64);
  for (int64_t s = 0; s < q.size(0); s += 256) {
    int64_t e = std::min(q.size(0), s + 256);
    auto d = pairwise_dist(q.slice(0, s, e).to(torch::kFloat64), r);
    if (exclude_self)
      for (int64_t i = s; i < e; ++i)
        if (i < d.size(1)) d[i - s][i] = std::numeric_limits<double>::infinity();
    auto [v, ix] = d.min(1);
    for (int64_t i = 0; i < v.size(0); ++i) {
      dist.push_back(v[i].item<double>());
      idx.push_back(ix[i].item<int64_t>());
    }
  }
  return {idx, dist};
}

namespace {
Tensor pixel_rows(const LabeledSet& s) {  // [N, S*S*3] in [0,1]
  return torch::from_blob(const_cast<uint8_t*>(s.pixels.data()), {s.count(), s.size * s.size * 3},
                          torch::kUInt8)
             .to(torch::kFloat32) /
         255.0;
}
double percentile(std::vector<double> v, double p) {
  if (v.empty()) return std::nan("");
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1)))];
}

// Agreement between the concepts a caption asked for and what the image shows.
struct Adherence {
  int n = 0, asym_exact = 0;
  double colour_tp = 0, colour_fp = 0, colour_fn = 0, count_abs_diff = 0, border_abs_diff = 0;
  void add(const nlohmann::json& asked, const Measurements& m) {
    if (!m.ok || asked.is_null()) return;
    ++n;
    asym_exact += asked.value("asymmetry", -9) == m.asymmetry;
    border_abs_diff += std::abs(asked.value("border", 0) - m.border);
    count_abs_diff += std::abs(asked.value("colour_count", 0) - m.colour_count);
    std::set<std::string> want, got;
    for (auto& c : asked.value("colours", nlohmann::json::array()))
      want.insert(c.get<std::string>());
    const nlohmann::json mj = m.to_json();  // keep the temporary alive for the loop
    for (auto& c : mj["colours"]) got.insert(c.get<std::string>());
    for (auto& c : got) (want.count(c) ? colour_tp : colour_fp) += 1;
    for (auto& c : want) colour_fn += !got.count(c);
  }
  nlohmann::json to_json() const {
    double f1 = colour_tp > 0 ? 2 * colour_tp / (2 * colour_tp + colour_fp + colour_fn) : 0;
    return {{"n", n},
            {"asymmetry_exact", n ? double(asym_exact) / n : 0},
            {"colour_f1", f1},
            {"asked_colour_presence",
             colour_tp + colour_fn > 0 ? colour_tp / (colour_tp + colour_fn) : 0.0},
            {"colour_count_mae", n ? count_abs_diff / n : 0},
            {"border_mae", n ? border_abs_diff / n : 0}};
  }
};
Measurements measure_rgb(const LabeledSet& s, int64_t i) {
  cv::Mat rgb(s.size, s.size, CV_8UC3, const_cast<uint8_t*>(s.image(i)));
  return measure_lesion(rgb.clone(), cv::Mat());
}
}  // namespace

// Diversity as mean MS-SSIM of image pairs (lower = more varied): pairs of one diagnosis,
// synthetic next to real training images (the real pairs are of different lesions, the natural
// spread of a class), and pairs sharing one prompt where the synthetic set repeats prompts.
static nlohmann::json diversity(const AuditInputs& in, const LabeledSet& sy, const LabeledSet& tr) {
  constexpr int kPairs = 100;
  std::map<std::string, std::pair<std::string, std::string>> dx_prompt;  // id -> (dx, prompt)
  for (auto& j : in.manifest)
    dx_prompt[j.value("id", "")] = {j.value("dx", ""), j.value("prompt", "")};
  std::map<std::string, std::vector<const uint8_t*>> syn_dx, real_dx, by_prompt;
  for (int64_t i = 0; i < sy.count(); ++i) {
    auto it = dx_prompt.find(sy.ids[i]);
    if (it == dx_prompt.end()) continue;
    if (!it->second.first.empty()) syn_dx[it->second.first].push_back(sy.image(i));
    if (!it->second.second.empty()) by_prompt[it->second.second].push_back(sy.image(i));
  }
  for (int64_t i = 0; i < tr.count(); ++i) {
    auto c = in.real_captions.find(tr.ids[i]);
    if (c != in.real_captions.end() && c->second.contains("dx"))
      real_dx[c->second["dx"].get<std::string>()].push_back(tr.image(i));
  }
  nlohmann::json by_dx = nlohmann::json::object();
  double s_sum = 0, r_sum = 0;
  int n_both = 0;
  for (auto& [dx, v] : syn_dx) {
    if (v.size() < 2) continue;
    const double s = mean_pairwise_ms_ssim(v, sy.size, kPairs, 21);
    auto r = real_dx.find(dx);
    const double rv =
        r != real_dx.end() ? mean_pairwise_ms_ssim(r->second, tr.size, kPairs, 22) : std::nan("");
    by_dx[dx] = {{"synthetic", s},
                 {"real_train", std::isnan(rv) ? nlohmann::json(nullptr) : nlohmann::json(rv)},
                 {"synthetic_images", v.size()}};
    if (!std::isnan(rv)) {
      s_sum += s;
      r_sum += rv;
      ++n_both;
    }
  }
  double p_sum = 0;
  int n_prompt = 0;
  for (auto& [p, v] : by_prompt)
    if (v.size() >= 2 && n_prompt < 50) {
      p_sum += mean_pairwise_ms_ssim(v, sy.size, kPairs, 23);
      ++n_prompt;
    }
  auto num = [](double v, int n) { return n ? nlohmann::json(v / n) : nlohmann::json(nullptr); };
  return {{"metric", "mean MS-SSIM of image pairs (1 = identical; lower = more varied)"},
          {"synthetic_same_dx", num(s_sum, n_both)},
          {"real_train_same_dx", num(r_sum, n_both)},
          {"by_dx", by_dx},
          {"synthetic_same_prompt", num(p_sum, n_prompt)},
          {"prompts_with_repeats", n_prompt}};
}

namespace {
// A seeded random order of n rows (the audit's subsets: sets are stored grouped by dx).
torch::Tensor seeded_permutation(int64_t n, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  return torch::randperm(n, gen, torch::kInt64);
}
}  // namespace

torch::Tensor floor_subset(int64_t total, int64_t n) {
  return seeded_permutation(total, 13).slice(0, 0, std::min(total, n));
}

FdDraws fd_draws(const torch::Tensor& synthetic, const torch::Tensor& test,
                 const torch::Tensor& train, int64_t size, uint64_t seed) {
  FdDraws d;
  d.size = size;
  if (size < 2) return d;
  const int64_t k = std::min(synthetic.size(0), train.size(0)) / size;
  if (k < 2) return d;
  auto p_sy = seeded_permutation(synthetic.size(0), seed);
  auto p_tr = seeded_permutation(train.size(0), seed + 1);
  for (int64_t i = 0; i < k; ++i) {
    auto rows = [&](const torch::Tensor& perm) { return perm.slice(0, i * size, (i + 1) * size); };
    d.synthetic.push_back(frechet_parts(synthetic.index_select(0, rows(p_sy)), test).total());
    d.floor.push_back(frechet_parts(train.index_select(0, rows(p_tr)), test).total());
  }
  return d;
}

nlohmann::json FdDraws::to_json() const {
  if (synthetic.empty()) return nullptr;
  auto [ms, ss] = mean_sd(synthetic);
  auto [mf, sf] = mean_sd(floor);
  return {{"size", size},
          {"draws", synthetic.size()},
          {"synthetic", synthetic},
          {"synthetic_mean", ms},
          {"synthetic_sd", ss},
          {"floor", floor},
          {"floor_mean", mf},
          {"floor_sd", sf},
          {"ratio", mf > 0 ? nlohmann::json(ms / mf) : nlohmann::json(nullptr)}};
}

nlohmann::json run_audit(const AuditInputs& in) {
  nlohmann::json out;
  const auto& tr = *in.real_train;
  const auto& te = *in.real_test;
  const auto& sy = *in.synthetic;
  // Stages: 3 feature passes, distances, CAS, memorisation, concepts, diversity.
  Progress prog("audit", 8, "stage");
  auto f_tr = in.features(tr.pixels.data(), tr.count(), tr.size);
  prog.update(1, "features of the real training images");
  auto f_te = in.features(te.pixels.data(), te.count(), te.size);
  prog.update(2, "features of the real test images");
  auto f_sy = in.features(sy.pixels.data(), sy.count(), sy.size);
  prog.update(3, "features of the synthetic images");
  // Fidelity: FD to the real test images, with the real-train vs real-test FD as the floor.
  // The floor uses as many real training images as there are synthetic ones (FD is biased
  // upward for small sets), with bootstrap 95% intervals over both sides.
  // A seeded random subset: the training split is stored in metadata order (grouped by dx).
  auto f_tr_n = f_tr.index_select(0, floor_subset(f_tr.size(0), f_sy.size(0)));
  auto ci_sy = frechet_distance_ci(f_sy, f_te, in.bootstrap, 11);
  auto ci_tr = frechet_distance_ci(f_tr_n, f_te, in.bootstrap, 12);
  const FrechetParts p_sy = frechet_parts(f_sy, f_te), p_tr = frechet_parts(f_tr_n, f_te);
  out["fd"] = {{"synthetic_vs_real_test", p_sy.total()},
               {"synthetic_vs_real_test_ci", {ci_sy.first, ci_sy.second}},
               {"synthetic_vs_real_test_parts", p_sy.to_json()},
               {"real_train_vs_real_test", p_tr.total()},
               {"real_train_vs_real_test_parts", p_tr.to_json()},
               {"real_train_vs_real_test_ci", {ci_tr.first, ci_tr.second}},
               {"real_train_images", f_tr_n.size(0)},
               {"feature", in.feature_name}};
  // The same measurement over disjoint draws of in.draw_size images, with its spread.
  out["fd"]["draws"] = fd_draws(f_sy, f_te, f_tr, in.draw_size, 21).to_json();
  // The same FD with the real images weighted per diagnosis to the synthetic set's mix: a
  // label-balanced set differs from the real test split by its class mix alone, which the plain
  // FD counts as infidelity.
  {
    std::map<std::string, std::string> syn_dx;
    for (auto& j : in.manifest) syn_dx[j.value("id", "")] = j.value("dx", "");
    auto dx_of = [&](const LabeledSet& s, bool synthetic) {
      std::vector<std::string> v;
      for (int64_t i = 0; i < s.count(); ++i) {
        std::string d;
        if (synthetic) {
          auto it = syn_dx.find(s.ids[i]);
          if (it != syn_dx.end()) d = it->second;
        } else {
          auto it = in.real_captions.find(s.ids[i]);
          if (it != in.real_captions.end()) d = it->second.value("dx", "");
        }
        if (d.empty()) return std::vector<std::string>{};
        v.push_back(d);
      }
      return v;
    };
    auto d_sy = dx_of(sy, true), d_te = dx_of(te, false), d_tr_all = dx_of(tr, false);
    nlohmann::json mm = nullptr;
    if (!d_sy.empty() && !d_te.empty() && !d_tr_all.empty()) {
      std::vector<std::string> d_tr;
      auto idx = floor_subset(f_tr.size(0), f_sy.size(0));
      for (int64_t k = 0; k < idx.size(0); ++k) d_tr.push_back(d_tr_all[idx[k].item<int64_t>()]);
      auto w_te = mix_weights(d_te, d_sy), w_tr = mix_weights(d_tr, d_sy);
      if (!w_te.empty() && !w_tr.empty()) {
        auto wt = torch::tensor(w_te, torch::kFloat64), wr = torch::tensor(w_tr, torch::kFloat64);
        const FrechetParts m_sy = frechet_parts(f_sy, f_te, Tensor(), wt),
                           m_tr = frechet_parts(f_tr_n, f_te, wr, wt);
        mm = {{"synthetic_vs_real_test", m_sy.total()},
              {"synthetic_vs_real_test_parts", m_sy.to_json()},
              {"real_train_vs_real_test", m_tr.total()},
              {"real_train_vs_real_test_parts", m_tr.to_json()}};
      } else {
        mm = {{"unavailable", "a diagnosis of the synthetic set is missing from the real images"}};
      }
      mm["dx_mix"] = {{"synthetic", label_shares(d_sy)}, {"real_test", label_shares(d_te)}};
    }
    out["fd"]["mix_matched"] = mm;
  }
  auto [dens, cov] = density_coverage(f_te, f_sy, 5);
  auto [dens0, cov0] = density_coverage(f_te, f_tr_n, 5);
  out["density_coverage"] = {{"density", dens},
                             {"coverage", cov},
                             {"k", 5},
                             {"real_train_density", dens0},
                             {"real_train_coverage", cov0}};
  auto [prec, rec] = knn_precision_recall(f_te, f_sy, 3);
  auto [prec0, rec0] = knn_precision_recall(f_te, f_tr_n, 3);
  out["precision_recall"] = {{"precision", prec},
                             {"recall", rec},
                             {"k", 3},
                             {"real_train_precision", prec0},
                             {"real_train_recall", rec0}};
  prog.update(4, "FD, density/coverage, precision/recall");
  // Classification accuracy score: the real-data classifier labels the synthetic images.
  auto p = in.p_malignant(sy);
  double thr = in.threshold;
  auto m = binary_metrics(p, sy.labels, thr);
  out["cas"] = {{"auc", roc_auc(p, sy.labels)},
                {"accuracy", m.accuracy},
                {"balanced_accuracy", m.balanced_accuracy},
                {"sensitivity", m.sensitivity},
                {"specificity", m.specificity},
                {"threshold", thr},
                {"n", sy.count()}};
  // Memorisation: nearest real training image of each synthetic one. Threshold: the 1st
  // percentile of real-train nearest-neighbour distances (two different real images).
  prog.update(5, "CAS");
  nlohmann::json mem;
  auto px_tr = pixel_rows(tr), px_sy = pixel_rows(sy);
  for (std::string space : {"pixel", "feature"}) {
    const Tensor& a = space == "pixel" ? px_sy : f_sy;
    const Tensor& b = space == "pixel" ? px_tr : f_tr;
    auto [nn_idx, nn_d] = nearest_rows(a, b);
    int64_t n_ref = std::min<int64_t>(b.size(0), 1000);
    auto [ri, rd] = nearest_rows(b.slice(0, 0, n_ref), b, true);
    double thr_d = percentile(rd, 0.01);
    int64_t flagged = 0;
    for (double d : nn_d) flagged += d < thr_d;
    nlohmann::json pairs = nlohmann::json::array();
    std::vector<size_t> order(nn_d.size());
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](size_t x, size_t y) { return nn_d[x] < nn_d[y]; });
    for (size_t k = 0; k < order.size() && k < static_cast<size_t>(in.closest_pairs); ++k)
      pairs.push_back({{"synthetic", sy.ids[order[k]]},
                       {"real", tr.ids[nn_idx[order[k]]]},
                       {"distance", nn_d[order[k]]},
                       {"synthetic_index", order[k]},
                       {"real_index", nn_idx[order[k]]}});
    mem[space] = {{"threshold_p01_real_nn", thr_d},
                  {"flagged", flagged},
                  {"flagged_fraction", nn_d.empty() ? 0.0 : double(flagged) / nn_d.size()},
                  {"median_nn_distance", percentile(nn_d, 0.5)},
                  {"real_median_nn_distance", percentile(rd, 0.5)},
                  {"closest_pairs", pairs}};
  }
  out["memorisation"] = mem;
  prog.update(6, "memorisation");
  // Concept adherence, with real test images measured the same way (64 px, automatic mask)
  // against their own captions as the reference for measurement noise.
  std::map<std::string, const nlohmann::json*> asked_of;
  for (auto& j : in.manifest)
    if (j.contains("asked")) asked_of[j.value("id", "")] = &j["asked"];
  // A seeded random subset of each side, not the first images: sets are stored grouped by dx
  // (synthetic ids follow the plan's cells, the prepared splits the metadata), so the first 300 of
  // 2,000 synthetic images were akiec, bcc and bkl only.
  Adherence syn, ref;
  auto order = [](int64_t n, uint64_t seed) {
    auto p = seeded_permutation(n, seed);
    return std::vector<int64_t>(p.data_ptr<int64_t>(), p.data_ptr<int64_t>() + n);
  };
  const auto sy_order = order(sy.count(), 17), te_order = order(te.count(), 18);
  for (int64_t q = 0, k = 0; q < sy.count() && k < in.max_concept_images; ++q) {
    const int64_t i = sy_order[q];
    auto it = asked_of.find(sy.ids[i]);
    if (it == asked_of.end()) continue;
    syn.add(*it->second, measure_rgb(sy, i));
    ++k;
  }
  for (int64_t q = 0, k = 0; q < te.count() && k < in.max_concept_images; ++q) {
    const int64_t i = te_order[q];
    auto it = in.real_captions.find(te.ids[i]);
    if (it == in.real_captions.end() || !it->second.contains("measured")) continue;
    auto& mj = it->second["measured"];
    nlohmann::json asked = {{"asymmetry", mj.value("asymmetry", -1)},
                            {"border", mj.value("border", 0)},
                            {"colours", mj.value("colours", nlohmann::json::array())},
                            {"colour_count", mj.value("colour_count", 0)}};
    ref.add(asked, measure_rgb(te, i));
    ++k;
  }
  out["concept_adherence"] = {{"synthetic_vs_prompt", syn.to_json()},
                              {"real_64px_vs_own_caption", ref.to_json()}};
  prog.update(7, "concept adherence");
  out["diversity"] = diversity(in, sy, tr);
  prog.finish("diversity");
  return out;
}

}  // namespace lf
