// Captioning of a dataset (measured ABC(D) concepts + metadata -> captions.jsonl with a summary)
// and concept measurement of a folder of images.
#include <filesystem>
#include <map>
#include <mutex>
#include <opencv2/imgproc.hpp>
#include <sstream>

#include "lesionflow/captions.h"
#include "lesionflow/concepts.h"
#include "lesionflow/data.h"
#include "lesionflow/io.h"
#include "lesionflow/llm.h"
#include "lesionflow/log.h"
#include "lesionflow/metrics.h"
#include "lesionflow/parallel.h"
#include "lesionflow/record_pixels.h"

namespace lf {
namespace {

struct Item {
  nlohmann::json line;
  Measurements m;
  double dice = -1;
};

double dice(const cv::Mat& a, const cv::Mat& b) {
  double s = cv::countNonZero(a) + cv::countNonZero(b);
  return s > 0 ? 2.0 * cv::countNonZero(a & b) / s : 1.0;
}

}  // namespace

nlohmann::json CaptionRunOptions::to_json() const {
  return {{"dataset", dataset},
          {"malignant", malignant},
          {"out", out},
          {"mask", mask},
          {"template", template_file},
          {"limit", limit},
          {"px_per_mm", px_per_mm},
          {"llm_url", llm_url},
          {"llm_model", llm_model},
          {"llm_timeout", llm_timeout},
          {"seed", seed},
          {"threads", threads}};
}

Result<nlohmann::json> caption_dataset(const CaptionRunOptions& o) {
  if (o.mask != "given" && o.mask != "auto") return Status::error("--mask must be given or auto");
  log_info("caption " + o.to_json().dump());
  LF_ASSIGN_OR_RETURN(LabelMap lm, LabelMap::parse(o.malignant));
  LF_ASSIGN_OR_RETURN(Dataset ds, load_dataset(o.dataset, lm, o.seed));
  std::string tmpl;
  if (!o.template_file.empty()) {
    LF_ASSIGN_OR_RETURN(tmpl, read_file(o.template_file));
  }
  while (!tmpl.empty() && (tmpl.back() == '\n' || tmpl.back() == '\r')) tmpl.pop_back();
  std::unique_ptr<LlmRewriter> llm;
  if (!o.llm_url.empty())
    llm = std::make_unique<LlmRewriter>(
        LlmConfig{o.llm_url, o.llm_model, o.llm_timeout, o.out + ".llm_cache.jsonl"});
  const int64_t n = o.limit > 0 ? std::min<int64_t>(o.limit, ds.records.size()) : ds.records.size();
  std::vector<Item> items(n);
  std::mutex mu;  // log lines from the workers
  Progress prog("caption", n, "img");
  MeasureConfig mc;
  mc.px_per_mm = o.px_per_mm;
  parallel_for_each(
      n, o.threads > 0 ? o.threads : 2,
      [&](int64_t i) {
        const Record& r = ds.records[i];
        cv::Mat rgb, mask;
        Status st = load_record_pixels(r, 128, &rgb, &mask);
        std::string err = st.ok() ? "" : st.message();
        Item& it = items[i];
        if (!err.empty()) {
          it.line = {{"id", r.id}, {"error", err}};
        } else {
          cv::Mat given = mask;
          it.m = measure_lesion(rgb, o.mask == "given" ? given : cv::Mat(), mc);
          if (!given.empty() && given.size() == rgb.size()) {
            cv::Mat auto_mask;
            segment_lesion(rgb, &auto_mask);
            it.dice = dice(auto_mask, given > 127);
          }
          CaptionFacts f = facts_from_measurements(r, it.m);
          auto rep = structured_report(f, it.m);
          uint64_t variant = std::hash<std::string>{}(r.id + std::to_string(o.seed)) | 1;
          std::string caption =
              tmpl.empty() ? compose_caption(f, variant) : apply_template(tmpl, f);
          if (llm) caption = llm->rewrite(f, caption);
          it.line = {{"id", r.id},
                     {"caption", caption},
                     {"caption_canonical", compose_caption(f, 0)},
                     {"report", rep},
                     {"report_prose", report_prose(rep)},
                     {"measured", it.m.to_json()},
                     {"mask_source", it.m.mask_source},
                     {"confidence", it.m.mask_confidence},
                     {"dx", r.dx},
                     {"label", r.label}};
          if (!it.m.warning.empty()) {
            it.line["warning"] = it.m.warning;
            std::lock_guard<std::mutex> lock(mu);
            log_warn(r.id + ": " + it.m.warning);
          }
          if (it.dice >= 0) it.line["auto_mask_dice"] = it.dice;
        }
      },
      &prog, 50);
  prog.finish();
  // Write + summarise.
  std::ostringstream os;
  std::map<std::string, std::vector<double>> colours_by_dx;
  std::vector<double> dices, tds;
  std::vector<int> melnv;
  int64_t errors = 0, warnings = 0;
  for (auto& it : items) {
    os << it.line.dump() << '\n';
    if (it.line.contains("error")) {
      errors++;
      continue;
    }
    if (it.line.contains("warning")) warnings++;
    std::string dx = it.line["dx"];
    if (it.m.ok) colours_by_dx[dx].push_back(it.m.colour_count);
    if (it.dice >= 0) dices.push_back(it.dice);
    if (it.m.ok && (dx == "mel" || dx == "nv")) {
      tds.push_back(it.m.tds);
      melnv.push_back(dx == "mel");
    }
  }
  LF_RETURN_IF_ERROR(write_file_atomic(o.out, os.str()));
  nlohmann::json llm_stats;
  if (llm) {
    LF_RETURN_IF_ERROR(llm->save_cache());
    auto st = llm->stats();
    llm_stats = {{"requests", st.requests},
                 {"rewritten", st.rewritten},
                 {"cached", st.cached},
                 {"failed_fell_back", st.failed},
                 {"rejected_fell_back", st.rejected}};
    log_info("LLM rewrite: " + llm_stats.dump());
  }
  nlohmann::json s = {{"images", n},
                      {"errors", errors},
                      {"warnings", warnings},
                      {"seconds", prog.elapsed_seconds()},
                      {"options", o.to_json()}};
  if (llm) s["llm"] = llm_stats;
  if (!dices.empty()) {
    std::sort(dices.begin(), dices.end());
    double mean = 0;
    for (double d : dices) mean += d;
    s["auto_segmentation_dice"] = {{"mean", mean / dices.size()},
                                   {"p10", dices[dices.size() / 10]},
                                   {"median", dices[dices.size() / 2]},
                                   {"p90", dices[dices.size() * 9 / 10]},
                                   {"n", dices.size()}};
  }
  for (auto& [dx, v] : colours_by_dx) {
    double mean = 0;
    std::vector<int> hist(7, 0);
    for (double c : v) {
      mean += c;
      hist[std::min(6, static_cast<int>(c))]++;
    }
    s["colours_by_dx"][dx] = {
        {"mean_colour_count", mean / v.size()}, {"histogram_0_to_6", hist}, {"n", v.size()}};
  }
  if (!tds.empty()) s["tds_auc_mel_vs_nv"] = roc_auc(tds, melnv);
  std::string summary = o.out.substr(0, o.out.rfind('.')) + ".summary.json";
  LF_RETURN_IF_ERROR(write_file_atomic(summary, s.dump(2) + "\n"));
  s["out"] = o.out;
  s["summary"] = summary;
  return s;
}

Result<nlohmann::json> measure_image_folder(const std::string& images,
                                            const std::string& out_path) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(images)) return Status::error(images + ": not a directory");
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(images)) {
    if (e.is_regular_file() && is_image_path(e.path().string()))
      if (e.path().filename().string().find("grid") == std::string::npos &&
          e.path().filename().string().find("_mask") == std::string::npos)
        files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  std::ostringstream os;
  int64_t bad = 0;
  for (const auto& f : files) {
    auto img = read_image(f.string());
    if (!img.ok()) {
      log_warn("skipped: " + img.status().message());
      bad++;
      continue;
    }
    cv::Mat rgb;
    cv::cvtColor(*img, rgb, cv::COLOR_BGR2RGB);
    auto m = measure_lesion(rgb, cv::Mat());
    os << nlohmann::json{{"file", f.filename().string()}, {"measured", m.to_json()}}.dump() << '\n';
  }
  if (files.empty())
    return Status::error(images +
                         ": no images to measure (looked for the formats OpenCV reads: .png, .jpg, "
                         ".tif, .bmp, .webp, ...)");
  if (bad == static_cast<int64_t>(files.size()))
    return Status::error(images + ": none of the " + std::to_string(files.size()) +
                         " images could be read");
  const std::string out = out_path.empty() ? images + "/concepts.jsonl" : out_path;
  LF_RETURN_IF_ERROR(write_file_atomic(out, os.str()));
  return nlohmann::json{
      {"measured", static_cast<int64_t>(files.size()) - bad}, {"skipped", bad}, {"out", out}};
}

}  // namespace lf
