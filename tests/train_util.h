// Helpers for tests that run the generator's training loop.
#pragma once
#include <string>

#include "test_util.h"
#include "train/generator.h"

namespace lf::test {
// A short, quiet run in a fresh temp directory `name`: no checkpoints, grids or validation.
inline GenTrainConfig short_run(const std::string& name, int64_t steps, int batch, double lr,
                                int64_t warmup) {
  GenTrainConfig tc;
  tc.steps = steps;
  tc.batch = batch;
  tc.lr = lr;
  tc.warmup = warmup;
  tc.ckpt_every = tc.sample_every = tc.val_every = 0;
  tc.out = tmp_dir(name);
  return tc;
}
}  // namespace lf::test
