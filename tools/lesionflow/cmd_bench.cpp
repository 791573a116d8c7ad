// lesionflow bench: flags -> BenchOptions -> run_bench (src/pipeline/bench.cpp).
#include "cli.h"
#include "pipeline/bench.h"

namespace lf::cli {

void add_bench(CLI::App& app, GlobalOptions& g, Runner* run) {
  static BenchOptions o;
  auto* b = app.add_subcommand(
      "bench", "speed of every stage vs sgemm and vs python3-torch (one interleaved run)");
  b->add_option("--reps", o.reps, "repetitions per variant (median reported)")
      ->capture_default_str()
      ->check(kPositive);
  b->add_option("--preset", o.preset, "generator preset")->capture_default_str();
  b->add_option("--space", o.space,
                "generator on 64 px images (pixel) or on the f=4 4-channel latents (latent)")
      ->capture_default_str()
      ->check(CLI::IsMember({"pixel", "latent"}));
  b->add_option("--batch", o.batch, "generator training batch")
      ->capture_default_str()
      ->check(kPositive);
  b->add_option("--text-tokens", o.text_tokens, "caption length in tokens")
      ->capture_default_str()
      ->check(kPositive);
  b->add_option("--sample-steps", o.sample_steps, "sampler steps")
      ->capture_default_str()
      ->check(kPositive);
  b->add_option("--distilled-steps", o.distilled_steps,
                "steps of the distilled-student sampling variant")
      ->capture_default_str()
      ->check(kPositive);
  b->add_option("--cfg", o.cfg, "guidance scale of the CFG sampling variant")
      ->capture_default_str()
      ->check(kNonNegative);
  b->add_option("--data", o.data, "HAM10000 root for the prepare/caption variants")
      ->capture_default_str();
  b->add_option("--python", o.python, "python with torch")->capture_default_str();
  b->add_flag("--no-python", o.no_python, "skip the python3-torch variants");
  b->add_option("--child-memory", o.child_memory,
                "internal: measure one fine-tune mode's memory (lora|full)")
      ->group("");
  b->add_option("--child-dist", o.child_dist, "internal: one data-parallel rank")->group("");
  b->add_option("--profile", o.profile,
                "write a per-op chrome trace of two generator training steps and exit");
  b->add_option("--op-times", o.op_times,
                "time the top-level ops of N generator training steps (after 2 warm-up steps; "
                "~1 us an op, unlike --profile) and exit")
      ->check(CLI::PositiveNumber);
  b->add_option("--batch-threads", o.batch_threads,
                "shards of the generator training step, as train's --batch-threads (0 = auto)")
      ->capture_default_str()
      ->check(CLI::Range(0, 2));
  b->add_option("--only", o.only,
                "run only variants whose name matches this regex (sgemm always runs)");
  b->add_option("--out", o.out, "results directory")->capture_default_str();
  b->callback([&g, run]() {
    *run = [&g]() -> Status {
      LF_ASSIGN_OR_RETURN(nlohmann::json res, run_bench(o));
      if (o.child_memory.empty() && o.child_dist.empty()) emit_json(g, res);
      return Status::ok_status();
    };
  });
}

}  // namespace lf::cli
