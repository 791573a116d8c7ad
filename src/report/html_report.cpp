// The self-contained HTML report (images embedded) of a run's artefacts: dataset summary,
// captions, generator training curves and grids, samples with concept adherence, and the
// experiment's classifier results and audit.
#include <cmath>
#include <filesystem>
#include <map>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <set>
#include <sstream>

#include "lesionflow/concepts.h"
#include "lesionflow/data.h"
#include "lesionflow/io.h"
#include "lesionflow/jsonl.h"
#include "lesionflow/log.h"
#include "lesionflow/metrics.h"
#include "lesionflow/report.h"

namespace lf {
namespace fs = std::filesystem;
namespace {

std::vector<nlohmann::json> jsonl_or_empty(const std::string& path) {
  auto r = read_jsonl(path);
  if (!r.ok()) log_warn(r.status().message());
  return r.ok() ? *r : std::vector<nlohmann::json>{};
}

std::string fmt(double v, const char* f = "%.3f") {
  char b[32];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

std::string img_tag(const cv::Mat& bgr, int width) {
  return "<img src='" + png_data_uri(bgr) + "' width='" + std::to_string(width) +
         "' style='image-rendering:pixelated'>";
}

// What a prompt asks for, parsed from the composer's wording.
struct Asked {
  int asymmetry = -1;
  std::set<std::string> colours;
};
Asked parse_prompt(const std::string& p) {
  Asked a;
  if (p.find("two axes") != std::string::npos || p.find("both axes") != std::string::npos)
    a.asymmetry = 2;
  else if (p.find("one axis") != std::string::npos)
    a.asymmetry = 1;
  else if (p.find("symmetric") != std::string::npos)
    a.asymmetry = 0;
  for (const auto& c : colour_names())
    if (p.find(c) != std::string::npos) a.colours.insert(c);
  return a;
}

cv::Mat tile_bgr(const uint8_t* rgb_px, int size) {
  cv::Mat rgb(size, size, CV_8UC3, const_cast<uint8_t*>(rgb_px)), bgr;
  cv::cvtColor(rgb, bgr, cv::COLOR_RGB2BGR);
  return bgr;
}

std::string pm(const nlohmann::json& m) {  // "0.812 ± 0.010"
  if (!m.contains("mean") || !m["mean"].is_number()) return "-";
  return fmt(m["mean"].get<double>()) + " ± " +
         fmt(m["sd"].is_number() ? m["sd"].get<double>() : 0.0);
}
std::string ci(const nlohmann::json& m) {  // "0.812 [0.790, 0.833]"
  if (!m.contains("value") || !m["value"].is_number()) return "-";
  return fmt(m["value"].get<double>()) + " [" + fmt(m["lo"].get<double>()) + ", " +
         fmt(m["hi"].get<double>()) + "]";
}
double num(const nlohmann::json& j, double def = std::nan("")) {
  return j.is_number() ? j.get<double>() : def;
}

// The paired comparisons of each arm against a baseline arm (summary "pooled" rows) as a table.
void paired_table(std::ostringstream& h, const nlohmann::json& pooled) {
  h << "<table><tr><th>test set</th><th>model</th><th>real</th><th>arm</th><th>seeds</th>"
       "<th>mean AUC difference</th><th>seed-averaged: AUC real → arm</th><th>difference [95% "
       "CI]</th><th>DeLong p</th><th>verdict</th><th>sensitivity at specificity 0.90, "
       "difference</th><th>specificity at sensitivity 0.95, difference</th></tr>";
  char b[256];
  for (auto& c : pooled) {
    std::string avg = "-", ci = "-", p = "-", verdict = "-", at_spec = "-", at_sens = "-";
    auto op_diff = [&](const nlohmann::json& o) {
      char t[96];
      std::snprintf(t, sizeof t, "%+.3f [%+.3f, %+.3f]", num(o["diff"]), num(o["ci_lo"]),
                    num(o["ci_hi"]));
      return std::string(t);
    };
    if (c.contains("seed_averaged") && c["seed_averaged"].contains("specificity_at_sensitivity")) {
      at_spec = op_diff(c["seed_averaged"]["sensitivity_at_specificity"]);
      at_sens = op_diff(c["seed_averaged"]["specificity_at_sensitivity"]);
    }
    if (c.contains("seed_averaged")) {
      const auto& a = c["seed_averaged"];
      std::snprintf(b, sizeof b, "%.3f → %.3f", num(a["auc_real"]), num(a["auc_arm"]));
      avg = b;
      std::snprintf(b, sizeof b, "%+.3f [%+.3f, %+.3f]", num(a["diff"]), num(a["ci_lo"]),
                    num(a["ci_hi"]));
      ci = b;
      std::snprintf(b, sizeof b, "%.3g", num(a["p_value"]));
      p = b;
      const double lo = num(a["ci_lo"]), hi = num(a["ci_hi"]);
      verdict = lo > 0 ? "better" : hi < 0 ? "worse" : "no clear difference";
    }
    std::snprintf(b, sizeof b, "%+.3f ± %.3f", num(c["mean_diff"]), num(c["sd_diff"]));
    const std::string ts = c.value("test_set", "test");
    h << "<tr><td>" << html_escape(ts == "test" ? "test split" : ts) << "</td><td>"
      << html_escape(c.value("arch", "")) << "</td><td>" << c["real_size"] << "</td><td>"
      << html_escape(c.value("arm", "")) << "</td><td>" << c["seeds"] << "</td><td>" << b
      << "</td><td>" << avg << "</td><td>" << ci << "</td><td>" << p << "</td><td>" << verdict
      << "</td><td>" << at_spec << "</td><td>" << at_sens << "</td></tr>";
  }
  h << "</table>";
}

// Classifier results, scarcity curve, ROC curves, subgroups, real vs synthetic, audit.
void experiment_section(std::ostringstream& h, const std::string& dir) {
  auto txt = read_file(dir + "/summary.json");
  if (!txt.ok()) {
    h << "<p><b>Experiment:</b> " << html_escape(txt.status().message()) << "</p>";
    return;
  }
  auto s = nlohmann::json::parse(*txt);
  if (s.contains("paired") && s["paired"].contains("pooled") && !s["paired"]["pooled"].empty()) {
    h << "<h2>Does synthetic data help?</h2><p>Each arm against the real-only classifier of the "
         "same size and seed, on the same test images. Mean AUC difference over seeds; then the "
         "seed-averaged scores of both arms compared paired: DeLong p-value and paired bootstrap "
         "95% CI. A gain counts when the interval excludes 0. The interval compares the arms' "
         "seed ensembles; the mean over seeds (± sd) is what one classifier gains, and the two "
         "differ when the real-only seeds vary much (averaging helps the more variable arm "
         "more). The last two columns say where on "
         "the ROC the difference is, paired the same way: at the high-specificity end "
         "(sensitivity at specificity 0.90) and at the triage end (specificity at sensitivity "
         "0.95).</p>";
    paired_table(h, s["paired"]["pooled"]);
  }
  if (s.contains("paired") && s["paired"].contains("vs_equal_steps") &&
      !s["paired"]["vs_equal_steps"]["pooled"].empty()) {
    h << "<h3>Against the equal-steps control</h3><p>The same comparisons against a real-only "
         "classifier trained for as many optimizer steps as the real+synthetic one (its epochs "
         "and patience scaled by (real + synthetic) / real images): what the synthetic images "
         "add beyond the longer training that mixing brings.</p>";
    paired_table(h, s["paired"]["vs_equal_steps"]["pooled"]);
  }
  h << "<h2>Classifiers: real vs real+synthetic vs synthetic-only</h2>";
  // A time budget, and classifier epochs other than the config's (a budget, now or in the run that
  // trained them, scaled them), are said here with the run's wall time.
  {
    const auto& ep = s.value("classifier_epochs", nlohmann::json::object());
    const int planned = ep.value("planned", 0);
    const nlohmann::json used = ep.value("used", nlohmann::json(planned));
    const bool scaled = used != nlohmann::json(planned);
    const std::string used_txt = used.is_number() ? std::to_string(used.get<int>()) : used.dump();
    char line[512] = "";
    if (s.contains("budget") && s["budget"].is_object()) {
      const auto& b = s["budget"];
      std::snprintf(line, sizeof line,
                    "<p><b>Time budget %.0f min</b> (wall time of this run: %.1f min; %.1f min "
                    "before the classifiers; estimated classifier work %.1f min for %.1f min "
                    "left). ",
                    num(b["minutes"]), num(s.value("minutes", nlohmann::json(0.0))),
                    num(b["minutes_before_classifiers"]), num(b["estimated_classifier_minutes"]),
                    num(b["left_for_classifiers"]));
      h << line;
    } else if (scaled) {
      h << "<p>";
    }
    if (scaled || (s.contains("budget") && s["budget"].is_object()))
      h << "Classifier epochs "
        << (scaled ? "<b>other than planned</b> (a time budget scales them to fit, in this run or "
                     "in the run that trained them)"
                   : "not scaled")
        << ": " << planned << " planned, " << used_txt << " used.</p>";
  }
  h << "<p>Binary benign vs malignant, evaluated on the lesion-grouped test split; operating point "
       "(Youden) "
       "picked on the validation split. Mean ± sd over seeds; brackets: bootstrap 95% CI of the "
       "first seed. Worst group: the lowest balanced accuracy among groups (sex, age band, site, "
       "skin type) with >= "
    << kGroupMinImages << " images, >= " << kGroupMinPerClass
    << " malignant and >= " << kGroupMinPerClass << " benign. Specificity at sensitivity "
    << fmt(kTriageSensitivity, "%.2f")
    << ": the best specificity of a threshold that misses at most "
    << fmt(100 * (1 - kTriageSensitivity), "%.0f")
    << "% of malignant lesions, read off the test ROC. Brier score and expected calibration "
       "error ("
    << kCalibrationBins
    << " bins): how far the scores are from the test set's malignant rates (lower is better); "
       "a classifier trained at another malignant fraction than the test set's ranks as well and "
       "is calibrated worse. The classifiers train with a class-balanced loss (scores at a 50% "
       "prior); after the arrow, the same after a Platt scaling fitted on the validation split, "
       "and in brackets under accuracy, the accuracy of deciding at 0.5 on those calibrated "
       "probabilities (what an accuracy-only report, e.g. DermaFlux's, measures).</p>";
  // The extra test datasets get their own columns: AUC, and sensitivity / specificity at the
  // threshold picked on validation (does the operating point transfer?).
  std::vector<std::string> extra_names;
  if (!s["cells"].empty() && s["cells"][0].contains("extra_tests"))
    for (auto& [k, v] : s["cells"][0]["extra_tests"].items()) extra_names.push_back(k);
  h << "<table><tr><th>model</th><th>arm</th><th>real</th><th>synthetic</th><th>seeds</th><th>AUC</"
       "th><th>accuracy</th>"
       "<th>balanced accuracy</th><th>sensitivity</th><th>specificity</th><th>specificity at "
       "sensitivity "
    << fmt(kTriageSensitivity, "%.2f")
    << "</th><th>Brier / ECE (means)</th><th>worst-group balanced "
       "accuracy</th>";
  for (auto& n : extra_names)
    h << "<th>AUC, " << html_escape(n) << "</th><th>sensitivity / specificity, " << html_escape(n)
      << "</th>";
  h << "</tr>";
  std::map<std::string, Series> scarcity;
  for (auto& c : s["cells"]) {
    auto ci_first = [&](const char* m) {
      return " <small>[" + fmt(num(c[m]["ci_first_seed"][0])) + ", " +
             fmt(num(c[m]["ci_first_seed"][1])) + "]</small>";
    };
    auto opt_pm = [&](const char* m) { return c.contains(m) ? pm(c[m]) : std::string("-"); };
    auto mean_of = [&](const char* m) {  // a compact column: means only
      return c.contains(m) ? fmt(num(c[m]["mean"])) : std::string("-");
    };
    std::string wg = pm(c["worst_group_balanced_accuracy"]);
    if (c.contains("worst_group_first_seed"))
      wg += " <small>(" +
            html_escape(c["worst_group_first_seed"].value("attribute", "") + "=" +
                        c["worst_group_first_seed"].value("group", "")) +
            ")</small>";
    h << "<tr><td>" << c.value("arch", "") << "</td><td>" << c.value("arm", "") << "</td><td>"
      << c["real_images"] << "</td><td>" << c["synthetic_size"] << "</td><td>" << c["seeds"]
      << "</td><td>" << pm(c["auc"]) << ci_first("auc") << "</td><td>" << pm(c["accuracy"])
      << (c.contains("accuracy_recalibrated")
              ? " <small>(" + pm(c["accuracy_recalibrated"]) + ")</small>"
              : std::string())
      << "</td><td>" << pm(c["balanced_accuracy"]) << ci_first("balanced_accuracy") << "</td><td>"
      << pm(c["sensitivity"]) << "</td><td>" << pm(c["specificity"]) << "</td><td>"
      << opt_pm("specificity_at_sensitivity") << "</td><td style='white-space:nowrap'>"
      << mean_of("brier") << " / " << mean_of("ece")
      << (c.contains("ece_recalibrated")
              ? "<br>→ " + mean_of("brier_recalibrated") + " / " + mean_of("ece_recalibrated")
              : std::string())
      << "</td><td>" << wg << "</td>";
    for (auto& n : extra_names) {
      if (!c.contains("extra_tests") || !c["extra_tests"].contains(n)) {
        h << "<td>-</td><td>-</td>";
        continue;
      }
      const auto& e = c["extra_tests"][n];
      h << "<td>" << pm(e["auc"]) << "</td><td>" << fmt(num(e["sensitivity"]["mean"])) << " / "
        << fmt(num(e["specificity"]["mean"])) << "</td>";
    }
    h << "</tr>";
    if (c.value("arch", "") == s["cells"][0].value("arch", ""))
      scarcity[c.value("arm", "")].points.emplace_back(num(c["real_size"], 0),
                                                       num(c["auc"]["mean"]));
  }
  h << "</table>";
  // Where the triage point's errors are: per diagnosis, the share called malignant at the
  // threshold that reaches sensitivity 0.95 on the test split (malignant rows: the share found;
  // benign rows: the share sent on needlessly).
  {
    std::set<std::string> dxs;
    for (auto& c : s["cells"])
      if (c.contains("called_malignant_at_triage"))
        for (auto& [dx, v] : c["called_malignant_at_triage"].items()) dxs.insert(dx);
    std::map<std::string, bool> malignant;
    for (auto& r : s["runs"])
      if (r.contains("test") && r["test"].contains("by_dx"))
        for (auto& row : r["test"]["by_dx"]["rows"])
          malignant[row["dx"].get<std::string>()] = row.value("positives", 0) > 0;
    if (dxs.size() > 1) {
      h << "<h3>Per diagnosis at sensitivity " << fmt(kTriageSensitivity, "%.2f")
        << " (test split, means over seeds)</h3><p>The share of each diagnosis called malignant "
           "at the threshold that finds "
        << fmt(100 * kTriageSensitivity, "%.0f")
        << "% of the malignant lesions: for a malignant diagnosis, how many are found; for a "
           "benign one, how many are sent on needlessly (lower is better). Where the triage "
           "point's errors are.</p><table><tr><th>model</th><th>arm</th><th>real</th>";
      for (auto& dx : dxs)
        h << "<th>" << html_escape(dx)
          << (malignant.count(dx) && malignant[dx] ? " (malignant)" : "") << "</th>";
      h << "</tr>";
      for (auto& c : s["cells"]) {
        if (!c.contains("called_malignant_at_triage")) continue;
        h << "<tr><td>" << c.value("arch", "") << "</td><td>" << c.value("arm", "") << "</td><td>"
          << c["real_images"] << "</td>";
        for (auto& dx : dxs)
          h << "<td>"
            << (c["called_malignant_at_triage"].contains(dx)
                    ? fmt(num(c["called_malignant_at_triage"][dx]["mean"]))
                    : std::string("-"))
            << "</td>";
        h << "</tr>";
      }
      h << "</table>";
    }
  }
  // The diagnosis task (dx classifiers): balanced accuracy over the diagnoses, each diagnosis's
  // recall, and each arm against real, paired on the seed-averaged probabilities.
  if (!s["cells"].empty() && s["cells"][0].contains("dx_balanced_accuracy")) {
    std::vector<std::string> dxs;
    for (auto& [dx, v] : s["cells"][0]["dx_recall"].items()) dxs.push_back(dx);
    h << "<h3>The diagnosis task (" << dxs.size()
      << " classes, test split)</h3><p>One output per diagnosis, epochs picked on the validation "
         "balanced accuracy. Balanced accuracy: the mean of the diagnoses' recalls (ISIC 2018 "
         "task 3), mean ± sd over seeds; then each diagnosis's recall (mean over seeds). Against "
         "real: the balanced accuracy of the seed-averaged probabilities' argmax, paired on the "
         "same test images (bootstrap 95% CI).</p><table><tr><th>model</th><th>arm</th>"
         "<th>real</th><th>synthetic</th><th>balanced accuracy</th><th>accuracy</th>";
    for (auto& dx : dxs) h << "<th>" << html_escape(dx) << "</th>";
    const bool eq = s.contains("paired") && s["paired"].contains("vs_equal_steps") &&
                    s["paired"]["vs_equal_steps"].contains("dx_pooled");
    h << "<th>vs real (seed-averaged)</th>" << (eq ? "<th>vs real, equal steps</th>" : "")
      << "</tr>";
    // This cell's row of a dx_pooled list: "diff [lo, hi]", "-" without one.
    auto vs_of = [&](const nlohmann::json& paired, const nlohmann::json& c) {
      std::string vs = "-";
      if (paired.contains("dx_pooled"))
        for (auto& p : paired["dx_pooled"])
          if (p.value("arch", "") == c.value("arch", "") && p["real_size"] == c["real_size"] &&
              p.value("arm", "") == c.value("arm", "")) {
            const auto& q = p["seed_averaged"];
            vs = fmt(num(q["diff"]), "%+.3f") + " [" + fmt(num(q["ci_lo"]), "%+.3f") + ", " +
                 fmt(num(q["ci_hi"]), "%+.3f") + "]";
          }
      return vs;
    };
    for (auto& c : s["cells"]) {
      if (!c.contains("dx_balanced_accuracy")) continue;
      const std::string vs = s.contains("paired") ? vs_of(s["paired"], c) : "-";
      h << "<tr><td>" << c.value("arch", "") << "</td><td>" << c.value("arm", "") << "</td><td>"
        << c["real_images"] << "</td><td>" << c["synthetic_size"] << "</td><td>"
        << pm(c["dx_balanced_accuracy"]) << "</td><td>" << pm(c["dx_accuracy"]) << "</td>";
      for (auto& dx : dxs)
        h << "<td>" << (c["dx_recall"].contains(dx) ? fmt(num(c["dx_recall"][dx]["mean"])) : "-")
          << "</td>";
      h << "<td>" << vs << "</td>";
      if (eq) h << "<td>" << vs_of(s["paired"]["vs_equal_steps"], c) << "</td>";
      h << "</tr>";
    }
    h << "</table>";
  }
  h << "<div class='flex'>";
  std::vector<Series> sc;
  for (auto& [arm, ser] : scarcity) {
    ser.name = arm;
    sc.push_back(ser);
  }
  std::set<double> sizes;
  for (auto& ser : sc)
    for (auto& p : ser.points) sizes.insert(p.first);
  if (sizes.size() >= 2)
    h << svg_line_plot(sc, "scarcity curve: test AUC vs real training images",
                       "real images (requested)", "AUC", 460, 300);
  else
    h << "<p style='width:440px'>(scarcity curve: this experiment has one real training size)</p>";
  // ROC curves: first seed of each arm at the largest real size, first architecture.
  int64_t largest = 0;
  for (auto& r : s["runs"])
    largest = std::max<int64_t>(largest, r.value("requested_real_size", int64_t{0}));
  std::vector<Series> rocs;
  std::vector<const nlohmann::json*> shown;
  std::set<std::string> seen;
  for (auto& r : s["runs"]) {
    std::string key = r.value("arm", "");
    if (r.value("arch", "") != s["cells"][0].value("arch", "") ||
        r.value("requested_real_size", int64_t{0}) != largest || seen.count(key))
      continue;
    seen.insert(key);
    shown.push_back(&r);
    Series ser{key + " (AUC " + fmt(num(r["test"]["auc"]["value"])) + ")", {}};
    for (auto& p : r["test"]["roc"])
      ser.points.emplace_back(p[0].get<double>(), p[1].get<double>());
    rocs.push_back(ser);
  }
  h << svg_line_plot(rocs,
                     "ROC, test split (real size " + std::to_string(largest) + ", first seed)",
                     "1 - specificity", "sensitivity", 460, 300);
  // Reliability diagrams of the same runs, raw and after the validation split's Platt scaling:
  // per score bin, the test images' malignant fraction against their mean score (the diagonal,
  // last so the arms keep the ROC's colours, is perfect calibration).
  for (const bool recal : {false, true}) {
    std::vector<Series> rel;
    for (auto* r : shown) {
      const auto& t = (*r)["test"];
      const nlohmann::json* src = recal
                                      ? (t.contains("recalibrated") ? &t["recalibrated"] : nullptr)
                                      : (t.contains("calibration_bins") ? &t : nullptr);
      if (!src) continue;
      const double ece = recal ? num((*src)["ece"]) : num((*src)["ece"]["value"]);
      Series ser{(*r).value("arm", "") + " (ECE " + fmt(ece) + ")", {}};
      for (auto& b : (*src)["calibration_bins"])
        if (b.value("n", 0) > 0)
          ser.points.emplace_back(num(b["mean_score"]), num(b["malignant_fraction"]));
      rel.push_back(ser);
    }
    if (rel.empty()) continue;
    rel.push_back({"perfectly calibrated", {{0, 0}, {1, 1}}});
    h << svg_line_plot(rel,
                       std::string(recal ? "reliability after Platt scaling" : "reliability") +
                           ", test split (real size " + std::to_string(largest) + ", first seed)",
                       "mean P(malignant) in the bin", "malignant fraction", 460, 300);
  }
  h << "</div>";
  // Subgroups of the shown runs.
  if (!shown.empty()) {
    h << "<h3>Subgroups (balanced accuracy; test split, first seed, real size " << largest
      << ")</h3><table><tr><th>group</th><th>n (malignant)</th>";
    for (auto* r : shown) h << "<th>" << (*r).value("arm", "") << "</th>";
    h << "</tr>";
    const auto& g0 = (*shown[0])["test"]["groups"];
    for (size_t i = 0; i < g0.size(); ++i) {
      h << "<tr><td>" << html_escape(g0[i].value("attribute", "") + "=" + g0[i].value("group", ""))
        << "</td><td>" << g0[i]["n"] << " (" << g0[i]["positives"] << ")</td>";
      for (auto* r : shown) {
        const auto& gi = (*r)["test"]["groups"];
        bool worst =
            (*r)["test"].contains("worst_group") &&
            (*r)["test"]["worst_group"].value("group", "") == g0[i].value("group", "") &&
            (*r)["test"]["worst_group"].value("attribute", "") == g0[i].value("attribute", "");
        double v = i < gi.size() ? num(gi[i]["balanced_accuracy"]) : std::nan("");
        h << "<td" << (worst ? " style='background:#fdd'" : "") << ">" << fmt(v)
          << (gi[i].value("ranked", false) ? "" : " <small>(not ranked)</small>") << "</td>";
      }
      h << "</tr>";
    }
    h << "</table><p><small>Red: worst ranked group (≥ 20 images, both classes). Extra test "
         "datasets: ";
    for (auto& [k, v] : (*shown[0])["extra_tests"].items())
      h << html_escape(k) << " AUC " << ci(v["auc"]) << "; ";
    h << "</small></p>";
  }
  // Real vs synthetic, per class; synthetic per subgroup.
  std::string syn_dir = s["synthetic"].value("dir", "");
  auto manifest = jsonl_or_empty(syn_dir + "/manifest.jsonl");
  auto ps = load_prepared(s["config"].value("data", ""));
  h << "<h2>Real vs synthetic</h2><p>" << manifest.size() << " synthetic images in "
    << html_escape(syn_dir);
  if (file_exists(syn_dir + "/speed.json")) {
    auto sp = nlohmann::json::parse(*read_file(syn_dir + "/speed.json"));
    h << " (generated at " << fmt(num(sp["images_per_second"]), "%.2f") << " img/s)";
  }
  h << "</p><table><tr><th>class</th><th>real (training split)</th><th>synthetic</th></tr>";
  for (int label : {1, 0}) {
    std::vector<cv::Mat> real_t, syn_t;
    if (ps.ok())
      for (int64_t i = 0; i < ps->count() && real_t.size() < 8; ++i)
        if (ps->records[i].label == label) real_t.push_back(tile_bgr(ps->image(i), ps->size));
    for (auto& m : manifest)
      if (m.value("label", -1) == label && syn_t.size() < 8) {
        cv::Mat im = cv::imread(syn_dir + "/" + m.value("file", ""));
        if (!im.empty()) syn_t.push_back(im);
      }
    h << "<tr><td>" << (label ? "malignant" : "benign") << "</td><td>"
      << (real_t.empty() ? "-" : img_tag(make_grid(real_t, 8), 8 * 50)) << "</td><td>"
      << (syn_t.empty() ? "-" : img_tag(make_grid(syn_t, 8), 8 * 50)) << "</td></tr>";
  }
  h << "</table><h3>Synthetic images per class and "
       "subgroup</h3><table><tr><th>cell</th><th>images</th></tr>";
  std::map<std::string, std::vector<cv::Mat>> cells;
  for (auto& m : manifest) {
    std::string key = m.value("dx", "") + (m.value("label", 0) ? " (malignant)" : " (benign)");
    if (m.contains("subgroup"))
      key += ", " + m["subgroup"].value("sex", "") + ", age " + m["subgroup"].value("age", "");
    if (cells[key].size() < 6) {
      cv::Mat im = cv::imread(syn_dir + "/" + m.value("file", ""));
      if (!im.empty()) cells[key].push_back(im);
    }
  }
  int shown_cells = 0;
  for (auto& [k, t] : cells)
    if (shown_cells++ < 24)
      h << "<tr><td>" << html_escape(k) << "</td><td>"
        << img_tag(make_grid(t, 6), (int)t.size() * 50) << "</td></tr>";
  h << "</table>";
  // Audit.
  const auto& a = s["audit"];
  if (a.is_object() && !a.empty()) {
    h << "<h2>Audit of the synthetic "
         "images</h2><table><tr><th>measure</th><th>synthetic</th><th>reference</th></tr>";
    h << "<tr><td>Fréchet distance to real test features ("
      << html_escape(a["fd"].value("feature", "")) << ")</td><td>"
      << fmt(num(a["fd"]["synthetic_vs_real_test"]))
      << "</td><td>real train vs real test: " << fmt(num(a["fd"]["real_train_vs_real_test"]))
      << "</td></tr>";
    // Its two parts: a shift of the whole set (e.g. every image softer or less red) vs a
    // different spread (missing or extra variety).
    auto parts_of = [&](const nlohmann::json& p) {
      return "shift " + fmt(num(p.value("mean", nlohmann::json(nullptr)))) + " + spread " +
             fmt(num(p.value("covariance", nlohmann::json(nullptr))));
    };
    auto parts = [&](const char* key) {
      return parts_of(a["fd"].value(key, nlohmann::json::object()));
    };
    if (a["fd"].contains("synthetic_vs_real_test_parts"))
      h << "<tr><td>Fréchet distance, its parts: |mean difference|² (a shift of the whole set) + "
           "covariance term (a different spread)</td><td>"
        << parts("synthetic_vs_real_test_parts")
        << "</td><td>real train vs real test: " << parts("real_train_vs_real_test_parts")
        << "</td></tr>";
    // The same with the real images weighted per diagnosis to the synthetic set's mix (a
    // label-balanced set is not penalised for its class mix).
    const auto& mm = a["fd"].value("mix_matched", nlohmann::json());
    if (mm.is_object() && mm.contains("synthetic_vs_real_test"))
      h << "<tr><td>Fréchet distance with the real images weighted per diagnosis to the "
           "synthetic set's diagnosis mix</td><td>"
        << fmt(num(mm["synthetic_vs_real_test"])) << " ("
        << parts_of(mm.value("synthetic_vs_real_test_parts", nlohmann::json::object()))
        << ")</td><td>real train vs real test, same weights: "
        << fmt(num(mm["real_train_vs_real_test"])) << "</td></tr>";
    // Over disjoint draws: the FD of one small set moves a lot between draws, so the spread.
    const auto& dr = a["fd"].value("draws", nlohmann::json());
    if (dr.is_object() && dr.contains("synthetic_mean"))
      h << "<tr><td>Fréchet distance over " << dr["draws"] << " disjoint draws of " << dr["size"]
        << " images (mean ± sd)</td><td>" << fmt(num(dr["synthetic_mean"])) << " ± "
        << fmt(num(dr["synthetic_sd"])) << " (" << fmt(num(dr["ratio"]))
        << "x the floor)</td><td>real train vs real test, draws of the same size: "
        << fmt(num(dr["floor_mean"])) << " ± " << fmt(num(dr["floor_sd"])) << "</td></tr>";
    h << "<tr><td>precision / recall (k=3)</td><td>" << fmt(num(a["precision_recall"]["precision"]))
      << " / " << fmt(num(a["precision_recall"]["recall"]))
      << "</td><td>real train: " << fmt(num(a["precision_recall"]["real_train_precision"])) << " / "
      << fmt(num(a["precision_recall"]["real_train_recall"])) << "</td></tr>";
    h << "<tr><td>classification accuracy score (real-data classifier on synthetic images, their "
         "prompt's label)</td><td>AUC "
      << fmt(num(a["cas"]["auc"])) << ", balanced accuracy "
      << fmt(num(a["cas"]["balanced_accuracy"])) << "</td><td>-</td></tr>";
    for (std::string sp : {"pixel", "feature"}) {
      const auto& m = a["memorisation"][sp];
      h << "<tr><td>memorisation, " << sp
        << " space: synthetic images closer to a real training image than 99% of real images are "
           "to their nearest neighbour</td><td>"
        << m["flagged"] << " (" << fmt(100 * num(m["flagged_fraction"]), "%.1f")
        << "%), median NN distance " << fmt(num(m["median_nn_distance"]))
        << "</td><td>real median NN distance " << fmt(num(m["real_median_nn_distance"]))
        << "</td></tr>";
    }
    const auto& ca = a["concept_adherence"];
    h << "<tr><td>concept adherence (measured vs prompt): asymmetry exact / colour F1 / "
         "colour-count MAE</td><td>"
      << fmt(num(ca["synthetic_vs_prompt"]["asymmetry_exact"])) << " / "
      << fmt(num(ca["synthetic_vs_prompt"]["colour_f1"])) << " / "
      << fmt(num(ca["synthetic_vs_prompt"]["colour_count_mae"]))
      << "</td><td>real images at the same size vs their own captions: "
      << fmt(num(ca["real_64px_vs_own_caption"]["asymmetry_exact"])) << " / "
      << fmt(num(ca["real_64px_vs_own_caption"]["colour_f1"])) << " / "
      << fmt(num(ca["real_64px_vs_own_caption"]["colour_count_mae"])) << "</td></tr></table>";
    // Closest pairs (pixel space).
    std::vector<cv::Mat> pair_tiles;
    if (ps.ok()) {
      std::map<std::string, int64_t> row;
      for (int64_t i = 0; i < ps->count(); ++i) row[ps->records[i].id] = i;
      for (auto& p : a["memorisation"]["pixel"]["closest_pairs"]) {
        cv::Mat sim = cv::imread(syn_dir + "/images/" + p.value("synthetic", "") + ".png");
        auto it = row.find(p.value("real", ""));
        if (sim.empty() || it == row.end()) continue;
        pair_tiles.push_back(sim);
        pair_tiles.push_back(tile_bgr(ps->image(it->second), ps->size));
      }
    }
    if (!pair_tiles.empty())
      h << "<h3>Closest synthetic-real pairs (pixel space; synthetic left, real right)</h3>"
        << img_tag(make_grid(pair_tiles, 8), 8 * 60);
  }
  h << "<details><summary>experiment settings and command line</summary><pre>"
    << html_escape(s["config"].dump(2)) << "\n"
    << html_escape(s.value("command_line", "")) << "</pre></details>";
}

}  // namespace

Status write_html_report(const ReportOptions& o) {
  std::ostringstream h;
  h << "<!doctype html><html><head><meta charset='utf-8'><title>" << html_escape(o.title)
    << "</title><style>"
    << "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
    << "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px "
       "8px;font-size:13px}"
    << "th{background:#f3f3f3}.cap{font-size:12px;color:#555;max-width:520px}h2{border-bottom:2px "
       "solid #ddd}"
    << ".flex{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start}</style></head><body>";
  h << "<h1>" << html_escape(o.title) << "</h1>";
  h << "<p>Generated by <code>" << html_escape(o.command_line) << "</code></p>";
  if (!o.experiment.empty()) experiment_section(h, o.experiment);

  if (!o.data_summary.empty() && file_exists(o.data_summary)) {
    auto s = nlohmann::json::parse(*read_file(o.data_summary));
    h << "<h2>Dataset</h2><p>" << s.value("kind", "") << ": " << s["images"] << " images, "
      << s["lesions"] << " lesions</p><table><tr><th>field</th><th>counts</th></tr>";
    for (const char* k : {"label", "dx", "sex", "age_band", "site"}) {
      h << "<tr><td>" << k << "</td><td>";
      for (auto it = s[k].begin(); it != s[k].end(); ++it)
        h << html_escape(it.key()) << "=" << it.value() << " ";
      h << "</td></tr>";
    }
    h << "</table>";
  }

  if (!o.captions.empty() && file_exists(o.captions)) {
    auto caps = jsonl_or_empty(o.captions);
    h << "<h2>Measured concepts and captions</h2>";
    std::string sum_path = o.captions.substr(0, o.captions.rfind('.')) + ".summary.json";
    if (file_exists(sum_path)) {
      auto s = nlohmann::json::parse(*read_file(sum_path));
      if (s.contains("auto_segmentation_dice"))
        h << "<p>Automatic segmentation vs given masks: mean Dice "
          << fmt(s["auto_segmentation_dice"]["mean"]) << "</p>";
      if (s.contains("tds_auc_mel_vs_nv"))
        h << "<p>TDS (1.3 A + 0.1 B + 0.5 C + 0.5 D) separates melanoma from nevus with AUC "
          << fmt(s["tds_auc_mel_vs_nv"]) << "</p>";
      if (s.contains("colours_by_dx")) {
        h << "<table><tr><th>dx</th><th>n</th><th>mean colour count</th></tr>";
        for (auto it = s["colours_by_dx"].begin(); it != s["colours_by_dx"].end(); ++it)
          h << "<tr><td>" << it.key() << "</td><td>" << it.value()["n"] << "</td><td>"
            << fmt(it.value()["mean_colour_count"], "%.2f") << "</td></tr>";
        h << "</table>";
      }
    }
    h << "<table><tr><th>id</th><th>caption</th><th>TDS</th></tr>";
    for (size_t i = 0; i < caps.size() && i < 8; ++i)
      h << "<tr><td>" << html_escape(caps[i].value("id", "")) << "</td><td class='cap'>"
        << html_escape(caps[i].value("caption", "")) << "</td><td>"
        << (caps[i]["measured"].contains("tds") ? fmt(caps[i]["measured"]["tds"], "%.1f") : "-")
        << "</td></tr>";
    h << "</table>";
  }

  if (!o.train_run.empty()) {
    auto metrics = jsonl_or_empty(o.train_run + "/metrics.jsonl");
    Series loss{"train loss", {}}, val{"val loss (EMA)", {}}, stat{"colour-stat distance", {}};
    std::string last_grid;
    for (const auto& m : metrics) {
      double step = m.value("step", 0.0);
      if (m.contains("loss")) loss.points.emplace_back(step, m["loss"].get<double>());
      if (m.contains("val_loss_ema"))
        val.points.emplace_back(step, m["val_loss_ema"].get<double>());
      if (m.contains("colour_stat_distance"))
        stat.points.emplace_back(step, m["colour_stat_distance"].get<double>());
      if (m.contains("samples")) last_grid = m["samples"];
    }
    h << "<h2>Generator training</h2><div class='flex'>"
      << svg_line_plot({loss, val}, "flow-matching loss", "step", "MSE", 480, 300, true)
      << svg_line_plot({stat}, "sample colour statistics vs validation", "step", "distance", 420,
                       300)
      << "</div>";
    if (file_exists(o.train_run + "/options.json"))
      h << "<details><summary>training settings</summary><pre>"
        << html_escape(*read_file(o.train_run + "/options.json")) << "</pre></details>";
    if (!last_grid.empty() && file_exists(o.train_run + "/" + last_grid)) {
      cv::Mat grid = cv::imread(o.train_run + "/" + last_grid);
      h << "<p>Validation prompts at the last sampled step (" << html_escape(last_grid) << "):</p>"
        << img_tag(grid, std::min(1000, grid.cols * 2));
    }
  }

  for (const auto& dir : o.samples) {
    auto rows = jsonl_or_empty(dir + "/samples.jsonl");
    if (rows.empty()) continue;
    std::map<std::string, std::vector<std::string>> by_prompt;
    std::vector<std::string> order;
    for (const auto& r : rows) {
      std::string p = r.value("prompt", "");
      if (!by_prompt.count(p)) order.push_back(p);
      by_prompt[p].push_back(r.value("file", ""));
    }
    h << "<h2>Samples: " << html_escape(fs::path(dir).filename().string()) << "</h2>";
    if (!rows.empty())
      h << "<p>sampler " << rows[0].value("sampler", "") << ", " << rows[0]["steps"]
        << " steps, CFG " << rows[0]["cfg"] << ", checkpoint "
        << html_escape(rows[0].value("checkpoint", "")) << " (hash "
        << rows[0].value("checkpoint_hash", "") << ")</p>";
    h << "<table><tr><th>prompt</th><th>samples</th><th>concept adherence (measured on the "
         "samples)</th></tr>";
    for (const auto& p : order) {
      std::vector<cv::Mat> tiles;
      Asked asked = parse_prompt(p);
      int asym_ok = 0, asym_n = 0;
      double col_f1_num = 0, col_f1_den = 0;
      for (const auto& f : by_prompt[p]) {
        cv::Mat im = cv::imread(dir + "/" + f);
        if (im.empty()) continue;
        tiles.push_back(im);
        cv::Mat rgb;
        cv::cvtColor(im, rgb, cv::COLOR_BGR2RGB);
        Measurements m = measure_lesion(rgb, cv::Mat());
        if (!m.ok) continue;
        if (asked.asymmetry >= 0) {
          asym_n++;
          asym_ok += m.asymmetry == asked.asymmetry;
        }
        if (!asked.colours.empty())
          for (int c = 0; c < kNumColours; ++c) {
            bool a = asked.colours.count(colour_names()[c]), got = m.colour_present[c];
            col_f1_num += 2 * (a && got);
            col_f1_den += 2 * (a && got) + (a != got);
          }
      }
      std::ostringstream adh;
      if (asym_n) adh << "asymmetry as asked: " << asym_ok << "/" << asym_n << "<br>";
      if (col_f1_den > 0) {
        char b[64];
        std::snprintf(b, sizeof b, "colour F1 vs prompt: %.2f", col_f1_num / col_f1_den);
        adh << b;
      }
      if (adh.str().empty()) adh << "-";
      h << "<tr><td class='cap'>" << html_escape(p) << "</td><td>"
        << img_tag(make_grid(tiles, 8), std::min(8, (int)tiles.size()) * 66) << "</td><td>"
        << adh.str() << "</td></tr>";
    }
    h << "</table>";
  }

  if (!o.real.empty()) {
    auto ps = load_prepared(o.real);
    if (ps.ok()) {
      std::vector<cv::Mat> tiles;
      for (int64_t i = 0; i < std::min<int64_t>(16, ps->count()); ++i) {
        cv::Mat rgb(ps->size, ps->size, CV_8UC3, const_cast<uint8_t*>(ps->image(i))), bgr;
        cv::cvtColor(rgb, bgr, cv::COLOR_RGB2BGR);
        tiles.push_back(bgr);
      }
      h << "<h2>Real training images (for comparison)</h2>" << img_tag(make_grid(tiles, 8), 8 * 66);
    }
  }
  h << "</body></html>\n";
  LF_RETURN_IF_ERROR(write_file_atomic(o.out, h.str()));
  return Status::ok_status();
}

}  // namespace lf
