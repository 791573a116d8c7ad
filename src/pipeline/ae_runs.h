// The autoencoder stages of the latent flow as library calls: train on a prepared cache's train
// split, cache the dihedral latents of a prepared cache, evaluate reconstruction on a split.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "lesionflow/status.h"
#include "train/autoencoder.h"

namespace lf {

struct AERunOptions {
  std::string data, splits, out, ae;
  std::string init;  // train: start from this autoencoder (with train.decoder_only: a new decoder)
  int latent_channels = 4;
  std::vector<int> widths{32, 64, 128};
  int res_blocks = 1;
  AETrainConfig train;
  std::string split = "val";  // eval
  // eval --fd N: HAM-FD of N reconstructed images of the split vs the test split, beside the same
  // N images unreconstructed (how much of a latent generator's HAM-FD the autoencoder alone costs).
  int fd_images = 0;
  std::string features;  // the feature network (default: the shipped reference network)
  // train --gen-latents: a synthetic set made with `synth --save-latents` (or its latents/ folder)
  std::string gen_latents;
  uint64_t seed = 0;
  nlohmann::json to_json() const;
};

// The latents in DIR/latents (or DIR) written by `synth --save-latents`, stacked [N,C,s,s];
// every file must belong to the latent space `latent_hash`.
Result<torch::Tensor> load_saved_latents(const std::string& dir, const std::string& latent_hash);
// {step, seconds, images_per_second, val_psnr, val_ssim, stopped_by_budget, checkpoint}
Result<nlohmann::json> run_ae_training(AERunOptions o);
// {latents (cache file), shape, images}
Result<nlohmann::json> run_ae_encoding(const AERunOptions& o);
// {split, images, psnr, ssim, ae} (+ fd {real, reconstructed, *_ci, images, test_images} with --fd)
Result<nlohmann::json> run_ae_evaluation(const AERunOptions& o);

}  // namespace lf
