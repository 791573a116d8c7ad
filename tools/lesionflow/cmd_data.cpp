// lesionflow data inspect | split | prepare | shift | phantom
#include <map>
#include <opencv2/imgproc.hpp>
#include <set>
#include <sstream>

#include "cli.h"
#include "lesionflow/data.h"
#include "lesionflow/io.h"
#include "lesionflow/log.h"
#include "lesionflow/phantom.h"
#include "lesionflow/report.h"
#include "pipeline/shift_run.h"

namespace lf::cli {
namespace {

struct DataOptions {
  std::string dataset = "phantom:2000";
  std::string malignant;  // dx codes, default mel,bcc,akiec,scc
  std::string out;
  // split
  double train = 0.7, val = 0.1, test = 0.2;
  int64_t scarcity = 0;
  double malignant_fraction = -1;
  // prepare
  int size = 64;
  std::string fit = "crop";
  int n = 16;
  nlohmann::json to_json() const {
    return {{"dataset", dataset},
            {"malignant", malignant},
            {"out", out},
            {"train", train},
            {"val", val},
            {"test", test},
            {"scarcity", scarcity},
            {"malignant_fraction", malignant_fraction},
            {"size", size},
            {"fit", fit},
            {"n", n}};
  }
  std::string to_string() const { return to_json().dump(); }
};

Result<Dataset> open(const DataOptions& o, const GlobalOptions& g) {
  LF_ASSIGN_OR_RETURN(LabelMap lm, LabelMap::parse(o.malignant));
  return load_dataset(o.dataset, lm, g.seed);
}

void print_counts(const nlohmann::json& s) {
  std::printf("%s: %lld images, %lld lesions, %lld with masks\n",
              s["kind"].get<std::string>().c_str(), (long long)s["images"], (long long)s["lesions"],
              (long long)s["with_mask"]);
  for (const char* k : {"label", "dx", "sex", "age_band", "site"}) {
    std::printf("  %-9s", k);
    for (auto it = s[k].begin(); it != s[k].end(); ++it)
      std::printf(" %s=%lld", it.key().c_str(), (long long)it.value());
    std::printf("\n");
  }
}

Status run_inspect(const DataOptions& o, const GlobalOptions& g) {
  LF_ASSIGN_OR_RETURN(Dataset ds, open(o, g));
  auto s = summarize(ds);
  if (g.json)
    emit_json(g, s);
  else
    print_counts(s);
  return Status::ok_status();
}

Status run_split(const DataOptions& o, const GlobalOptions& g) {
  LF_ASSIGN_OR_RETURN(Dataset ds, open(o, g));
  LF_ASSIGN_OR_RETURN(nlohmann::json j, split_dataset(ds, {o.train, o.val, o.test, g.seed}, o.out,
                                                      o.scarcity, o.malignant_fraction));
  j["options"] = o.to_json();
  if (g.json)
    emit_json(g, j);
  else {
    for (auto& [s, c] : j["counts"].items())
      std::printf("%-5s %lld images\n", s.c_str(), (long long)c["images"].get<int64_t>());
    std::printf("wrote %s\n", o.out.c_str());
    if (j.contains("scarcity_subset"))
      std::printf("wrote %s\n", j["scarcity_subset"].get<std::string>().c_str());
  }
  return Status::ok_status();
}

Status run_prepare(const DataOptions& o, const GlobalOptions& g) {
  if (o.out.empty()) return Status::error("data prepare: --out DIR is required");
  if (o.fit != "crop" && o.fit != "pad")
    return Status::error("--fit must be crop or pad, got '" + o.fit + "'");
  log_info("data prepare " + o.to_string());
  LF_ASSIGN_OR_RETURN(Dataset ds, open(o, g));
  PrepareConfig pc;
  pc.size = o.size;
  pc.fit = o.fit == "pad" ? FitMode::kPad : FitMode::kCrop;
  pc.threads = g.threads > 0 ? g.threads : 2;
  PrepareStats st;
  LF_ASSIGN_OR_RETURN(PreparedSet ps, prepare(ds, pc, &st));
  LF_RETURN_IF_ERROR(save_prepared(o.out, ps, st));
  LF_RETURN_IF_ERROR(write_file_atomic(o.out + "/options.json", o.to_json().dump(2) + "\n"));
  nlohmann::json j = {{"out", o.out},
                      {"ok", st.ok},
                      {"skipped", st.skipped},
                      {"seconds", st.seconds},
                      {"images_per_second", st.ok / std::max(st.seconds, 1e-9)}};
  if (g.json)
    emit_json(g, j);
  else
    std::printf("prepared %lld images (%lld skipped) at %dpx in %.1f s (%.0f img/s) -> %s\n",
                (long long)st.ok, (long long)st.skipped, o.size, st.seconds,
                st.ok / std::max(st.seconds, 1e-9), o.out.c_str());
  return Status::ok_status();
}

Status run_shift(ShiftRunOptions o, const DataOptions& d, const GlobalOptions& g) {
  o.dataset = d.dataset;
  o.malignant = d.malignant;
  o.out = d.out;
  o.seed = g.seed;
  o.threads = g.threads > 0 ? g.threads : 2;
  LF_ASSIGN_OR_RETURN(nlohmann::json j, run_data_shift(o));
  if (g.json)
    emit_json(g, j);
  else
    std::printf("shifted %lld images (%lld skipped) -> %s (ham10000:%s reads it back)\n",
                (long long)j["images"].get<int64_t>(), (long long)j["skipped"].get<int64_t>(),
                o.out.c_str(), o.out.c_str());
  return Status::ok_status();
}

Status run_phantom(const DataOptions& o, const GlobalOptions& g) {
  LF_RETURN_IF_ERROR(write_phantom_folder(o.out, o.n, o.size, g.seed));
  if (!g.json) std::printf("wrote %d phantoms + masks + truth.jsonl to %s\n", o.n, o.out.c_str());
  return Status::ok_status();
}

}  // namespace

void add_data(CLI::App& app, GlobalOptions& g, Runner* run) {
  static DataOptions o;
  auto* data = app.add_subcommand("data", "datasets: inspect, split, prepare, shift, phantom");
  data->require_subcommand(1);
  auto add_common = [](CLI::App* s) {
    s->add_option("--dataset", o.dataset,
                  "ham10000:PATH | isic:CSV[:IMAGE_DIR] | folder:PATH | phantom[:N]")
        ->capture_default_str();
    s->add_option("--malignant", o.malignant,
                  "dx codes counted as malignant (default mel,bcc,akiec,scc)");
  };
  auto* ins =
      data->add_subcommand("inspect", "counts per class, sex, age band, site; lesions vs images");
  add_common(ins);
  ins->callback([&g, run]() { *run = [&g]() { return run_inspect(o, g); }; });

  auto* sp = data->add_subcommand(
      "split", "lesion-grouped stratified train/val/test split (+ scarcity subset)");
  add_common(sp);
  sp->add_option("--out", o.out, "splits CSV to write")->required();
  sp->add_option("--train", o.train, "train fraction")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  sp->add_option("--val", o.val, "validation fraction")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  sp->add_option("--test", o.test, "test fraction")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  sp->add_option("--scarcity", o.scarcity, "also draw N training images (written next to --out)")
      ->check(kNonNegative);
  sp->add_option("--malignant-fraction", o.malignant_fraction,
                 "class ratio of the scarcity subset (-1: natural)");
  sp->callback([&g, run]() { *run = [&g]() { return run_split(o, g); }; });

  auto* pr = data->add_subcommand("prepare", "decode + resize once into a tensor cache");
  add_common(pr);
  pr->add_option("--out", o.out, "cache directory")->required();
  pr->add_option("--size", o.size, "output side in pixels")
      ->capture_default_str()
      ->check(kPositive);
  pr->add_option("--fit", o.fit, "crop | pad (keep aspect ratio)")
      ->capture_default_str()
      ->check(CLI::IsMember({"crop", "pad"}));
  pr->callback([&g, run]() { *run = [&g]() { return run_prepare(o, g); }; });

  static ShiftRunOptions so;
  auto* sh = data->add_subcommand(
      "shift",
      "a shifted copy of a split (zoomed out, squashed, colour cast, vignette, ruler, pen, hair, "
      "blur/JPEG) in HAM10000 layout, to test classifiers under acquisition shift");
  add_common(sh);
  sh->add_option("--splits", so.splits, "splits CSV (default: every image)");
  sh->add_option("--split", so.split, "which split")->capture_default_str();
  sh->add_option("--shifts", so.kinds,
                 "all | comma list of zoom, squash, cast, vignette, ruler, pen, hair, blur")
      ->capture_default_str();
  sh->add_option("--probability", so.probability, "chance of each shift per image")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  sh->add_option("--min-shifts", so.min_kinds, "at least this many shifts per image")
      ->capture_default_str()
      ->check(kNonNegative);
  sh->add_option("--out", o.out, "new output folder")->required();
  sh->callback([&g, run]() { *run = [&g]() { return run_shift(so, o, g); }; });

  auto* ph = data->add_subcommand("phantom", "render phantom lesions with ground truth as PNGs");
  ph->add_option("--out", o.out, "output directory")->required();
  ph->add_option("--n", o.n, "how many")->capture_default_str()->check(kPositive);
  ph->add_option("--size", o.size, "side in pixels")->capture_default_str()->check(kPositive);
  ph->callback([&g, run]() { *run = [&g]() { return run_phantom(o, g); }; });
}

}  // namespace lf::cli
