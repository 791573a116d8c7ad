#include "train/denoise_profile.h"

#include <algorithm>
#include <cmath>

#include "data/images_torch.h"
#include "lesionflow/log.h"
#include "lesionflow/rng.h"
#include "train/common.h"

namespace lf {
using torch::Tensor;

namespace {
// Ratio of the mean spreads (std over positions, per image and channel) of a and b. A ratio of
// means: per-image ratios would be dominated by faint images with a small spread.
double spread_ratio(const Tensor& a, const Tensor& b) {
  return a.flatten(2).std(2).mean().item<double>() /
         std::max(1e-12, b.flatten(2).std(2).mean().item<double>());
}
// The same on decoded images, grey level: [N,3,S,S] -> [N,1,S,S].
Tensor grey(const Tensor& img) { return img.mean(1, true); }
}  // namespace

Result<std::vector<DenoiseRow>> denoise_profile(MMDiT& model, const Tokenizer& tok,
                                                const FlowConfig& flow, const CaptionedImages& val,
                                                const DenoiseProfileConfig& cfg, Autoencoder* ae) {
  const bool latent = val.latents.defined();
  const int64_t N = std::min<int64_t>(cfg.max_images, val.count());
  if (N < 2) return Status::error("denoise profile: needs at least 2 held-out images");
  for (double t : cfg.ts)
    if (!(t > 0 && t <= 1)) return Status::error("denoise profile: noise levels must be in (0, 1]");
  torch::NoGradGuard ng;
  model->eval();
  const auto& mc = model->config();
  Tensor x0_all =
      latent
          ? val.latents.narrow(0, 0, N).select(1, 0).to(torch::kFloat32)
          : images_to_tensor(
                std::vector<const uint8_t*>(val.pixels.begin(), val.pixels.begin() + N), val.size);
  auto [eids, emask] = tokenize_batch(tok, {""}, mc.max_text_len);
  TextCond uncond1 = model->encode_text(eids.narrow(1, 0, 1), emask.narrow(1, 0, 1));
  const bool decode = latent && ae != nullptr;
  auto decoded = [&](const Tensor& z) {
    std::vector<Tensor> out;
    for (int64_t s = 0; s < z.size(0); s += cfg.batch)
      out.push_back(
          grey((*ae)->decode(z.narrow(0, s, std::min<int64_t>(cfg.batch, z.size(0) - s)))));
    return torch::cat(out, 0);
  };
  Tensor px0 = decode ? decoded(x0_all) : Tensor();
  std::vector<DenoiseRow> rows;
  Progress prog("denoise-profile", static_cast<int64_t>(cfg.ts.size()), "t");
  for (size_t k = 0; k < cfg.ts.size(); ++k) {
    const double t = cfg.ts[k];
    DenoiseRow r;
    r.t = t;
    std::vector<Tensor> x0h, back;
    double v_sum = 0, vu_sum = 0;
    for (int64_t s = 0; s < N; s += cfg.batch) {
      const int64_t n = std::min<int64_t>(cfg.batch, N - s);
      Tensor x0 = x0_all.narrow(0, s, n);
      auto g = at::detail::createCPUGenerator(derive_seed(cfg.seed, Stream::kGenValidation, s));
      Tensor eps = torch::randn(x0.sizes(), g, torch::kFloat32);
      auto [ids, mask] = tokenize_batch(
          tok, std::vector<std::string>(val.captions.begin() + s, val.captions.begin() + s + n),
          mc.max_text_len);
      std::tie(ids, mask) = trim_padding(ids, mask);
      TextCond cond = model->encode_text(ids, mask), uncond = uncond1.expand(n);
      auto vel = [&](const Tensor& x, double tv, const TextCond& c) {
        auto tt = torch::full({n}, tv, torch::kFloat32);
        return net_velocity(
            [&](const Tensor& xi, const Tensor& ti) { return model->forward(xi, ti, c); }, x, tt,
            flow);
      };
      Tensor xt = (1 - t) * x0 + t * eps, target = eps - x0;
      Tensor vc = vel(xt, t, cond), vu = vel(xt, t, uncond);
      v_sum += (vc - target).pow(2).mean().item<double>() * n;
      vu_sum += (vu - target).pow(2).mean().item<double>() * n;
      x0h.push_back(xt - t * vc);
      // Round trip with guided Euler from t to 0.
      const int steps = std::max(1, static_cast<int>(std::lround(cfg.steps * t)));
      Tensor x = xt;
      for (int i = 0; i < steps; ++i) {
        double t0 = t * (1.0 - static_cast<double>(i) / steps);
        double t1 = t * (1.0 - static_cast<double>(i + 1) / steps);
        Tensor v = vel(x, t0, cond);
        if (cfg.cfg_scale != 1.0) {
          Tensor u = vel(x, t0, uncond);
          v = u + cfg.cfg_scale * (v - u);
        }
        x = x + (t1 - t0) * v;
      }
      back.push_back(x);
    }
    Tensor xh = torch::cat(x0h, 0), xb = torch::cat(back, 0);
    r.v_mse = v_sum / N;
    r.v_mse_uncond = vu_sum / N;
    r.x0_mse = (xh - x0_all).pow(2).mean().item<double>();
    r.x0_spread = spread_ratio(xh, x0_all);
    r.roundtrip_mse = (xb - x0_all).pow(2).mean().item<double>();
    r.roundtrip_spread = spread_ratio(xb, x0_all);
    if (decode) {
      r.x0_pixel_spread = spread_ratio(decoded(xh), px0);
      r.roundtrip_pixel_spread = spread_ratio(decoded(xb), px0);
    }
    rows.push_back(r);
    prog.update(static_cast<int64_t>(k + 1));
  }
  return rows;
}

}  // namespace lf
