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
  int latent_channels = 4;
  std::vector<int> widths{32, 64, 128};
  int res_blocks = 1;
  AETrainConfig train;
  std::string split = "val";  // eval
  uint64_t seed = 0;
  nlohmann::json to_json() const;
};

// {step, seconds, images_per_second, val_psnr, val_ssim, stopped_by_budget, checkpoint}
Result<nlohmann::json> run_ae_training(AERunOptions o);
// {latents (cache file), shape, images}
Result<nlohmann::json> run_ae_encoding(const AERunOptions& o);
// {split, images, psnr, ssim, ae}
Result<nlohmann::json> run_ae_evaluation(const AERunOptions& o);

}  // namespace lf
