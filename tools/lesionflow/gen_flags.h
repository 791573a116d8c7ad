// Flag groups shared by the generator subcommands (train, finetune, distill, text).
#pragma once
#include "cli.h"
#include "pipeline/generator_runs.h"

namespace lf::cli {

inline void data_flags(CLI::App* s, GenDataSpec& d) {
  s->add_option("--data", d.data, "prepared cache directory (lesionflow data prepare)");
  s->add_option("--captions", d.captions,
                "captions.jsonl (id, caption); default: composed from metadata");
  s->add_option("--splits", d.splits, "splits CSV: train on 'train', validate on 'val'");
}

inline void loop_flags(CLI::App* s, LoopOptions& l) {
  s->add_option("--steps", l.steps, "total optimisation steps")
      ->capture_default_str()
      ->check(kPositive);
  s->add_option("--batch", l.batch, "batch size")->capture_default_str()->check(kPositive);
  s->add_option("--lr", l.lr, "peak learning rate")->capture_default_str()->check(kPositive);
  s->add_option("--max-minutes", l.max_minutes, "wall-clock budget; checkpoint and stop (0 = none)")
      ->check(kNonNegative);
  s->add_option("--ckpt-every", l.ckpt_every, "checkpoint every N steps")
      ->capture_default_str()
      ->check(kPositive);
  s->add_option("--keep-every", l.keep_every,
                "also keep the EMA weights of every Nth step as ema_step_NNNNNN.safetensors "
                "(0 = never; e.g. a guide for --guide)")
      ->capture_default_str()
      ->check(kNonNegative);
  s->add_option("--sample-every", l.sample_every, "validation grid every N steps")
      ->capture_default_str()
      ->check(kNonNegative);
  s->add_option("--log-every", l.log_every, "metrics every N steps")
      ->capture_default_str()
      ->check(kPositive);
  s->add_option("--val-every", l.val_every, "validation loss (EMA weights) every N steps")
      ->capture_default_str()
      ->check(kNonNegative);
  s->add_option("--stop-at-step", l.stop_at_step,
                "checkpoint and stop at step N of the --steps schedule (equal-budget comparisons)")
      ->check(kPositive);
  s->add_option("--batch-threads", l.batch_threads,
                "threads that each train on a share of every batch, the intra-op threads split "
                "among them (0 = auto: 2 on a CPU with >= 2 threads and >= 16 rows; 1 = off)")
      ->capture_default_str()
      ->check(CLI::Range(0, 2));
  s->add_flag("--resume", l.resume, "continue the run in --out exactly where it stopped");
}

inline void print_trained(const char* what, const nlohmann::json& j) {
  std::printf("%s to step %lld (%.1f img/s, last loss %.4f) -> %s\n", what,
              (long long)j["step"].get<int64_t>(), j["images_per_second"].get<double>(),
              j["last_loss"].get<double>(), j["checkpoint"].get<std::string>().c_str());
}

}  // namespace lf::cli
