// Training the autoencoder of the latent flow, and the latent cache of a prepared set.
// Loss (the MONAI Generative AutoencoderKL recipe, without a pretrained perceptual network):
//   L1(x^, x) + w_grad * L1 of the image gradients (keeps edges) + w_kl * KL(q(z|x) || N(0,1))
//   + w_feat * L1 of the features of a reference network (a fixed classifier, optional)
//   + w_gan * least-squares PatchGAN generator loss after `gan_start` steps.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "lesionflow/status.h"
#include "models/autoencoder.h"

namespace lf {

struct AETrainConfig {
  int64_t steps = 4000;
  int batch = 32;
  double lr = 4e-4;
  int64_t warmup = 100;
  double min_lr_frac = 0.1;
  double grad_clip = 1.0;
  double kl_weight = 1e-6;   // on the mean KL per latent element
  double grad_weight = 0.5;  // image-gradient L1
  double feat_weight = 0.0;  // reference-feature L1 (needs `features`)
  double gan_weight = 0.05;  // 0 = no discriminator
  int64_t gan_start = 1000;  // discriminator and its loss switch on here
  bool augment = true;       // dihedral
  int log_every = 25, val_every = 250, ckpt_every = 250;
  double max_minutes = 0;
  uint64_t seed = 0;
  std::string out;
  bool resume = false;
  // Decoder-only fine-tune (of an autoencoder loaded into `ae` by the caller): the encoder and the
  // latent shift/scale stay as they are, so the latents -- and every latent generator trained on
  // them -- keep their meaning; the file records latent_hash (the init's latent space).
  bool decoder_only = false;
  std::string latent_hash;
  // Latent-noise augmentation: the decoder sees z + sigma * N(0, 1) with sigma ~ U(0, latent_noise)
  // per image (in normalised latent units) and must still produce the clean image, so that it
  // learns to correct the small off-manifold errors of a generator's latents. 0 = off.
  double latent_noise = 0.0;
  // Decoder-only: normalised latents a generator made ([N,C,s,s], e.g. `synth --save-latents`).
  // Their decodes are shown to the PatchGAN as fakes too, with weight gen_weight on the decoder's
  // adversarial loss, so the decoder learns to turn the generator's latents (not only the
  // encoder's) into images the discriminator cannot tell from real ones. The reconstruction
  // losses on real images still anchor it. Empty = off.
  torch::Tensor gen_latents;
  std::string gen_latents_source;  // where they came from (recorded in options.json)
  double gen_weight = 0.1;
  nlohmann::json to_json() const;
};

struct AETrainResult {
  int64_t step = 0;
  double seconds = 0, images_per_second = 0;
  double val_psnr = 0, val_ssim = 0;
  bool stopped_by_budget = false;
  bool stopped_by_signal = false;
};

// Images: uint8 NHWC RGB of side `size` (pointers into a prepared cache). Run directory:
// ae.safetensors (weights + measured latent shift/scale), disc.safetensors, state.bin,
// state_disc.bin, metrics.jsonl (loss, val PSNR/SSIM), recon/step_XXXXXX.png (top: input,
// bottom: reconstruction). `features` (optional): a fixed network's features [B,F] of images in
// [-1,1].
Result<AETrainResult> train_autoencoder(
    const AETrainConfig& cfg, Autoencoder& ae, const std::vector<const uint8_t*>& train,
    const std::vector<const uint8_t*>& val, int size,
    std::function<torch::Tensor(const torch::Tensor&)> features = nullptr);

// Measures latent shift and scale on up to `n` images and stores them in the AE's config.
void calibrate_latents(Autoencoder& ae, const std::vector<const uint8_t*>& images, int size,
                       int64_t n = 2048);

struct AEEval {
  double psnr = 0, ssim = 0;
  int64_t images = 0;
};
AEEval evaluate_autoencoder(Autoencoder& ae, const std::vector<const uint8_t*>& images, int size);
// Decoded reconstructions (posterior mean, clamped) of images, as RGB uint8 rows like the input.
std::vector<uint8_t> reconstruct_images(Autoencoder& ae, const std::vector<const uint8_t*>& images,
                                        int size);

// Normalised latents of images under the 8 dihedral transforms: [N, 8, C, s, s] float16
// (index k as in dihedral()), so latent training keeps exact flip/rotation augmentation.
torch::Tensor encode_dihedral_latents(Autoencoder& ae, const std::vector<const uint8_t*>& images,
                                      int size, int variants = 8);

// The latent cache of a prepared set (DIR/latents_<ae hash>.safetensors: "latents" F16
// [N,8,C,s,s] for every record of the cache, metadata ae_hash): loaded when present and made
// by the same AE, else encoded and written.
Result<torch::Tensor> latent_cache(const std::string& prepared_dir, Autoencoder& ae,
                                   const std::string& ae_hash,
                                   const std::vector<const uint8_t*>& images, int size,
                                   bool write = true);
std::string latent_cache_path(const std::string& prepared_dir, const std::string& ae_hash);

}  // namespace lf
