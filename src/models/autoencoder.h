// Convolutional autoencoder (the latent space of the latent rectified flow, as Flux's VAE is for
// Flux): image [B,3,S,S] in [-1,1] <-> latent [B,C,S/f,S/f] with f = 2^(widths.size()-1).
//   encoder: conv_in -> per level (res blocks, stride-2 conv) -> mid res block -> GN/SiLU/conv ->
//   (mean, logvar) decoder: conv_in -> mid res block -> per level (res blocks, nearest x2 + conv)
//   -> GN/SiLU/conv
// A small KL term keeps the posterior a Gaussian; the cached latent of an image is the posterior
// mean. Latents are normalised with a shift and scale measured on the training split (stored in
// the config and so in the checkpoint metadata): z = (mean - shift) * scale has unit variance.
#pragma once
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "lesionflow/status.h"
#include "pch_torch.h"

namespace lf {

struct AEConfig {
  int image_size = 64;                      // input side in pixels
  int channels = 3;                         // image channels
  int latent_channels = 4;                  // C of the latent
  std::vector<int> widths = {32, 64, 128};  // width per resolution level; f = 2^(levels-1)
  int res_blocks = 1;                       // residual blocks per level (encoder and decoder)
  double latent_shift = 0.0;                // measured after training: mean of the posterior means
  double latent_scale = 1.0;                // measured after training: 1 / their standard deviation
  int factor() const { return 1 << (static_cast<int>(widths.size()) - 1); }
  int latent_size() const { return image_size / factor(); }
  nlohmann::json to_json() const;
  static Result<AEConfig> from_json(const nlohmann::json& j);
};

class AutoencoderImpl : public torch::nn::Module {
 public:
  explicit AutoencoderImpl(const AEConfig& c);
  // x: [B,3,S,S] in [-1,1] -> posterior mean and log-variance [B,C,s,s] (unnormalised)
  std::pair<torch::Tensor, torch::Tensor> encode_posterior(const torch::Tensor& x);
  // unnormalised latent [B,C,s,s] -> image [B,3,S,S] (not clamped)
  torch::Tensor decode_raw(const torch::Tensor& z);
  // Normalised latents (what the flow model sees): posterior mean, shifted and scaled.
  torch::Tensor encode(const torch::Tensor& x);
  torch::Tensor decode(const torch::Tensor& z);  // normalised latent -> image in [-1,1] (clamped)
  AEConfig& config() { return c_; }
  const AEConfig& config() const { return c_; }

 private:
  AEConfig c_;
  torch::nn::Sequential enc_{nullptr}, dec_{nullptr};
};
TORCH_MODULE(Autoencoder);

// PatchGAN discriminator (least-squares GAN on 4x4-stride-2 patches), for sharper decodes.
class PatchDiscriminatorImpl : public torch::nn::Module {
 public:
  explicit PatchDiscriminatorImpl(int channels = 3, int width = 32);
  torch::Tensor forward(const torch::Tensor& x);  // [B,3,S,S] -> patch scores [B,1,S/4,S/4]

 private:
  torch::nn::Sequential net_{nullptr};
};
TORCH_MODULE(PatchDiscriminator);

// Checkpoint: safetensors with metadata format "lesionflow.ae.v1" and "config" (incl. the latent
// shift/scale); `hash` of a loaded file identifies it for generator checkpoints and latent caches.
Status save_autoencoder(const std::string& path, Autoencoder& ae, int64_t step,
                        const std::map<std::string, std::string>& extra = {});
struct LoadedAutoencoder {
  Autoencoder model{nullptr};
  std::string hash;
  // The latent space's identity: the hash of the file whose encoder (and latent shift/scale) this
  // one keeps -- its own hash, or metadata "latent_hash" after a decoder-only fine-tune. Latent
  // generators and latent caches are bound to it, so a better decoder serves them unchanged.
  std::string latent_hash;
  std::string path;
  std::map<std::string, std::string> metadata;
};
Result<LoadedAutoencoder> load_autoencoder(const std::string& path);

// Reconstruction quality, images in [-1,1]: mean PSNR (dB, peak 1 on [0,1]) and SSIM (11x11
// Gaussian window, sigma 1.5, per channel) over a batch.
double psnr(const torch::Tensor& a, const torch::Tensor& b);
double ssim(const torch::Tensor& a, const torch::Tensor& b);

}  // namespace lf
