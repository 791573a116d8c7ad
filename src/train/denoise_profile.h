// Where a trained generator loses its images: a denoising profile on held-out images.
#pragma once
#include <vector>

#include "lesionflow/status.h"
#include "models/autoencoder.h"
#include "train/generator.h"

namespace lf {

struct DenoiseProfileConfig {
  std::vector<double> ts = {0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0};
  int max_images = 256;
  int batch = 32;
  int steps = 20;          // Euler steps over the whole [0, 1] (a round trip from t uses t * steps)
  double cfg_scale = 4.0;  // guidance of the round trips
  uint64_t seed = 0;
};

// One noise level t, averaged over the held-out images x0 (latents or pixels, [C,s,s]).
// Spread = std over positions of one channel of one image, averaged, as a ratio to x0's.
struct DenoiseRow {
  double t = 0;
  double v_mse = 0;         // velocity MSE with the image's caption (the training loss)
  double v_mse_uncond = 0;  // with the empty caption: the gap is what the caption explains
  double x0_mse = 0;        // one-step estimate x0_hat = x_t - t v against x0
  double x0_spread = 0;     // spread of x0_hat (below 1 at large t even for a perfect network)
  // Round trip: x0 noised to t, then integrated back to 0 with guided Euler. A perfect network
  // keeps the spread at 1 from any t; where it falls, the sampler loses contrast and detail.
  double roundtrip_spread = 0;
  double roundtrip_mse = 0;
  // Latent generators: the same spreads measured on the decoded images (grey level, per image),
  // which is what a viewer sees as contrast. -1 for a pixel generator.
  double x0_pixel_spread = -1, roundtrip_pixel_spread = -1;
};

Result<std::vector<DenoiseRow>> denoise_profile(MMDiT& model, const Tokenizer& tok,
                                                const FlowConfig& flow, const CaptionedImages& val,
                                                const DenoiseProfileConfig& cfg,
                                                Autoencoder* ae = nullptr);

}  // namespace lf
