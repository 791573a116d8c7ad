#include "flow/flow.h"

namespace lf {
using torch::Tensor;

double shift_time(double t, double s) { return s * t / (1.0 + (s - 1.0) * t); }

Tensor sample_timesteps(int64_t B, const FlowConfig& cfg, at::Generator& gen) {
  auto z = torch::randn({B}, gen, torch::kFloat32) * cfg.logit_std + cfg.logit_mean;
  auto t = torch::sigmoid(z);
  if (cfg.shift != 1.0) t = cfg.shift * t / (1 + (cfg.shift - 1) * t);
  return t.clamp(1e-5, 1 - 1e-5);
}

Tensor to_velocity(const Tensor& out, const Tensor& x_t, const Tensor& t, const FlowConfig& cfg) {
  if (cfg.prediction == "x") {
    auto tt = t.clamp_min(cfg.x_pred_t_min).view({-1, 1, 1, 1});
    return (x_t - out) / tt;  // x_t = (1-t) x0 + t eps  =>  v = eps - x0 = (x_t - x0) / t
  }
  return out;
}

FlowBatch make_flow_batch(const Tensor& x0, const Tensor& noise, const Tensor& t) {
  auto tt = t.view({-1, 1, 1, 1});
  return {(1 - tt) * x0 + tt * noise, t, noise - x0};
}

Tensor flow_loss_per_sample(const Tensor& out, const FlowBatch& b, const FlowConfig& cfg) {
  auto v = to_velocity(out, b.x_t, b.t, cfg);
  return (v - b.target_v).pow(2).flatten(1).mean(1);
}

std::vector<double> sampling_schedule(const SamplerConfig& cfg) {
  std::vector<double> ts(cfg.steps + 1);
  for (int i = 0; i <= cfg.steps; ++i) ts[i] = shift_time(1.0 - static_cast<double>(i) / cfg.steps, cfg.shift);
  return ts;
}

Tensor sample_flow(const VelocityFn& v, Tensor x, const SamplerConfig& cfg) {
  torch::NoGradGuard ng;
  auto ts = sampling_schedule(cfg);
  const int64_t B = x.size(0);
  for (int i = 0; i < cfg.steps; ++i) {
    double t0 = ts[i], t1 = ts[i + 1], dt = t1 - t0;
    auto v0 = v(x, torch::full({B}, t0));
    if (cfg.method == "heun" && t1 > 0) {
      auto x1 = x + dt * v0;
      auto v1 = v(x1, torch::full({B}, t1));
      x = x + dt * 0.5 * (v0 + v1);
    } else {
      x = x + dt * v0;
    }
  }
  return x;
}

void BinnedLoss::add(const Tensor& t, const Tensor& per_sample) {
  auto tc = t.detach().to(torch::kCPU).contiguous();
  auto lc = per_sample.detach().to(torch::kCPU).to(torch::kFloat64).contiguous();
  auto ta = tc.accessor<float, 1>();
  auto la = lc.accessor<double, 1>();
  for (int64_t i = 0; i < tc.size(0); ++i) {
    int bin = std::min(9, static_cast<int>(ta[i] * 10));
    sum[bin] += la[i];
    count[bin]++;
  }
}

std::vector<double> BinnedLoss::means() const {
  std::vector<double> m(10);
  for (int i = 0; i < 10; ++i) m[i] = count[i] ? sum[i] / count[i] : std::nan("");
  return m;
}

}  // namespace lf
