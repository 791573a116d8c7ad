// Captioning of a dataset (measured ABC(D) concepts + metadata -> captions.jsonl with a summary)
// and concept measurement of a folder of images.
#include <filesystem>
#include <functional>
#include <map>
#include <opencv2/imgproc.hpp>
#include <sstream>

#include "lesionflow/captions.h"
#include "lesionflow/concepts.h"
#include "lesionflow/data.h"
#include "lesionflow/io.h"
#include "lesionflow/jsonl.h"
#include "lesionflow/llm.h"
#include "lesionflow/log.h"
#include "lesionflow/metrics.h"
#include "lesionflow/parallel.h"
#include "lesionflow/record_pixels.h"
#include "lesionflow/stop.h"

namespace lf {
namespace {

double dice(const cv::Mat& a, const cv::Mat& b) {
  double s = cv::countNonZero(a) + cv::countNonZero(b);
  return s > 0 ? 2.0 * cv::countNonZero(a & b) / s : 1.0;
}

// One resumable pass over items, as caption and concepts measure make it: the journal at
// OUT.partial.jsonl (OUT's folder created); the records of an interrupted run with the same
// header put back in their places (item i is keys[i] in field `key`); the other items made by
// make(i) on `threads` workers with progress, each record journaled as it is made. SIGTERM /
// Ctrl-C lets the items in flight finish and returns an error that says how to resume.
struct JournaledRun {
  std::vector<nlohmann::json> lines;  // one record per item, in item order
  int64_t resumed = 0;
  double seconds = 0;
  std::unique_ptr<JsonlJournal> journal;  // finish() once the real output is written
};

Result<JournaledRun> run_journaled(const std::string& out, const nlohmann::json& header,
                                   const std::vector<std::string>& keys, const char* key,
                                   int threads, const std::string& label, int64_t every,
                                   const std::function<nlohmann::json(int64_t)>& make) {
  const std::string out_dir = std::filesystem::path(out).parent_path().string();
  if (!out_dir.empty()) LF_RETURN_IF_ERROR(make_dirs(out_dir));
  std::vector<nlohmann::json> done;
  JournaledRun run;
  LF_ASSIGN_OR_RETURN(run.journal, JsonlJournal::open(out + ".partial.jsonl", header, &done));
  const int64_t n = static_cast<int64_t>(keys.size());
  run.lines.assign(n, nlohmann::json());
  std::map<std::string, int64_t> index;
  for (int64_t i = 0; i < n; ++i) index[keys[i]] = i;
  for (auto& j : done) {
    auto it = index.find(j.value(key, ""));
    if (it != index.end() && run.lines[it->second].is_null()) {
      run.lines[it->second] = std::move(j);
      ++run.resumed;
    }
  }
  std::vector<int64_t> todo;
  for (int64_t i = 0; i < n; ++i)
    if (run.lines[i].is_null()) todo.push_back(i);
  StopOnSignal stop_guard;  // SIGTERM / Ctrl-C: finish the items in flight, keep the journal
  Progress prog(label, n, "img", run.resumed);
  parallel_for_each(
      static_cast<int64_t>(todo.size()), threads > 0 ? threads : 2,
      [&](int64_t k) {
        if (stop_requested()) return;
        run.lines[todo[k]] = make(todo[k]);
        run.journal->append(run.lines[todo[k]]);  // an error is kept for status() below
      },
      &prog, every);
  LF_RETURN_IF_ERROR(run.journal->status());
  if (stop_requested())
    return Status::error(label + ": interrupted; the finished images are kept in " +
                         run.journal->path() + " and the same command resumes from them");
  prog.finish();
  run.seconds = prog.elapsed_seconds();
  return run;
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
  // The journal's header: the options minus threads (they do not change a record).
  nlohmann::json run_id = o.to_json();
  run_id.erase("threads");
  std::vector<std::string> keys;
  for (int64_t i = 0; i < n; ++i) keys.push_back(ds.records[i].id);
  MeasureConfig mc;
  mc.px_per_mm = o.px_per_mm;
  LF_ASSIGN_OR_RETURN(
      JournaledRun run,
      run_journaled(o.out, {{"command", "caption"}, {"options", run_id}}, keys, "id", o.threads,
                    "caption", 50, [&](int64_t i) -> nlohmann::json {
                      const Record& r = ds.records[i];
                      cv::Mat rgb, mask;
                      Status st = load_record_pixels(r, 128, &rgb, &mask);
                      if (!st.ok()) return {{"id", r.id}, {"error", st.message()}};
                      cv::Mat given = mask;
                      Measurements m =
                          measure_lesion(rgb, o.mask == "given" ? given : cv::Mat(), mc);
                      CaptionFacts f = facts_from_measurements(r, m);
                      auto rep = structured_report(f, m);
                      uint64_t variant =
                          std::hash<std::string>{}(r.id + std::to_string(o.seed)) | 1;
                      std::string caption =
                          tmpl.empty() ? compose_caption(f, variant) : apply_template(tmpl, f);
                      if (llm) caption = llm->rewrite(f, caption);
                      nlohmann::json line = {{"id", r.id},
                                             {"caption", caption},
                                             {"caption_canonical", compose_caption(f, 0)},
                                             {"report", rep},
                                             {"report_prose", report_prose(rep)},
                                             {"measured", m.to_json()},
                                             {"mask_source", m.mask_source},
                                             {"confidence", m.mask_confidence},
                                             {"dx", r.dx},
                                             {"label", r.label}};
                      if (!m.warning.empty()) {
                        line["warning"] = m.warning;
                        log_warn(r.id + ": " + m.warning);
                      }
                      if (!given.empty() && given.size() == rgb.size()) {
                        cv::Mat auto_mask;
                        segment_lesion(rgb, &auto_mask);
                        line["auto_mask_dice"] = dice(auto_mask, given > 127);
                      }
                      return line;
                    }));
  // Write + summarise (from the records, so a resumed run summarises the same way).
  std::ostringstream os;
  std::map<std::string, std::vector<double>> colours_by_dx;
  std::vector<double> dices, tds;
  std::vector<int> melnv;
  int64_t errors = 0, warnings = 0;
  for (const auto& line : run.lines) {
    os << line.dump() << '\n';
    if (line.contains("error")) {
      errors++;
      continue;
    }
    if (line.contains("warning")) warnings++;
    const std::string dx = line["dx"];
    const auto& m = line["measured"];
    const bool ok = m.value("ok", false);
    if (ok) colours_by_dx[dx].push_back(m.value("colour_count", 0.0));
    if (line.contains("auto_mask_dice")) dices.push_back(line["auto_mask_dice"].get<double>());
    if (ok && (dx == "mel" || dx == "nv")) {
      tds.push_back(m.value("tds", 0.0));
      melnv.push_back(dx == "mel");
    }
  }
  LF_RETURN_IF_ERROR(write_file_atomic(o.out, os.str()));
  LF_RETURN_IF_ERROR(run.journal->finish());
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
  nlohmann::json s = {{"images", n},          {"resumed", run.resumed}, {"errors", errors},
                      {"warnings", warnings}, {"seconds", run.seconds}, {"options", o.to_json()}};
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

Result<nlohmann::json> measure_image_folder(const std::string& images, const std::string& out_path,
                                            int threads, bool recursive) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(images)) return Status::error(images + ": not a directory");
  std::vector<fs::path> files;
  auto consider = [&](const fs::directory_entry& e) {
    const std::string name = e.path().filename().string();
    if (e.is_regular_file() && is_image_path(e.path().string()) &&
        name.find("grid") == std::string::npos && name.find("_mask") == std::string::npos)
      files.push_back(e.path());
  };
  std::error_code ec;
  if (recursive) {
    for (const auto& e : fs::recursive_directory_iterator(images, ec)) consider(e);
  } else {
    for (const auto& e : fs::directory_iterator(images, ec)) consider(e);
  }
  if (ec) return Status::error(images + ": cannot list: " + ec.message());
  std::sort(files.begin(), files.end());
  if (files.empty())
    return Status::error(images +
                         ": no images to measure (looked for the formats OpenCV reads: .png, .jpg, "
                         ".tif, .bmp, .webp, ...)");
  const std::string out = out_path.empty() ? images + "/concepts.jsonl" : out_path;
  // Keyed by the path relative to `images`; a skipped image is journaled as {file, error}.
  std::vector<std::string> keys;
  for (const auto& f : files) keys.push_back(fs::relative(f, images).string());
  LF_ASSIGN_OR_RETURN(
      JournaledRun run,
      run_journaled(
          out,
          {{"command", "concepts measure"},
           {"images", fs::absolute(images).string()},
           {"recursive", recursive}},
          keys, "file", threads, "concepts measure", 16, [&](int64_t i) -> nlohmann::json {
            auto img = read_image(files[i].string());
            if (!img.ok()) {
              log_warn("skipped: " + img.status().message());
              return {{"file", keys[i]}, {"error", img.status().message()}};
            }
            cv::Mat rgb;
            cv::cvtColor(*img, rgb, cv::COLOR_BGR2RGB);
            return {{"file", keys[i]}, {"measured", measure_lesion(rgb, cv::Mat()).to_json()}};
          }));
  const int64_t n = static_cast<int64_t>(files.size());
  std::ostringstream os;
  int64_t bad = 0;
  for (const auto& line : run.lines) {
    if (line.contains("error")) {
      bad++;
      continue;
    }
    os << line.dump() << '\n';
  }
  if (bad == n)
    return Status::error(images + ": none of the " + std::to_string(n) + " images could be read");
  LF_RETURN_IF_ERROR(write_file_atomic(out, os.str()));
  LF_RETURN_IF_ERROR(run.journal->finish());
  return nlohmann::json{
      {"measured", n - bad}, {"skipped", bad}, {"resumed", run.resumed}, {"out", out}};
}

}  // namespace lf
