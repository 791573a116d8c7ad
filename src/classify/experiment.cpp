#include "classify/experiment.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <sstream>
#include <tuple>

#include "lesionflow/captions.h"
#include "lesionflow/io.h"
#include "lesionflow/jsonl.h"
#include "lesionflow/log.h"
#include "lesionflow/metrics.h"
#include "lesionflow/rng.h"
#include "lesionflow/stop.h"

namespace lf {

Result<RealData> load_real_data(const std::string& dir, const std::string& splits,
                                const std::string& captions) {
  if (dir.empty())
    return Status::error("--data CACHE_DIR is required (make one with 'lesionflow data prepare')");
  if (splits.empty())
    return Status::error("--splits CSV is required (make one with 'lesionflow data split')");
  RealData d;
  LF_ASSIGN_OR_RETURN(d.ps, load_prepared(dir));
  LF_ASSIGN_OR_RETURN(d.train, select_split(d.ps.records, splits, "train"));
  LF_ASSIGN_OR_RETURN(d.val, select_split(d.ps.records, splits, "val"));
  LF_ASSIGN_OR_RETURN(d.test, select_split(d.ps.records, splits, "test"));
  if (d.train.empty() || d.val.empty() || d.test.empty())
    return Status::error(splits + ": needs non-empty train, val and test splits for " + dir);
  LF_ASSIGN_OR_RETURN(d.captions, read_caption_file(captions));
  return d;
}

Result<NamedSet> load_test_dataset(const std::string& spec, int size) {
  LF_ASSIGN_OR_RETURN(Dataset ds, load_dataset(spec));
  PrepareConfig pc;
  pc.size = size;
  PrepareStats st;
  LF_ASSIGN_OR_RETURN(PreparedSet ps, prepare(ds, pc, &st));
  if (st.skipped) log_warn(spec + ": " + std::to_string(st.skipped) + " unreadable images skipped");
  std::vector<size_t> all(ps.records.size());
  std::iota(all.begin(), all.end(), 0);
  NamedSet n{spec, labeled_from_prepared(ps, all, nullptr)};
  if (n.set.count() == 0) return Status::error(spec + ": no images with a benign/malignant label");
  return n;
}

namespace {
// A metric as JSON: NaN (undefined, e.g. a class absent from the test set) as null.
nlohmann::json json_number(double v) {
  return std::isnan(v) ? nlohmann::json(nullptr) : nlohmann::json(v);
}
// Each class's recall, {dx: recall or null}.
nlohmann::json recall_json(const MulticlassMetrics& m, const std::vector<std::string>& classes) {
  nlohmann::json j = nlohmann::json::object();
  for (size_t k = 0; k < classes.size(); ++k) j[classes[k]] = json_number(m.recall[k]);
  return j;
}
}  // namespace

std::vector<std::string> dx_classes(const RealData& real, std::vector<int>* malignant) {
  std::map<std::string, int> dx_label;
  for (size_t i : real.train)
    dx_label[real.ps.records[i].dx] =
        std::max(dx_label[real.ps.records[i].dx], real.ps.records[i].label);
  std::vector<std::string> classes;
  if (malignant) malignant->clear();
  for (auto& [dx, l] : dx_label) {
    classes.push_back(dx);
    if (malignant) malignant->push_back(l == 1);
  }
  return classes;
}

Status set_dx_classes(LabeledSet& set, const std::vector<std::string>& classes,
                      const std::string& what) {
  for (int64_t i = 0; i < set.count(); ++i) {
    auto g = set.groups[i].find("dx");
    if (g == set.groups[i].end() || g->second.empty())
      return Status::error("classify: " + what + " '" + set.ids[i] +
                           "' has no diagnosis (dx), which a dx classifier needs");
    set.cls[i] = dx_class_index(classes, g->second);
    if (set.cls[i] < 0) {
      std::string known;
      for (const auto& c : classes) known += (known.empty() ? "" : ", ") + c;
      return Status::error("classify: " + what + " '" + set.ids[i] + "' has dx '" + g->second +
                           "', not one of the classifier's classes (" + known + ")");
    }
  }
  return Status::ok_status();
}

Result<nlohmann::json> dx_evaluation(const torch::Tensor& prob, const LabeledSet& set,
                                     const std::vector<std::string>& classes) {
  const int K = static_cast<int>(classes.size());
  if (prob.dim() != 2 || prob.size(0) != set.count() || prob.size(1) != K)
    return Status::error("classify: dx probabilities are not [" + std::to_string(set.count()) +
                         ", " + std::to_string(K) + "]");
  auto am = prob.argmax(1).to(torch::kInt64).contiguous();
  std::vector<int> pred(am.data_ptr<int64_t>(), am.data_ptr<int64_t>() + am.numel());
  const MulticlassMetrics m = multiclass_metrics(pred, set.cls, K);
  nlohmann::json count = nlohmann::json::object();
  for (int k = 0; k < K; ++k) {
    int n = 0;
    for (int v : m.confusion[k]) n += v;
    count[classes[k]] = n;
  }
  return nlohmann::json{{"accuracy", json_number(m.accuracy)},
                        {"balanced_accuracy", json_number(m.balanced_accuracy)},
                        {"recall_per_class", recall_json(m, classes)},
                        {"n_per_class", count},
                        {"n", m.n},
                        {"confusion", {{"classes", classes}, {"matrix", m.confusion}}}};
}

std::string dx_probs_csv(const LabeledSet& set, const torch::Tensor& prob,
                         const std::vector<std::string>& classes) {
  std::string out = "id,dx";
  for (const auto& c : classes) out += ",p_" + c;
  out += "\n";
  auto p = prob.to(torch::kFloat64).contiguous();
  const double* d = p.data_ptr<double>();
  const int64_t K = static_cast<int64_t>(classes.size());
  char buf[32];
  for (int64_t i = 0; i < set.count(); ++i) {
    const int c = set.cls[i];
    out += set.ids[i] + "," + (c >= 0 && c < K ? classes[c] : std::string());
    for (int64_t k = 0; k < K; ++k) {
      std::snprintf(buf, sizeof buf, ",%.9g", d[i * K + k]);
      out += buf;
    }
    out += "\n";
  }
  return out;
}

namespace {
nlohmann::json calibration_bins_json(const Calibration& c) {
  nlohmann::json bins = nlohmann::json::array();
  for (const auto& b : c.bins)
    bins.push_back({{"lo", b.lo},
                    {"hi", b.hi},
                    {"n", b.n},
                    {"mean_score", b.mean_score},
                    {"malignant_fraction", b.positive_fraction}});
  return bins;
}
}  // namespace

nlohmann::json platt_json(const std::optional<Platt>& p, const std::string& fitted_on) {
  if (!p) return nullptr;
  nlohmann::json j = {{"a", p->a}, {"b", p->b}};
  if (!fitted_on.empty()) j["fitted_on"] = fitted_on;
  return j;
}

std::string scores_csv(const LabeledSet& set, const std::vector<double>& scores,
                       const std::string& set_name, const std::optional<Platt>& platt,
                       bool header) {
  auto quoted = [](const std::string& v) {
    if (v.find_first_of(",\"\n") == std::string::npos) return v;
    std::string q = "\"";
    for (char c : v) q += c == '"' ? std::string("\"\"") : std::string(1, c);
    return q + "\"";
  };
  std::string csv;
  if (header)
    csv = std::string(set_name.empty() ? "" : "set,") + "id,label,score" +
          (platt ? ",p_calibrated" : "") + "\n";
  const std::string prefix = set_name.empty() ? "" : quoted(set_name) + ",";
  char buf[96];
  for (int64_t i = 0; i < set.count(); ++i) {
    std::snprintf(buf, sizeof buf, ",%d,%.9g", set.labels[i], scores[i]);
    csv += prefix + quoted(set.ids[i]) + buf;
    if (platt) {
      std::snprintf(buf, sizeof buf, ",%.9g", platt->apply(scores[i]));
      csv += buf;
    }
    csv += "\n";
  }
  return csv;
}

nlohmann::json by_dx_json(const std::vector<double>& s, const LabeledSet& set, double thr) {
  const double triage = threshold_at_sensitivity(s, set.labels, kTriageSensitivity);
  struct Acc {
    int64_t n = 0, positives = 0, at_threshold = 0, at_triage = 0;
    double score = 0;
  };
  std::map<std::string, Acc> by;
  for (int64_t i = 0; i < set.count(); ++i) {
    auto it = set.groups[i].find("dx");
    Acc& a = by[it == set.groups[i].end() || it->second.empty() ? "unknown" : it->second];
    a.n++;
    a.positives += set.labels[i] == 1;
    a.score += s[i];
    a.at_threshold += s[i] >= thr;
    a.at_triage += !std::isnan(triage) && s[i] >= triage;
  }
  nlohmann::json rows = nlohmann::json::array();
  for (auto& [dx, a] : by)
    rows.push_back({{"dx", dx},
                    {"n", a.n},
                    {"positives", a.positives},
                    {"mean_score", a.score / a.n},
                    {"called_malignant_at_threshold", double(a.at_threshold) / a.n},
                    {"called_malignant_at_triage",
                     std::isnan(triage) ? nlohmann::json(nullptr)
                                        : nlohmann::json(double(a.at_triage) / a.n)}});
  return {
      {"triage_threshold", std::isnan(triage) ? nlohmann::json(nullptr) : nlohmann::json(triage)},
      {"triage_sensitivity", kTriageSensitivity},
      {"rows", rows}};
}

nlohmann::json evaluation_json(const std::vector<double>& s, const LabeledSet& set, double thr,
                               uint64_t seed, const std::optional<Platt>& recalibration) {
  auto e = evaluate_binary(s, set.labels, thr, 1000, seed);
  auto iv = [](const Interval& i) {
    return nlohmann::json{{"value", i.value}, {"lo", i.lo}, {"hi", i.hi}};
  };
  nlohmann::json j = {{"n", e.n},
                      {"positives", e.positives},
                      {"threshold", thr},
                      {"auc", iv(e.auc)},
                      {"accuracy", iv(e.accuracy)},
                      {"balanced_accuracy", iv(e.balanced_accuracy)},
                      {"sensitivity", iv(e.sensitivity)},
                      {"specificity", iv(e.specificity)},
                      {"brier", iv(e.brier)},
                      {"ece", iv(e.ece)}};
  j["specificity_at_sensitivity"] = iv(e.specificity_at_sensitivity);
  j["specificity_at_sensitivity"]["target"] = kTriageSensitivity;
  j["sensitivity_at_specificity"] = iv(e.sensitivity_at_specificity);
  j["sensitivity_at_specificity"]["target"] = kTriageSpecificity;
  j["calibration_bins"] = calibration_bins_json(calibration(s, set.labels));
  j["metrics_version"] = kMetricsVersion;
  if (recalibration) {
    std::vector<double> r(s.size());
    for (size_t i = 0; i < s.size(); ++i) r[i] = recalibration->apply(s[i]);
    const Calibration c = calibration(r, set.labels);
    // Calibrated probabilities decide at 0.5 for the most correct answers: the accuracy a
    // classifier reporting plain accuracy (argmax) is compared by.
    const BinaryMetrics half = binary_metrics(r, set.labels, 0.5);
    j["recalibrated"] = {{"platt", platt_json(recalibration)},
                         {"brier", c.brier},
                         {"ece", c.ece},
                         {"accuracy", half.accuracy},
                         {"sensitivity", half.sensitivity},
                         {"specificity", half.specificity},
                         {"calibration_bins", calibration_bins_json(c)}};
  }
  j["by_dx"] = by_dx_json(s, set, thr);
  auto roc = roc_curve(s, set.labels);
  nlohmann::json pts = nlohmann::json::array();
  size_t stride = std::max<size_t>(1, roc.size() / 100);
  for (size_t i = 0; i < roc.size(); i += stride) pts.push_back({roc[i].first, roc[i].second});
  pts.push_back({roc.back().first, roc.back().second});
  j["roc"] = pts;
  nlohmann::json groups = nlohmann::json::array();
  const GroupMetrics* worst = nullptr;
  std::vector<GroupMetrics> all;
  for (std::string attr : {"sex", "age", "site", "skin"}) {
    std::vector<std::string> g;
    for (auto& m : set.groups) g.push_back(m.count(attr) ? m.at(attr) : "unknown");
    auto gm = group_metrics(s, set.labels, thr, attr, g);
    all.insert(all.end(), gm.begin(), gm.end());
  }
  for (auto& gm : all)
    groups.push_back(
        {{"attribute", gm.attribute},
         {"group", gm.group},
         {"n", gm.n},
         {"positives", gm.positives},
         {"auc", std::isnan(gm.auc) ? nlohmann::json(nullptr) : nlohmann::json(gm.auc)},
         {"balanced_accuracy", gm.balanced_accuracy},
         {"ranked", gm.ranked}});
  worst = worst_group(all);
  j["groups"] = groups;
  j["worst_group_rule"] = "ranked groups only: >= " + std::to_string(kGroupMinImages) +
                          " images with >= " + std::to_string(kGroupMinPerClass) +
                          " malignant and >= " + std::to_string(kGroupMinPerClass) + " benign";
  if (worst)
    j["worst_group"] = {{"attribute", worst->attribute},
                        {"group", worst->group},
                        {"n", worst->n},
                        {"balanced_accuracy", worst->balanced_accuracy}};
  return j;
}

const std::vector<std::string>& classifier_arms() {
  static const std::vector<std::string> arms = {"real", "real+synthetic", "real+filtered",
                                                "synthetic-then-real", "synthetic"};
  return arms;
}

std::vector<int64_t> contradicted_labels(const std::vector<double>& p_malignant,
                                         const std::vector<int>& labels, double confidence) {
  std::vector<int64_t> out;
  for (size_t i = 0; i < labels.size() && i < p_malignant.size(); ++i)
    if ((labels[i] == 0 && p_malignant[i] > confidence) ||
        (labels[i] == 1 && p_malignant[i] < 1 - confidence))
      out.push_back(static_cast<int64_t>(i));
  return out;
}

namespace {

std::optional<Platt> platt_from_json(const nlohmann::json& j) {
  if (!j.is_object() || !j.contains("a") || !j.contains("b")) return std::nullopt;
  return Platt{j["a"].get<double>(), j["b"].get<double>()};
}

// The scores of `set`'s images, in its order, from a scores CSV (id, score).
Result<std::vector<double>> scores_in_order(const std::string& csv, const LabeledSet& set) {
  LF_ASSIGN_OR_RETURN(CsvTable t, read_csv(csv));
  std::map<std::string, double> by_id;
  const int ci = t.column("id"), cs = t.column("score");
  if (ci < 0 || cs < 0) return Status::error(csv + ": needs columns id and score");
  for (auto& row : t.rows) by_id[row[ci]] = std::atof(row[cs].c_str());
  std::vector<double> scores;
  for (int64_t i = 0; i < set.count(); ++i) {
    auto it = by_id.find(set.ids[i]);
    if (it == by_id.end()) return Status::error(csv + ": no score for image " + set.ids[i]);
    scores.push_back(it->second);
  }
  return scores;
}

// A cached result from before the current metrics (a metrics_version below kMetricsVersion: the
// worst-group rule, the operating points, calibration and its Platt recalibration): its test
// metrics, and those of the extra test sets
// given now, re-evaluated from the saved scores (AUCs unchanged) and written back, so cells mixing
// old and new jobs report alike. Current results, dx classifiers and results without scores are
// left.
Status reevaluate_old_result(const ClsJob& job, const RealData& real,
                             const std::vector<NamedSet>& extra_tests,
                             const std::string& result_path, nlohmann::json& cached) {
  const std::string scores_csv = job.train.out + "/test_scores.csv";
  if (!cached.contains("test") || cached["test"].value("metrics_version", 0) >= kMetricsVersion ||
      !file_exists(scores_csv) || !job.model.classes.empty())
    return Status::ok_status();
  const double thr = cached.value("threshold", 0.5);
  // The Platt scaling: the result's, else fitted now on the validation scores of the job's
  // best weights (as training does), else none.
  std::optional<Platt> platt = platt_from_json(cached.value("platt", nlohmann::json()));
  const std::string best = job.train.out + "/best.safetensors";
  if (!platt && file_exists(best) && !real.val.empty()) {
    LF_ASSIGN_OR_RETURN(LoadedClassifier lc, load_classifier(best));
    lc.model->to(job.train.device);
    auto val = labeled_from_prepared(real.ps, real.val, &real.captions);
    platt = fit_platt(predict_malignant(lc.model, val), val.labels);
    cached["platt"] = platt_json(platt, "validation");
  }
  auto test = labeled_from_prepared(real.ps, real.test, &real.captions);
  LF_ASSIGN_OR_RETURN(std::vector<double> scores, scores_in_order(scores_csv, test));
  cached["test"] = evaluation_json(scores, test, thr, job.seed, platt);
  if (cached.contains("extra_test_scores"))
    for (const auto& t : extra_tests) {
      if (!cached["extra_test_scores"].contains(t.name)) continue;
      const std::string csv = cached["extra_test_scores"][t.name].get<std::string>();
      if (!file_exists(csv)) continue;
      LF_ASSIGN_OR_RETURN(std::vector<double> sc, scores_in_order(csv, t.set));
      cached["extra_tests"][t.name] = evaluation_json(sc, t.set, thr, job.seed, platt);
    }
  LF_RETURN_IF_ERROR(write_file_atomic(result_path, cached.dump(2) + "\n"));
  log_info(result_path + ": re-evaluated with the current metrics");
  return Status::ok_status();
}

}  // namespace

Result<nlohmann::json> run_cls_job(const ClsJob& job, const RealData& real,
                                   const LabeledSet* synthetic,
                                   const std::vector<NamedSet>& extra_tests) {
  const std::string result_path = job.train.out + "/result.json";
  if (file_exists(result_path)) {
    LF_ASSIGN_OR_RETURN(std::string txt, read_file(result_path));
    nlohmann::json cached;
    try {
      cached = nlohmann::json::parse(txt);
    } catch (const std::exception& e) {
      log_warn(result_path + ": unreadable (" + e.what() + "); running the job again");
    }
    if (!cached.is_null()) {
      // A result is reused for the same kind of model only: a config that now asks for another
      // architecture or other classes (binary vs the diagnosis task) must not read old results.
      const nlohmann::json want = job.model.to_json();
      if (cached.contains("model"))
        for (const char* k : {"arch", "classes"})  // (results from before a key: not checked)
          if (cached["model"].contains(k) && cached["model"][k] != want[k])
            return Status::error(result_path + " was trained with model " + k + " " +
                                 cached["model"].value(k, nlohmann::json()).dump() +
                                 ", this job asks for " + want[k].dump() +
                                 "; give the experiment another out directory (or remove " +
                                 job.train.out + ")");
      LF_RETURN_IF_ERROR(reevaluate_old_result(job, real, extra_tests, result_path, cached));
      return cached;
    }
  }
  const auto& arms = classifier_arms();
  if (std::find(arms.begin(), arms.end(), job.arm) == arms.end()) {
    std::string known;
    for (const auto& a : arms) known += (known.empty() ? "" : ", ") + a;
    return Status::error("classify: arm must be one of " + known + " (got '" + job.arm + "')");
  }
  if (job.arm != "real" && (!synthetic || synthetic->count() == 0))
    return Status::error("classify: arm '" + job.arm + "' needs a synthetic set");
  // Real training subset: scarcity-sampled at the pool's malignant ratio, one image per lesion
  // first.
  std::vector<size_t> real_idx = real.train;
  if (job.real_size > 0 && job.real_size < static_cast<int64_t>(real.train.size())) {
    LF_ASSIGN_OR_RETURN(real_idx,
                        scarcity_subset(real.ps.records, real.train, job.real_size, -1, job.seed));
  }
  LabeledSet train;
  train.size = real.ps.size;
  const std::vector<std::string>* classes =
      job.model.classes.empty() ? nullptr : &job.model.classes;
  LabeledSet syn_dx;  // a dx classifier: the synthetic images with their diagnosis's class
  if (classes && synthetic) {
    syn_dx = *synthetic;
    LF_RETURN_IF_ERROR(set_dx_classes(syn_dx, *classes, "synthetic image"));
    synthetic = &syn_dx;
  }
  if (job.arm != "synthetic")
    train.append(labeled_from_prepared(real.ps, real_idx, &real.captions, 1.0f, classes));
  int64_t n_syn = 0;
  // A seeded subset of the synthetic set (all of it when want >= its size).
  auto synthetic_subset = [&](int64_t want) {
    want = std::min<int64_t>(want, synthetic->count());
    std::vector<int64_t> idx(synthetic->count());
    std::iota(idx.begin(), idx.end(), 0);
    std::mt19937_64 rng(derive_seed(job.seed, Stream::kClsSubset));
    std::shuffle(idx.begin(), idx.end(), rng);
    idx.resize(want);
    return synthetic->subset(idx);
  };
  LabeledSet kept;  // real+filtered: the synthetic images the real-only classifier accepts
  int64_t n_dropped = 0;
  if (job.arm == "real+filtered") {
    if (job.filter_with.empty())
      return Status::error(
          "classify: arm real+filtered needs a real-only classifier to filter with");
    const std::string fpath = job.filter_with + "/best.safetensors";
    LF_ASSIGN_OR_RETURN(LoadedClassifier fc, load_classifier(fpath));
    const std::vector<double> p = predict_malignant(fc.model, *synthetic);
    const auto drop = contradicted_labels(p, synthetic->labels, job.filter_confidence);
    std::vector<int64_t> keep;
    std::string lines;
    for (int64_t i = 0, k = 0; i < synthetic->count(); ++i) {
      if (k < static_cast<int64_t>(drop.size()) && drop[k] == i) {
        lines += nlohmann::json{{"id", synthetic->ids[i]},
                                {"label", synthetic->labels[i]},
                                {"p_malignant", p[i]},
                                {"reason", std::string("label contradicted by ") + fpath +
                                               " at confidence " +
                                               std::to_string(job.filter_confidence)}}
                     .dump() +
                 "\n";
        ++k;
      } else {
        keep.push_back(i);
      }
    }
    if (is_main_rank(job.train.dist))
      LF_RETURN_IF_ERROR(write_file_atomic(job.train.out + "/filtered.jsonl", lines));
    log_info("classify real+filtered: dropped " + std::to_string(drop.size()) + " of " +
             std::to_string(synthetic->count()) + " synthetic images (" + job.train.out +
             "/filtered.jsonl)");
    kept = synthetic->subset(keep);
    synthetic = &kept;
    n_dropped = static_cast<int64_t>(drop.size());
  }
  if (job.arm == "real+synthetic" || job.arm == "real+filtered") {
    if (job.synthetic_size > 0 && job.synthetic_size < synthetic->count()) {
      train.append(synthetic_subset(job.synthetic_size), static_cast<float>(job.synthetic_weight));
      n_syn = job.synthetic_size;
    } else {
      train.append(*synthetic, static_cast<float>(job.synthetic_weight));
      n_syn = synthetic->count();
    }
  } else if (job.arm == "synthetic") {
    int64_t want =
        job.synthetic_size > 0 ? job.synthetic_size : static_cast<int64_t>(real_idx.size());
    n_syn = std::min<int64_t>(want, synthetic->count());
    train.append(synthetic_subset(want));
  }
  LabeledSet pretrain_set;  // synthetic-then-real: phase 1 trains on these alone
  if (job.arm == "synthetic-then-real") {
    n_syn = job.synthetic_size > 0 ? std::min<int64_t>(job.synthetic_size, synthetic->count())
                                   : synthetic->count();
    pretrain_set = synthetic_subset(n_syn);
  }
  if (synthetic && synthetic->size != train.size)
    return Status::error("classify: synthetic images are " + std::to_string(synthetic->size) +
                         "px, real " + std::to_string(train.size) + "px");
  auto val = labeled_from_prepared(real.ps, real.val, &real.captions, 1.0f, classes);
  auto test = labeled_from_prepared(real.ps, real.test, &real.captions, 1.0f, classes);
  torch::manual_seed(job.seed);
  ClassifierConfig mc = job.model;
  mc.image_size = train.size;
  Classifier model(mc);
  ClsTrainConfig tc = job.train;
  tc.seed = job.seed;
  if (job.arm == "synthetic-then-real") {
    // Phase 1 in DIR/pretrain (resumable; early stopping on the real validation split), then
    // phase 2 starts from its best weights and trains on the real images in DIR. A phase-2
    // resume loads its own last weights over this start.
    ClsTrainConfig pc = tc;
    pc.out = tc.out + "/pretrain";
    const std::string done = pc.out + "/done";
    if (!file_exists(done)) {
      torch::manual_seed(job.seed);
      Classifier pm(mc);
      log_info("classify synthetic-then-real: pretraining on " + std::to_string(n_syn) +
               " synthetic images -> " + pc.out);
      LF_RETURN_IF_ERROR(train_classifier(pc, pm, pretrain_set, val).status());
      if (stop_requested()) return Status::error("classify: stopped during pretraining");
      if (is_main_rank(tc.dist)) LF_RETURN_IF_ERROR(write_file_atomic(done, "ok\n"));
    }
    LF_ASSIGN_OR_RETURN(SafeTensors w, load_safetensors(pc.out + "/best.safetensors"));
    LF_RETURN_IF_ERROR(load_classifier_weights(w, model, pc.out + "/best.safetensors"));
  }
  log_info("classify " + job.arm + " real " +
           std::to_string(job.arm == "synthetic" ? 0 : real_idx.size()) + " synthetic " +
           std::to_string(n_syn) + " seed " + std::to_string(job.seed) + " (" + arch_name(mc.arch) +
           ") -> " + tc.out);
  LF_ASSIGN_OR_RETURN(ClsTrainResult tr, train_classifier(tc, model, train, val));
  if (!is_main_rank(tc.dist))  // the evaluation and the files are rank 0's
    return nlohmann::json{{"rank", tc.dist->rank()},
                          {"world_size", tc.dist->world()},
                          {"epochs_run", tr.epochs_run},
                          {"train_seconds", tr.seconds},
                          {"train_images_per_second", tr.images_per_second}};
  nlohmann::json r = {
      {"arm", job.label.empty() ? job.arm : job.label},
      {"recipe", job.arm},
      {"real_size", job.arm == "synthetic" ? 0 : static_cast<int64_t>(real_idx.size())},
      {"requested_real_size", job.real_size},
      {"synthetic_size", n_syn},
      {"synthetic_ratio",
       job.synthetic_ratio > 0 ? nlohmann::json(job.synthetic_ratio) : nlohmann::json(nullptr)},
      {"seed", job.seed},
      {"arch", arch_name(mc.arch)},
      {"model", mc.to_json()},
      {"train", tc.to_json()},
      {"epochs_run", tr.epochs_run},
      {"best_epoch", tr.best_epoch},
      {tr.selected_on, tr.best_val},
      {"threshold", tr.threshold},
      {"platt", platt_json(tr.platt, "validation")},
      {"train_seconds", tr.seconds},
      {"train_images_per_second", tr.images_per_second}};
  if (job.arm == "real+filtered")
    r["filter"] = {{"with", job.filter_with + "/best.safetensors"},
                   {"confidence", job.filter_confidence},
                   {"synthetic_dropped", n_dropped},
                   {"dropped_list", job.train.out + "/filtered.jsonl"}};
  const std::vector<double> test_scores = predict_malignant(model, test);
  r["test"] = evaluation_json(test_scores, test, tr.threshold, job.seed, tr.platt);
  // Per-image scores, for paired comparisons between arms on the same test images.
  auto write_scores = [](const std::string& path, const LabeledSet& set,
                         const std::vector<double>& sc) {
    return write_file_atomic(path, scores_csv(set, sc));
  };
  LF_RETURN_IF_ERROR(write_scores(job.train.out + "/test_scores.csv", test, test_scores));
  r["test_scores"] = job.train.out + "/test_scores.csv";
  if (classes) {  // the diagnosis task: argmax over the classes, per-class recall, confusion
    const torch::Tensor prob = predict_proba(model, test.pixels.data(), test.count(), test.size);
    LF_ASSIGN_OR_RETURN(r["test_dx"], dx_evaluation(prob, test, *classes));
    const std::string path = job.train.out + "/test_dx_probs.csv";
    LF_RETURN_IF_ERROR(write_file_atomic(path, dx_probs_csv(test, prob, *classes)));
    r["test_dx_probs"] = path;
  }
  nlohmann::json extra = nlohmann::json::object(), extra_scores = nlohmann::json::object();
  for (size_t k = 0; k < extra_tests.size(); ++k) {
    const auto& t = extra_tests[k];
    const std::vector<double> sc = predict_malignant(model, t.set);
    extra[t.name] = evaluation_json(sc, t.set, tr.threshold, job.seed, tr.platt);
    const std::string path = job.train.out + "/test_scores_extra" + std::to_string(k) +
                             ".csv";  // in --test-dataset order
    LF_RETURN_IF_ERROR(write_scores(path, t.set, sc));
    extra_scores[t.name] = path;
  }
  r["extra_tests"] = extra;
  r["extra_test_scores"] = extra_scores;
  LF_RETURN_IF_ERROR(write_file_atomic(result_path, r.dump(2) + "\n"));
  return r;
}

namespace {
struct Scores {
  std::vector<std::string> ids;
  std::vector<int> labels;
  std::vector<double> scores;
};
Result<Scores> read_scores(const std::string& path) {
  LF_ASSIGN_OR_RETURN(std::string txt, read_file(path));
  Scores s;
  std::istringstream in(txt);
  std::string line;
  std::getline(in, line);  // header
  int row = 1;
  while (std::getline(in, line)) {
    ++row;
    if (line.empty()) continue;
    auto a = line.find(','), b = line.find(',', a + 1);
    if (a == std::string::npos || b == std::string::npos)
      return Status::error(path + ": line " + std::to_string(row) + " is not id,label,score");
    s.ids.push_back(line.substr(0, a));
    s.labels.push_back(std::stoi(line.substr(a + 1, b - a - 1)));
    s.scores.push_back(std::stod(line.substr(b + 1)));
  }
  return s;
}
// A dx job's test_dx_probs.csv: "id,dx,p_<class>..." (dx_probs_csv).
struct DxProbs {
  std::vector<std::string> ids, classes;
  std::vector<int> truth;              // index into classes, -1 for an unknown dx
  std::vector<std::vector<double>> p;  // [image][class]
};
Result<DxProbs> read_dx_probs(const std::string& path) {
  LF_ASSIGN_OR_RETURN(std::string txt, read_file(path));
  DxProbs d;
  std::istringstream in(txt);
  std::string line, cell;
  std::getline(in, line);
  {
    std::istringstream h(line);
    std::vector<std::string> cols;
    while (std::getline(h, cell, ',')) cols.push_back(cell);
    if (cols.size() < 3 || cols[0] != "id" || cols[1] != "dx")
      return Status::error(path + ": header is not id,dx,p_<class>...");
    for (size_t k = 2; k < cols.size(); ++k) {
      if (cols[k].rfind("p_", 0) != 0) return Status::error(path + ": column '" + cols[k] + "'");
      d.classes.push_back(cols[k].substr(2));
    }
  }
  int row = 1;
  while (std::getline(in, line)) {
    ++row;
    if (line.empty()) continue;
    std::istringstream r(line);
    std::vector<std::string> cols;
    while (std::getline(r, cell, ',')) cols.push_back(cell);
    if (line.back() == ',') cols.push_back("");
    if (cols.size() != d.classes.size() + 2)
      return Status::error(path + ": line " + std::to_string(row) + " has " +
                           std::to_string(cols.size()) + " fields, the header " +
                           std::to_string(d.classes.size() + 2));
    d.ids.push_back(cols[0]);
    d.truth.push_back(dx_class_index(d.classes, cols[1]));
    std::vector<double> p;
    for (size_t k = 2; k < cols.size(); ++k) p.push_back(std::stod(cols[k]));
    d.p.push_back(std::move(p));
  }
  return d;
}
std::vector<int> argmax_rows(const std::vector<std::vector<double>>& p) {
  std::vector<int> out;
  for (const auto& row : p)
    out.push_back(static_cast<int>(std::max_element(row.begin(), row.end()) - row.begin()));
  return out;
}
// The diagnosis task, paired on the same test images: per (arch, requested size), each arm's
// seed-averaged class probabilities, argmax, against the real arm's; the balanced accuracy
// difference with a paired bootstrap CI, per-class recalls, and the per-seed differences. Into
// out["dx_pooled"] (only when some job is a dx job).
Status paired_dx_comparisons(const std::vector<nlohmann::json>& results,
                             const std::string& baseline, nlohmann::json& out) {
  using Key = std::pair<std::string, int64_t>;
  std::map<Key, std::map<std::string, std::map<uint64_t, std::string>>> files;  // arm -> seed
  for (const auto& r : results)
    if (r.contains("test_dx_probs"))
      files[{r.value("arch", ""), r.value("requested_real_size", int64_t{-1})}][r.value("arm", "")]
           [r.value("seed", uint64_t{0})] = r["test_dx_probs"];
  if (files.empty()) return Status::ok_status();
  out["dx_pooled"] = nlohmann::json::array();
  for (const auto& [key, arms] : files) {
    auto real_it = arms.find(baseline);
    if (real_it == arms.end()) continue;
    // Seed-averaged probabilities and each seed's predictions of one arm.
    struct Arm {
      DxProbs avg;
      std::map<uint64_t, std::vector<int>> pred;
    };
    auto load_arm = [](const std::map<uint64_t, std::string>& by_seed) -> Result<Arm> {
      Arm a;
      for (const auto& [seed, path] : by_seed) {
        LF_ASSIGN_OR_RETURN(DxProbs d, read_dx_probs(path));
        a.pred[seed] = argmax_rows(d.p);
        if (a.avg.ids.empty()) {
          a.avg = d;
          continue;
        }
        if (d.ids != a.avg.ids || d.classes != a.avg.classes)
          return Status::error(path + ": other test images or classes than " +
                               by_seed.begin()->second);
        for (size_t i = 0; i < d.p.size(); ++i)
          for (size_t k = 0; k < d.p[i].size(); ++k) a.avg.p[i][k] += d.p[i][k];
      }
      for (auto& row : a.avg.p)
        for (auto& v : row) v /= static_cast<double>(by_seed.size());
      return a;
    };
    LF_ASSIGN_OR_RETURN(Arm real, load_arm(real_it->second));
    const int K = static_cast<int>(real.avg.classes.size());
    const std::vector<int> real_pred = argmax_rows(real.avg.p);
    auto recalls = [&](const std::vector<int>& pred) {
      return recall_json(multiclass_metrics(pred, real.avg.truth, K), real.avg.classes);
    };
    for (const auto& [arm, by_seed] : arms) {
      if (arm == baseline) continue;
      LF_ASSIGN_OR_RETURN(Arm a, load_arm(by_seed));
      if (a.avg.ids != real.avg.ids || a.avg.classes != real.avg.classes)
        return Status::error(by_seed.begin()->second + ": other test images or classes than " +
                             real_it->second.begin()->second);
      std::vector<double> d;  // per seed that both arms have
      for (const auto& [seed, pred] : a.pred) {
        auto rp = real.pred.find(seed);
        if (rp == real.pred.end()) continue;
        d.push_back(multiclass_metrics(pred, real.avg.truth, K).balanced_accuracy -
                    multiclass_metrics(rp->second, real.avg.truth, K).balanced_accuracy);
      }
      auto [mean, sd] = mean_sd(d);
      const std::vector<int> arm_pred = argmax_rows(a.avg.p);
      const PairedBalancedAccuracy pb =
          paired_balanced_accuracy(real_pred, arm_pred, real.avg.truth, K, 1000, 0);
      out["dx_pooled"].push_back({{"test_set", "test"},
                                  {"arch", key.first},
                                  {"real_size", key.second},
                                  {"arm", arm},
                                  {"seeds", d.size()},
                                  {"mean_diff", mean},
                                  {"sd_diff", sd},
                                  {"seed_averaged",
                                   {{"balanced_accuracy_real", pb.a},
                                    {"balanced_accuracy_arm", pb.b},
                                    {"diff", pb.diff},
                                    {"ci_lo", pb.ci_lo},
                                    {"ci_hi", pb.ci_hi},
                                    {"recall_real", recalls(real_pred)},
                                    {"recall_arm", recalls(arm_pred)}}}});
    }
  }
  return Status::ok_status();
}
nlohmann::json paired_json(const PairedAuc& p) {
  return {{"n", p.n},
          {"positives", p.positives},
          {"auc_real", p.auc_a},
          {"auc_arm", p.auc_b},
          {"diff", p.diff},
          {"se", json_number(p.se)},
          {"p_value", p.p_value},
          {"ci_lo", json_number(p.ci_lo)},
          {"ci_hi", json_number(p.ci_hi)}};
}
}  // namespace

Result<nlohmann::json> paired_arm_comparisons(const std::vector<nlohmann::json>& results,
                                              const std::string& baseline) {
  // key (test set, arch, requested size) -> seed -> arm -> scores file. "test" is the experiment's
  // own test split; the extra test datasets (--test-dataset) are compared the same way.
  using Key = std::tuple<std::string, std::string, int64_t>;
  std::map<Key, std::map<uint64_t, std::map<std::string, std::string>>> files;
  for (const auto& r : results) {
    const std::string arch = r.value("arch", "");
    const int64_t size = r.value("requested_real_size", int64_t{-1});
    const uint64_t seed = r.value("seed", uint64_t{0});
    if (r.contains("test_scores"))
      files[{"test", arch, size}][seed][r.value("arm", "")] = r["test_scores"].get<std::string>();
    if (r.contains("extra_test_scores"))
      for (const auto& [name, path] : r["extra_test_scores"].items())
        files[{name, arch, size}][seed][r.value("arm", "")] = path.get<std::string>();
  }
  nlohmann::json out = {{"per_seed", nlohmann::json::array()}, {"pooled", nlohmann::json::array()}};
  for (const auto& [key3, by_seed] : files) {
    const std::string& test_set = std::get<0>(key3);
    const std::pair<std::string, int64_t> key{std::get<1>(key3), std::get<2>(key3)};
    std::map<std::string, std::vector<double>> diffs;
    std::map<std::string, std::vector<double>> sum_real, sum_arm;  // summed over seeds
    std::vector<std::string> ids;  // the test images, the same for every seed and arm
    std::vector<int> labels;
    for (const auto& [seed, arms] : by_seed) {
      auto real = arms.find(baseline);
      if (real == arms.end()) continue;
      LF_ASSIGN_OR_RETURN(Scores a, read_scores(real->second));
      for (const auto& [arm, path] : arms) {
        if (arm == baseline) continue;
        LF_ASSIGN_OR_RETURN(Scores b, read_scores(path));
        if (b.ids != a.ids || b.labels != a.labels)
          return Status::error(path + ": not scored on the same test images as " + real->second);
        PairedAuc p = paired_auc(a.scores, b.scores, a.labels, 2000, seed);
        nlohmann::json j = paired_json(p);
        j["test_set"] = test_set;
        j["arch"] = key.first;
        j["real_size"] = key.second;
        j["seed"] = seed;
        j["arm"] = arm;
        out["per_seed"].push_back(j);
        diffs[arm].push_back(p.diff);
        if (ids.empty()) {
          ids = a.ids;
          labels = a.labels;
        } else if (a.ids != ids) {
          return Status::error(real->second + ": other test images than the seed before");
        }
        auto& sr = sum_real[arm];
        auto& sa = sum_arm[arm];
        sr.resize(ids.size(), 0.0);
        sa.resize(ids.size(), 0.0);
        for (size_t i = 0; i < ids.size(); ++i) {
          sr[i] += a.scores[i];
          sa[i] += b.scores[i];
        }
      }
    }
    for (const auto& [arm, d] : diffs) {
      auto [mean, sd] = mean_sd(d);
      nlohmann::json j = {{"test_set", test_set}, {"arch", key.first}, {"real_size", key.second},
                          {"arm", arm},           {"seeds", d.size()}, {"mean_diff", mean},
                          {"sd_diff", sd}};
      // The seed-averaged (summed: AUC is rank-based) scores of each arm, compared paired.
      j["seed_averaged"] = paired_json(paired_auc(sum_real[arm], sum_arm[arm], labels, 2000, 0));
      // And where on the ROC the difference is: the operating points, paired the same way.
      const PairedOperatingPoints op =
          paired_operating_points(sum_real[arm], sum_arm[arm], labels, 1000, 0);
      j["seed_averaged"]["specificity_at_sensitivity"] = {{"target", kTriageSensitivity},
                                                          {"diff", op.spec_at_sens_diff},
                                                          {"ci_lo", op.spec_at_sens_lo},
                                                          {"ci_hi", op.spec_at_sens_hi}};
      j["seed_averaged"]["sensitivity_at_specificity"] = {{"target", kTriageSpecificity},
                                                          {"diff", op.sens_at_spec_diff},
                                                          {"ci_lo", op.sens_at_spec_lo},
                                                          {"ci_hi", op.sens_at_spec_hi}};
      out["pooled"].push_back(j);
    }
  }
  LF_RETURN_IF_ERROR(paired_dx_comparisons(results, baseline, out));
  out["baseline"] = baseline;
  return out;
}

nlohmann::json aggregate_results(const std::vector<nlohmann::json>& results) {
  using Ptr = nlohmann::json::json_pointer;
  // The value at `p` of each result (JSON writes NaN, a metric undefined on one class, as null);
  // a result without it adds NaN when `missing_as_nan`, else nothing.
  auto collect = [](const std::vector<const nlohmann::json*>& rs, const Ptr& p,
                    bool missing_as_nan) {
    std::vector<double> v;
    for (auto* r : rs)
      if (r->contains(p))
        v.push_back((*r)[p].is_number() ? (*r)[p].get<double>() : std::nan(""));
      else if (missing_as_nan)
        v.push_back(std::nan(""));
    return v;
  };
  auto spread = [](const std::vector<double>& v) {
    auto [mean, sd] = mean_sd(v);
    return nlohmann::json{{"mean", mean}, {"sd", sd}, {"values", v}};
  };
  std::map<std::string, std::vector<const nlohmann::json*>> cells;  // key orders arch, size, arm
  // One cell per arm, in a fixed order (the arm's name after its rank keeps unknown arms apart;
  // the arms of a ratio sweep, "recipe (R.RRx)", rank as their recipe, then by ratio).
  auto arm_rank = [](const std::string& a) {
    const auto& order = classifier_arms();
    auto it = std::find(order.begin(), order.end(), a.substr(0, a.find(" (")));
    return std::to_string(it - order.begin()) + "|" + a;
  };
  for (auto& r : results) {
    char size[24];
    std::snprintf(size, sizeof size, "%012lld",
                  (long long)r.value("requested_real_size", int64_t{-1}));
    cells[r.value("arch", "") + "|" + size + "|" + arm_rank(r.value("arm", ""))].push_back(&r);
  }
  nlohmann::json out = nlohmann::json::array();
  for (auto& [key, rs] : cells) {
    nlohmann::json c = {{"arch", rs[0]->value("arch", "")},
                        {"arm", rs[0]->value("arm", "")},
                        {"real_size", rs[0]->value("requested_real_size", int64_t{-1})},
                        {"real_images", rs[0]->value("real_size", int64_t{0})},
                        {"synthetic_size", rs[0]->value("synthetic_size", int64_t{0})},
                        {"seeds", rs.size()}};
    // Per metric, where it stands in a result; "/value" ones are intervals whose first seed's CI
    // is kept for scale. A metric the first seed's result lacks (from before it) is left out.
    for (const auto& [name, where] : std::vector<std::pair<std::string, std::string>>{
             {"auc", "/test/auc/value"},
             {"accuracy", "/test/accuracy/value"},
             {"balanced_accuracy", "/test/balanced_accuracy/value"},
             {"sensitivity", "/test/sensitivity/value"},
             {"specificity", "/test/specificity/value"},
             {"specificity_at_sensitivity", "/test/specificity_at_sensitivity/value"},
             {"sensitivity_at_specificity", "/test/sensitivity_at_specificity/value"},
             {"brier", "/test/brier/value"},
             {"ece", "/test/ece/value"},
             // Calibration after the Platt scaling fitted on validation.
             {"brier_recalibrated", "/test/recalibrated/brier"},
             {"ece_recalibrated", "/test/recalibrated/ece"},
             {"accuracy_recalibrated", "/test/recalibrated/accuracy"},
             // The diagnosis task of a dx classifier (argmax over the diagnoses).
             {"dx_accuracy", "/test_dx/accuracy"},
             {"dx_balanced_accuracy", "/test_dx/balanced_accuracy"}}) {
      const Ptr p(where);
      if (!rs[0]->contains(p)) continue;
      c[name] = spread(collect(rs, p, true));
      if (p.back() == "value") {
        const Ptr iv = p.parent_pointer();
        c[name]["ci_first_seed"] = {(*rs[0])[iv / "lo"], (*rs[0])[iv / "hi"]};
      }
    }
    if (rs[0]->contains("test_dx")) {  // per diagnosis, its recall (mean over seeds)
      c["dx_recall"] = nlohmann::json::object();
      for (const auto& [dx, v0] : (*rs[0])["test_dx"]["recall_per_class"].items())
        c["dx_recall"][dx] = spread(collect(rs, Ptr("/test_dx/recall_per_class") / dx, true));
    }
    std::vector<double> wg;
    for (auto* r : rs)
      if ((*r)["test"].contains("worst_group"))
        wg.push_back((*r)["test"]["worst_group"]["balanced_accuracy"].get<double>());
    c["worst_group_balanced_accuracy"] = spread(wg);
    // Per diagnosis, the share called malignant at the triage point (mean over seeds).
    std::map<std::string, std::vector<double>> triage_by_dx;
    for (auto* r : rs)
      if ((*r)["test"].contains("by_dx"))
        for (const auto& row : (*r)["test"]["by_dx"]["rows"])
          if (row["called_malignant_at_triage"].is_number())
            triage_by_dx[row["dx"].get<std::string>()].push_back(
                row["called_malignant_at_triage"].get<double>());
    if (!triage_by_dx.empty()) {
      c["called_malignant_at_triage"] = nlohmann::json::object();
      for (auto& [dx, v] : triage_by_dx) c["called_malignant_at_triage"][dx] = spread(v);
    }
    // The extra test datasets: AUC, sensitivity/specificity at the validation threshold, the
    // specificity at the triage sensitivity, and calibration.
    if (rs[0]->contains("extra_tests"))
      for (const auto& [name, ev0] : (*rs[0])["extra_tests"].items()) {
        nlohmann::json e;
        // The last one: does the validation split's scaling transfer?
        for (const auto& [m, where] : std::vector<std::pair<std::string, std::string>>{
                 {"auc", "/auc/value"},
                 {"sensitivity", "/sensitivity/value"},
                 {"specificity", "/specificity/value"},
                 {"specificity_at_sensitivity", "/specificity_at_sensitivity/value"},
                 {"ece", "/ece/value"},
                 {"ece_recalibrated", "/recalibrated/ece"}}) {
          const Ptr p = Ptr("/extra_tests") / name / Ptr(where);
          if (ev0.contains(Ptr(where))) e[m] = spread(collect(rs, p, false));
        }
        c["extra_tests"][name] = e;
      }
    if ((*rs[0])["test"].contains("worst_group"))
      c["worst_group_first_seed"] = (*rs[0])["test"]["worst_group"];
    out.push_back(c);
  }
  return out;
}

}  // namespace lf
