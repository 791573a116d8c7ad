// lesionflow data inspect | split | prepare | shift | phantom: flags -> the options structs of
// pipeline/data_runs.h and pipeline/shift_run.h -> printed summaries.
#include <tuple>

#include "cli.h"
#include "pipeline/data_runs.h"
#include "pipeline/shift_run.h"

namespace lf::cli {
namespace {

template <class Opt>
void add_dataset_flags(CLI::App* s, Opt& o) {
  s->add_option("--dataset", o.dataset,
                "ham10000:PATH | isic:CSV[:IMAGE_DIR] | folder:PATH | phantom[:N]")
      ->capture_default_str();
  s->add_option("--malignant", o.malignant,
                "dx codes counted as malignant (default mel,bcc,akiec,scc)");
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

}  // namespace

void add_data(CLI::App& app, GlobalOptions& g, Runner* run) {
  auto* data = app.add_subcommand("data", "datasets: inspect, split, prepare, shift, phantom");
  data->require_subcommand(1);

  static DataInspectOptions in;
  auto* ins =
      data->add_subcommand("inspect", "counts per class, sex, age band, site; lesions vs images");
  add_dataset_flags(ins, in);
  bind(ins, in, g, run, run_data_inspect, print_counts);

  static DataSplitOptions sp;
  auto* spc = data->add_subcommand(
      "split", "lesion-grouped stratified train/val/test split (+ scarcity subset)");
  add_dataset_flags(spc, sp);
  spc->add_option("--out", sp.out, "splits CSV to write")->required();
  for (auto [flag, v, what] : {std::tuple{"--train", &sp.train, "train fraction"},
                               std::tuple{"--val", &sp.val, "validation fraction"},
                               std::tuple{"--test", &sp.test, "test fraction"}})
    spc->add_option(flag, *v, what)->capture_default_str()->check(CLI::Range(0.0, 1.0));
  spc->add_option("--scarcity", sp.scarcity, "also draw N training images (written next to --out)")
      ->check(kNonNegative);
  spc->add_option("--malignant-fraction", sp.malignant_fraction,
                  "class ratio of the scarcity subset (-1: natural)");
  bind(spc, sp, g, run, run_data_split, [](const nlohmann::json& j) {
    for (auto& [s, c] : j["counts"].items())
      std::printf("%-5s %lld images\n", s.c_str(), (long long)c["images"].get<int64_t>());
    std::printf("wrote %s\n", j["out"].get<std::string>().c_str());
    if (j.contains("scarcity_subset"))
      std::printf("wrote %s\n", j["scarcity_subset"].get<std::string>().c_str());
  });

  static DataPrepareOptions pr;
  auto* prc = data->add_subcommand("prepare", "decode + resize once into a tensor cache");
  add_dataset_flags(prc, pr);
  prc->add_option("--out", pr.out, "cache directory")->required();
  prc->add_option("--size", pr.size, "output side in pixels")
      ->capture_default_str()
      ->check(kPositive);
  prc->add_option("--fit", pr.fit, "crop | pad (keep aspect ratio)")
      ->capture_default_str()
      ->check(CLI::IsMember({"crop", "pad"}));
  bind(prc, pr, g, run, run_data_prepare, [](const nlohmann::json& j) {
    std::printf("prepared %lld images (%lld skipped) at %dpx in %.1f s (%.0f img/s) -> %s\n",
                (long long)j["ok"].get<int64_t>(), (long long)j["skipped"].get<int64_t>(),
                j["size"].get<int>(), j["seconds"].get<double>(),
                j["images_per_second"].get<double>(), j["out"].get<std::string>().c_str());
  });

  static ShiftRunOptions so;
  auto* sh = data->add_subcommand(
      "shift",
      "a shifted copy of a split (zoomed out, squashed, colour cast, vignette, ruler, pen, hair, "
      "blur/JPEG) in HAM10000 layout, to test classifiers under acquisition shift");
  add_dataset_flags(sh, so);
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
  sh->add_option("--out", so.out, "new output folder")->required();
  bind(sh, so, g, run, run_data_shift, [](const nlohmann::json& j) {
    const auto out = j["out"].get<std::string>();
    std::printf("shifted %lld images (%lld skipped) -> %s (ham10000:%s reads it back)\n",
                (long long)j["images"].get<int64_t>(), (long long)j["skipped"].get<int64_t>(),
                out.c_str(), out.c_str());
  });

  static PhantomOptions ph;
  auto* phc = data->add_subcommand("phantom", "render phantom lesions with ground truth as PNGs");
  phc->add_option("--out", ph.out, "output directory")->required();
  phc->add_option("--n", ph.n, "how many")->capture_default_str()->check(kPositive);
  phc->add_option("--size", ph.size, "side in pixels")->capture_default_str()->check(kPositive);
  phc->add_flag("--structures", ph.structures,
                "draw dermoscopic structures (network, globules, streaks, veil, regression)");
  bind(phc, ph, g, run, run_data_phantom, [](const nlohmann::json& j) {
    std::printf("wrote %d phantoms + masks + truth.jsonl to %s\n", j["n"].get<int>(),
                j["out"].get<std::string>().c_str());
  });
}

}  // namespace lf::cli
