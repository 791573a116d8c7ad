// Helpers for tests that run the generator's training loop.
#pragma once
#include <string>

#include "test_util.h"
#include "train/generator.h"

namespace lf::test {
// A one-block MMDiT on 8x8 inputs of 4 channels (latents; set channels = 3 for pixels) with
// 2x2 patches, for tests that need a real network in milliseconds.
inline MMDiTConfig latent_micro(int vocab) {
  MMDiTConfig c = MMDiTConfig::preset("tiny");
  c.image_size = 8;
  c.channels = 4;
  c.patch = 2;
  c.dim = 32;
  c.heads = 2;
  c.double_blocks = 1;
  c.single_blocks = 1;
  c.refine_channels = 8;
  c.text_dim = 32;
  c.text_layers = 1;
  c.text_heads = 2;
  c.max_text_len = 64;
  c.vocab_size = vocab;
  c.prediction = Prediction::kVelocity;
  return c;
}

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
