// lesionflow finetune | distill | lora merge: flags -> options structs of
// pipeline/generator_runs.h -> printed summaries.
#include "adapters/lora.h"
#include "gen_flags.h"

namespace lf::cli {
namespace {

struct MergeOptions {
  std::string base, out;
  std::vector<std::string> adapters;
};

}  // namespace

void add_adapt(CLI::App& app, GlobalOptions& g, Runner* run) {
  static FinetuneRunOptions ft;
  auto* f =
      app.add_subcommand("finetune", "adapt a trained generator to a subset with LoRA (or --full)");
  data_flags(f, ft.data);
  f->add_option("--base", ft.base, "base generator checkpoint")->required();
  f->add_option("--ae", ft.ae,
                "autoencoder of a latent base (default: the file its checkpoint names, beside it)");
  f->add_option("--filter", ft.filter,
                "train on images with dx=, site=, sex= or age=VALUE (repeatable, all must match)");
  f->add_option("--limit", ft.limit, "at most N training images (seeded choice)")
      ->capture_default_str()
      ->check(kNonNegative);
  f->add_option("--rank", ft.rank, "LoRA rank")->capture_default_str()->check(kPositive);
  f->add_option("--alpha", ft.alpha, "LoRA alpha (scale alpha/rank)")
      ->capture_default_str()
      ->check(kNonNegative);
  f->add_option("--targets", ft.targets, "attn,mlp,mod,io,text or re:REGEX")->capture_default_str();
  f->add_option("--rank-for", ft.rank_for, "per-group rank, e.g. mod=4 (repeatable)");
  f->add_option(
       "--lora-dropout", ft.lora_dropout,
       "rank dropout on the LoRA path: each step drops each rank component with probability P")
      ->check(CLI::Range(0.0, 0.95))
      ->capture_default_str();
  f->add_flag("--full", ft.full, "full fine-tune of every weight (for comparison)");
  loop_flags(f, ft.loop);
  f->add_option("--out", ft.out,
                "run directory (adapter: ema.safetensors / checkpoint.safetensors)")
      ->required();
  bind(f, ft, g, run, run_finetune, [](const nlohmann::json& j) {
    std::printf(
        "%s fine-tune: %lld trainable parameters, %lld steps, %.2f img/s, peak RSS %ld MB\n",
        j["mode"].get<std::string>().c_str(), (long long)j["trainable_parameters"].get<int64_t>(),
        (long long)j["steps"].get<int64_t>(), j["images_per_second"].get<double>(),
        j["peak_rss_mb"].get<long>());
  });

  static DistillRunOptions di;
  auto* d = app.add_subcommand("distill",
                               "distil a generator into a few-step student that needs no guidance");
  data_flags(d, di.data);
  d->add_option("--teacher", di.teacher,
                "teacher generator checkpoint (the student starts as a copy)")
      ->required();
  d->add_option(
      "--ae", di.ae,
      "autoencoder of a latent teacher (default: the file its checkpoint names, beside it)");
  d->add_option("--guidance", di.distill.guidance, "teacher CFG scale baked into the student")
      ->capture_default_str()
      ->check(kNonNegative);
  d->add_option("--student-steps", di.distill.student_steps, "Euler steps the student samples with")
      ->capture_default_str()
      ->check(kPositive);
  d->add_option("--substeps", di.distill.substeps,
                "teacher Euler steps per student step (1 = guidance distillation only)")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  d->add_option("--grid-fraction", di.distill.grid_fraction,
                "share of training timesteps on the student's step grid")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  loop_flags(d, di.loop);
  d->add_option("--out", di.out, "run directory (student: ema.safetensors)")->required();
  bind(d, di, g, run, run_distill, [](const nlohmann::json& j) { print_trained("distilled", j); });

  static MergeOptions mo;
  auto* lo = app.add_subcommand("lora", "LoRA adapter tools");
  lo->require_subcommand(1);
  auto* mg = lo->add_subcommand("merge", "merge adapters into a new full generator checkpoint");
  mg->add_option("--base", mo.base, "base generator checkpoint")->required();
  mg->add_option("--adapter", mo.adapters, "adapter FILE[:STRENGTH] (repeatable)")->required();
  mg->add_option("--out", mo.out, "merged checkpoint")->required();
  mg->callback([&g, run]() {
    *run = [&g]() -> Status {
      std::vector<std::pair<std::string, double>> ads;
      for (auto& s : mo.adapters) ads.push_back(split_strength(s));
      LF_RETURN_IF_ERROR(merge_lora(mo.base, ads, mo.out));
      if (!g.json) std::printf("merged %zu adapter(s) into %s\n", ads.size(), mo.out.c_str());
      return Status::ok_status();
    };
  });
}

}  // namespace lf::cli
