// lesionflow fd, synth, experiment: flags -> options structs of pipeline/classify_runs.h and
// pipeline/experiment_run.h -> printed summaries.
#include <cmath>

#include "cli.h"
#include "pipeline/classify_runs.h"
#include "pipeline/experiment_run.h"

namespace lf::cli {
namespace {

void print_cells(const nlohmann::json& summary) {
  std::printf("%-5s %-15s %6s %6s  %-15s %-15s %-15s %-15s\n", "arch", "arm", "real", "synth",
              "AUC", "accuracy", "bal. accuracy", "worst-group BA");
  for (auto& cell : summary["cells"]) {
    auto f = [&](const char* m) {
      char b[32];
      std::snprintf(b, sizeof b, "%.3f±%.3f",
                    cell[m]["mean"].is_number() ? cell[m]["mean"].get<double>() : NAN,
                    cell[m]["sd"].is_number() ? cell[m]["sd"].get<double>() : NAN);
      return std::string(b);
    };
    std::printf("%-5s %-15s %6lld %6lld  %-15s %-15s %-15s %-15s\n",
                cell["arch"].get<std::string>().c_str(), cell["arm"].get<std::string>().c_str(),
                (long long)cell["real_images"].get<int64_t>(),
                (long long)cell["synthetic_size"].get<int64_t>(), f("auc").c_str(),
                f("accuracy").c_str(), f("balanced_accuracy").c_str(),
                f("worst_group_balanced_accuracy").c_str());
  }
  if (!summary["cells"].empty() && summary["cells"][0].contains("dx_balanced_accuracy")) {
    std::printf("diagnosis task (%zu classes): balanced accuracy, mean ± sd over seeds\n",
                summary["cells"][0]["dx_recall"].size());
    for (auto& cell : summary["cells"]) {
      if (!cell.contains("dx_balanced_accuracy")) continue;
      const auto& m = cell["dx_balanced_accuracy"];
      std::printf("%-5s %-15s %6lld %6lld  %.3f±%.3f", cell["arch"].get<std::string>().c_str(),
                  cell["arm"].get<std::string>().c_str(),
                  (long long)cell["real_images"].get<int64_t>(),
                  (long long)cell["synthetic_size"].get<int64_t>(),
                  m["mean"].is_number() ? m["mean"].get<double>() : NAN,
                  m["sd"].is_number() ? m["sd"].get<double>() : NAN);
      if (summary["paired"].contains("dx_pooled"))
        for (auto& p : summary["paired"]["dx_pooled"])
          if (p["arch"] == cell["arch"] && p["real_size"] == cell["real_size"] &&
              p["arm"] == cell["arm"])
            std::printf("  vs real %+.3f [%+.3f, %+.3f]", p["seed_averaged"]["diff"].get<double>(),
                        p["seed_averaged"]["ci_lo"].get<double>(),
                        p["seed_averaged"]["ci_hi"].get<double>());
      std::printf("\n");
    }
  }
  std::printf("experiment summary: %s/summary.json (%.1f min)\n",
              summary["out"].get<std::string>().c_str(), summary["minutes"].get<double>());
}

struct ExperimentFlags {
  std::string config, out;
  std::vector<std::string> test_datasets;
  double budget_minutes = 0;
};

}  // namespace

void add_synth(CLI::App& app, GlobalOptions& g, Runner* run) {
  static FdOptions f;
  auto* fdc = app.add_subcommand(
      "fd", "Frechet distance of generated PNGs to (a filtered subset of) a real set");
  fdc->add_option("--features", f.features,
                  "classifier whose penultimate layer gives the features (default: the shipped "
                  "reference network)");
  fdc->add_option("--data", f.data, "prepared cache of the real set")->required();
  fdc->add_option("--splits", f.splits, "splits CSV (default: all images)");
  fdc->add_option("--split", f.split, "split name")->capture_default_str();
  fdc->add_option("--filter", f.filter, "dx=, site=, sex= or age=VALUE (repeatable)");
  fdc->add_option("--images", f.images, "directory of generated PNGs")->required();
  bind(fdc, f, g, run, run_fd, [](const nlohmann::json& j) {
    std::printf(
        "FD %.4f (mean %.4f + covariance %.4f), pixel-statistics distance %.4f, mean "
        "P(malignant) %.3f generated vs %.3f real (%lld generated vs %lld real images)\n",
        j["fd"].get<double>(), j["fd_parts"]["mean"].get<double>(),
        j["fd_parts"]["covariance"].get<double>(), j["pixel_stat_distance"].get<double>(),
        j["p_malignant_generated"].get<double>(), j["p_malignant_real"].get<double>(),
        (long long)j["generated_images"].get<int64_t>(),
        (long long)j["real_images"].get<int64_t>());
    if (j["diversity"]["same_prompt"].is_number())
      std::printf(
          "diversity (mean MS-SSIM, lower = more varied): %.3f within a prompt (%d prompts), "
          "%.3f between random real images\n",
          j["diversity"]["same_prompt"].get<double>(), j["diversity"]["prompts"].get<int>(),
          j["diversity"]["real_pairs"].get<double>());
  });

  static SynthRunOptions s;
  auto* y = app.add_subcommand("synth", "plan and generate a balanced synthetic training set");
  y->add_option("--generator", s.generator, "generator checkpoint (ema.safetensors)");
  // Not CLI-required, so that `synth export` parses without them; run_synth names what is missing.
  y->add_option("--data", s.data, "prepared cache of the real dataset (required)");
  y->add_option("--splits", s.splits, "splits CSV (the plan follows the train split; required)");
  y->add_option("--captions", s.captions, "captions.jsonl (prompts are drawn from these)");
  y->add_option("--total", s.plan.total, "synthetic images")
      ->capture_default_str()
      ->check(kPositive);
  y->add_option(
       "--balance", s.plan.balance,
       "label | dx (equal classes) | fill-label | fill-dx (top up the short classes) | none | "
       "real (the real training mix of dx x subgroup cells: for fidelity against real images)")
      ->capture_default_str();
  y->add_option("--flatten", s.plan.flatten, "cell share ~ real_count^flatten within a class")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  y->add_option("--vary", s.plan.vary,
                "draw these prompt attributes anew per image instead of keeping the source "
                "caption's: size (small / medium-sized / large lesion) and/or skin (Fitzpatrick "
                "I-VI), uniformly; the manifest records them")
      ->delimiter(',')
      ->check(CLI::IsMember({"size", "skin"}));
  y->add_option("--emphasis", s.plan.emphasis,
                "which real lesions lend their captions: none (uniformly within a cell) | "
                "abcd-discordant (toward featureless malignant and atypical benign lesions: "
                "weight exp(strength x z), z = standardised TDS, negated for malignant) | "
                "abcd-discordant-malignant (the malignant sources only)")
      ->capture_default_str()
      ->check(CLI::IsMember(emphasis_modes()));
  y->add_option("--emphasis-strength", s.plan.emphasis_strength,
                "abcd-discordant: the tilt per standard deviation of TDS (0 = uniform)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 10.0));
  y->add_option("--omit-phrases", s.plan.omit,
                "take these phrases out of every prompt (comma-separated), e.g. \"pigment "
                "network\" when the captions were measured by a newer detector than the "
                "generator was trained on (synth warns when it can tell)")
      ->delimiter(',');
  // Sampler flags not given: a distilled checkpoint's recommended settings, else the defaults of
  // use_default_sampling() (as `sample`).
  use_default_sampling(s.gen);
  add_sampler_flags(y, s.gen, s.given);
  y->add_option("--batch", s.gen.batch, "images per forward batch")
      ->capture_default_str()
      ->check(kPositive);
  y->add_option("--strength", s.gen.sampler.start,
                "image-to-image: start each image from its source real image noised to t = "
                "STRENGTH (SDEdit; 1 = from pure noise, lower = closer to the real image)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  y->add_option("--adapter-for", s.adapter_for,
                "DX=FILE[:STRENGTH]: make the images of diagnosis DX with this LoRA adapter of "
                "the generator (finetune --filter dx=DX; repeatable, one per dx; the manifest "
                "records each image's adapter)");
  y->add_flag("--plan-only", s.plan_only, "write plan.json and stop");
  y->add_flag("--save-latents", s.save_latents,
              "latent generators: also write each image's latent to latents/<id>.safetensors "
              "(for ae train --gen-latents)");
  y->add_option("--out", s.out, "output directory (required)");
  static SynthExportOptions e;
  auto* yx = y->add_subcommand(
      "export",
      "write a synthetic set as an ImageFolder (root/<class>/*.png) or a HAM10000-style folder "
      "(images/ + HAM10000_metadata.csv) that ham10000: and folder: read back");
  yx->add_option("--synthetic", e.synthetic, "synthetic set directory (made by synth)")->required();
  yx->add_option("--format", e.format, "imagefolder | ham")
      ->required()
      ->check(CLI::IsMember({"imagefolder", "ham"}));
  yx->add_option("--data", e.data,
                 "prepared cache of the real set: age, sex and site of each prompt's source image "
                 "(ham format; without it they come from the subgroup or are unknown)");
  yx->add_option("--out", e.out, "new output directory")->required();
  bind(yx, e, g, run, run_synth_export, [](const nlohmann::json& j) {
    std::printf("exported %zu images (%s) -> %s\n", j["images"].get<size_t>(),
                j["format"].get<std::string>().c_str(), j["out"].get<std::string>().c_str());
  });
  y->callback([&g, run, yx]() {
    if (yx->parsed()) return;  // `synth export` set its own runner
    *run = [&g]() -> Status {
      s.seed = g.seed;
      LF_ASSIGN_OR_RETURN(nlohmann::json j, run_synth(s));
      if (g.json)
        emit_json(g, j);
      else if (s.plan_only)
        std::printf("planned %zu images -> %s\n", j["planned"].get<size_t>(),
                    j["plan"].get<std::string>().c_str());
      else
        std::printf("synth: %lld generated now (%.2f img/s), %zu planned -> %s\n",
                    (long long)j["generated_now"].get<int64_t>(),
                    j["images_per_second"].get<double>(), j["planned"].get<size_t>(),
                    j["manifest"].get<std::string>().c_str());
      return Status::ok_status();
    };
  });

  static ExperimentFlags x;
  auto* ex = app.add_subcommand(
      "experiment",
      "generator -> synthetic set -> classifiers (real, real+synthetic, synthetic) -> audit");
  ex->add_option("--config", x.config, "experiment JSON (see docs/experiment.md)")->required();
  ex->add_option("--out", x.out, "output directory (overrides the config)");
  ex->add_option("--test-dataset", x.test_datasets,
                 "extra test datasets (evaluated, never trained on)");
  ex->add_option("--budget-minutes", x.budget_minutes, "scale classifier epochs to fit")
      ->capture_default_str()
      ->check(kNonNegative);
  ex->callback([&g, run]() {
    *run = [&g]() -> Status {
      ExperimentOptions o;
      LF_ASSIGN_OR_RETURN(o.config, read_experiment_config(x.config));
      o.config_name = x.config;
      o.out = x.out;
      o.test_datasets = x.test_datasets;
      o.budget_minutes = x.budget_minutes;
      o.seed = g.seed;
      o.command_line = g.command_line;
      LF_ASSIGN_OR_RETURN(nlohmann::json summary, run_experiment(o));
      if (g.json)
        emit_json(g, summary["cells"]);
      else
        print_cells(summary);
      return Status::ok_status();
    };
  });
}

}  // namespace lf::cli
