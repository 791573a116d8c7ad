#include "flow/flow.h"

#include <algorithm>
#include <cmath>

namespace lf {

Result<Objective> parse_objective(const std::string& name) {
  if (name == "flow") return Objective::kFlow;
  if (name == "diffusion") return Objective::kDiffusion;
  return Status::error("unknown objective '" + name + "' (flow | diffusion)");
}
const char* objective_name(Objective o) {
  return o == Objective::kDiffusion ? "diffusion" : "flow";
}
void to_json(nlohmann::json& j, Objective o) { j = objective_name(o); }
void from_json(const nlohmann::json& j, Objective& o) {
  auto r = parse_objective(j.is_string() ? j.get<std::string>() : j.dump());
  if (!r.ok()) throw std::invalid_argument(r.status().message());
  o = *r;
}

Result<Prediction> parse_prediction(const std::string& name) {
  if (name == "velocity") return Prediction::kVelocity;
  if (name == "x") return Prediction::kX;
  return Status::error("unknown prediction '" + name + "' (velocity | x)");
}
const char* prediction_name(Prediction p) { return p == Prediction::kX ? "x" : "velocity"; }

Result<SamplerMethod> parse_sampler(const std::string& name) {
  if (name == "euler") return SamplerMethod::kEuler;
  if (name == "heun") return SamplerMethod::kHeun;
  if (name == "ab2") return SamplerMethod::kAb2;
  if (name == "dpm2m") return SamplerMethod::kDpm2m;
  if (name == "ddim") return SamplerMethod::kDdim;
  return Status::error("unknown sampler '" + name + "' (euler | heun | ab2 | dpm2m | ddim)");
}
const char* sampler_name(SamplerMethod m) {
  switch (m) {
    case SamplerMethod::kHeun:
      return "heun";
    case SamplerMethod::kAb2:
      return "ab2";
    case SamplerMethod::kDpm2m:
      return "dpm2m";
    case SamplerMethod::kDdim:
      return "ddim";
    default:
      return "euler";
  }
}

void to_json(nlohmann::json& j, Prediction p) { j = prediction_name(p); }
void from_json(const nlohmann::json& j, Prediction& p) {
  auto r = parse_prediction(j.is_string() ? j.get<std::string>() : j.dump());
  if (!r.ok()) throw std::invalid_argument(r.status().message());
  p = *r;
}
void to_json(nlohmann::json& j, SamplerMethod m) { j = sampler_name(m); }
void from_json(const nlohmann::json& j, SamplerMethod& m) {
  auto r = parse_sampler(j.is_string() ? j.get<std::string>() : j.dump());
  if (!r.ok()) throw std::invalid_argument(r.status().message());
  m = *r;
}

nlohmann::json FlowConfig::to_json() const {
  nlohmann::json j = {{"objective", objective},   {"prediction", prediction},
                      {"logit_mean", logit_mean}, {"logit_std", logit_std},
                      {"shift", shift},           {"x_pred_t_min", x_pred_t_min}};
  if (objective == Objective::kDiffusion) {
    j["ddpm_steps"] = ddpm_steps;
    j["beta_start"] = beta_start;
    j["beta_end"] = beta_end;
  }
  return j;
}

FlowConfig FlowConfig::from_json(const nlohmann::json& j) {
  FlowConfig f;
  f.prediction = j.value("prediction", f.prediction);
  f.logit_mean = j.value("logit_mean", f.logit_mean);
  f.logit_std = j.value("logit_std", f.logit_std);
  f.shift = j.value("shift", f.shift);
  f.x_pred_t_min = j.value("x_pred_t_min", f.x_pred_t_min);
  f.objective = j.value("objective", f.objective);
  f.ddpm_steps = j.value("ddpm_steps", f.ddpm_steps);
  f.beta_start = j.value("beta_start", f.beta_start);
  f.beta_end = j.value("beta_end", f.beta_end);
  return f;
}
using torch::Tensor;

double shift_time(double t, double s) { return s * t / (1.0 + (s - 1.0) * t); }

std::vector<double> ddpm_alpha_bar(const FlowConfig& cfg) {
  const int K = std::max(1, cfg.ddpm_steps);
  std::vector<double> abar(K + 1, 1.0);
  for (int k = 1; k <= K; ++k) {
    double beta = K == 1 ? cfg.beta_start
                         : cfg.beta_start + (cfg.beta_end - cfg.beta_start) * (k - 1) / (K - 1);
    abar[k] = abar[k - 1] * (1 - beta);
  }
  return abar;
}

double ddpm_flow_time(const std::vector<double>& abar, int k) {
  double a = std::sqrt(abar[k]), s = std::sqrt(1 - abar[k]);
  return s / (a + s);
}

Tensor sample_timesteps(int64_t B, const FlowConfig& cfg, at::Generator& gen) {
  if (cfg.objective == Objective::kDiffusion) {
    const int K = std::max(1, cfg.ddpm_steps);
    return torch::randint(1, K + 1, {B}, gen, torch::kInt64).to(torch::kFloat32) / K;
  }
  auto z = torch::randn({B}, gen, torch::kFloat32) * cfg.logit_std + cfg.logit_mean;
  auto t = torch::sigmoid(z);
  if (cfg.shift != 1.0) t = cfg.shift * t / (1 + (cfg.shift - 1) * t);
  return t.clamp(1e-5, 1 - 1e-5);
}

Tensor to_velocity(const Tensor& out, const Tensor& x_t, const Tensor& t, const FlowConfig& cfg) {
  if (cfg.prediction == Prediction::kX) {
    auto tt = t.clamp_min(cfg.x_pred_t_min).view({-1, 1, 1, 1});
    return (x_t - out) / tt;  // x_t = (1-t) x0 + t eps  =>  v = eps - x0 = (x_t - x0) / t
  }
  return out;
}

namespace {
// sqrt(abar) and sqrt(1 - abar) of the DDPM step k = round(t K) (clamped to 1..K), per sample.
std::pair<Tensor, Tensor> ddpm_scales(const Tensor& t, const FlowConfig& cfg) {
  auto abar = ddpm_alpha_bar(cfg);
  const int K = static_cast<int>(abar.size()) - 1;
  auto tc = t.detach().to(torch::kCPU, torch::kFloat32).contiguous();
  auto a = torch::empty({tc.size(0)}, torch::kFloat32), s = torch::empty_like(a);
  auto ta = tc.accessor<float, 1>();
  auto aa = a.accessor<float, 1>(), sa = s.accessor<float, 1>();
  for (int64_t i = 0; i < tc.size(0); ++i) {
    int k = std::clamp(static_cast<int>(std::lround(ta[i] * K)), 1, K);
    aa[i] = static_cast<float>(std::sqrt(abar[k]));
    sa[i] = static_cast<float>(std::sqrt(1 - abar[k]));
  }
  return {a.to(t.device()).view({-1, 1, 1, 1}), s.to(t.device()).view({-1, 1, 1, 1})};
}
}  // namespace

FlowBatch make_flow_batch(const Tensor& x0, const Tensor& noise, const Tensor& t) {
  auto tt = t.view({-1, 1, 1, 1});
  return {(1 - tt) * x0 + tt * noise, t, noise - x0};
}

FlowBatch make_train_batch(const Tensor& x0, const Tensor& noise, const Tensor& t,
                           const FlowConfig& cfg) {
  if (cfg.objective == Objective::kFlow) return make_flow_batch(x0, noise, t);
  auto [a, s] = ddpm_scales(t, cfg);
  return {a * x0 + s * noise, t, noise};
}

Tensor flow_loss_per_sample(const Tensor& out, const FlowBatch& b, const FlowConfig& cfg) {
  auto pred = cfg.objective == Objective::kDiffusion ? out : to_velocity(out, b.x_t, b.t, cfg);
  return (pred - b.target).pow(2).flatten(1).mean(1);
}

Tensor net_velocity(const NetFn& net, const Tensor& x, const Tensor& t, const FlowConfig& cfg) {
  if (cfg.objective == Objective::kFlow) return to_velocity(net(x, t), x, t, cfg);
  // Flow time t -> abar with s / (a + s) = t, i.e. sqrt((1 - abar) / abar) = t / (1 - t); then the
  // fractional DDPM step with that abar (log abar is decreasing in k: linear interpolation).
  auto abar = ddpm_alpha_bar(cfg);
  const int K = static_cast<int>(abar.size()) - 1;
  const double t_max = ddpm_flow_time(abar, K);
  auto tc = t.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  const int64_t B = tc.size(0);
  auto a = torch::empty({B}, torch::kFloat32), s = torch::empty_like(a), tn = torch::empty_like(a);
  auto ta = tc.accessor<double, 1>();
  auto aa = a.accessor<float, 1>(), sa = s.accessor<float, 1>(), na = tn.accessor<float, 1>();
  std::vector<double> la_k(K + 1);
  for (int k = 0; k <= K; ++k) la_k[k] = std::log(abar[k]);
  for (int64_t i = 0; i < B; ++i) {
    if (i > 0 && ta[i] == ta[i - 1]) {  // samplers pass one time for the whole batch
      aa[i] = aa[i - 1];
      sa[i] = sa[i - 1];
      na[i] = na[i - 1];
      continue;
    }
    double tv = std::clamp(ta[i], 0.0, t_max);
    double r = tv / (1 - tv), ab = 1 / (1 + r * r);
    double la = std::log(ab);
    // First k with log abar[k + 1] <= la (log abar decreases in k): abar[k] >= ab > abar[k + 1].
    int k = static_cast<int>(std::upper_bound(la_k.begin() + 1, la_k.end(), la,
                                              [](double v, double e) { return v >= e; }) -
                             la_k.begin()) -
            1;
    k = std::clamp(k, 0, K);
    double kf = k;
    if (k < K) kf = k + (la_k[k] - la) / std::max(la_k[k] - la_k[k + 1], 1e-300);
    aa[i] = static_cast<float>(std::sqrt(ab));
    sa[i] = static_cast<float>(std::sqrt(1 - ab));
    na[i] = static_cast<float>(kf / K);
  }
  auto av = a.to(x.device()).view({-1, 1, 1, 1}), sv = s.to(x.device()).view({-1, 1, 1, 1});
  auto xk = x * (av + sv);
  auto eps = net(xk, tn.to(x.device()));
  auto x0 = (xk - sv * eps) / av;
  return eps - x0;
}

std::vector<double> ddpm_sampling_schedule(const FlowConfig& cfg, int steps) {
  auto abar = ddpm_alpha_bar(cfg);
  const int K = static_cast<int>(abar.size()) - 1;
  std::vector<double> ts(steps + 1);
  for (int i = 0; i <= steps; ++i)
    ts[i] = ddpm_flow_time(abar, static_cast<int>(std::lround(K * (1.0 - double(i) / steps))));
  return ts;
}

std::vector<double> sampling_schedule(const SamplerConfig& cfg) {
  std::vector<double> ts = cfg.ts;
  if (ts.empty()) {
    ts.resize(cfg.steps + 1);
    for (int i = 0; i <= cfg.steps; ++i)
      ts[i] = shift_time(1.0 - static_cast<double>(i) / cfg.steps, cfg.shift);
  }
  if (cfg.start >= 1.0) return ts;
  std::vector<double> part{cfg.start};
  for (double t : ts)
    if (t < cfg.start) part.push_back(t);
  return part;
}

namespace {
// log-SNR of x_t = (1-t) x0 + t eps: lambda = log((1-t)/t); -inf at t=1, +inf at t=0.
double log_snr(double t) { return std::log(1.0 - t) - std::log(t); }
}  // namespace

Tensor sample_flow(const VelocityFn& v, Tensor x, const SamplerConfig& cfg,
                   const NoiseFn& fresh_noise) {
  torch::NoGradGuard ng;
  auto ts = sampling_schedule(cfg);
  const int64_t B = x.size(0);
  Tensor x0_prev, v_prev;
  double h_prev = 0, dt_prev = 0;
  for (size_t i = 0; i + 1 < ts.size(); ++i) {
    double t0 = ts[i], t1 = ts[i + 1], dt = t1 - t0;
    auto v0 = v(x, torch::full({B}, t0, x.options()));
    if (cfg.method == SamplerMethod::kDpm2m) {
      // DPM-Solver++(2M) in data-prediction form for alpha = 1-t, sigma = t:
      //   x1 = (t1/t0) x + (1-t1)(1 - e^-h) D,  h = lambda(t1) - lambda(t0),
      //   D = x0 (first step) or (1 + 1/2r) x0 - 1/2r x0_prev with r = h_prev / h.
      // One network call per step, second order from the third step on (lambda(1) = -inf makes
      // the first interval infinite, so the second step stays first order) except the last.
      auto x0 = x - t0 * v0;
      double h = log_snr(t1) - log_snr(t0);  // +inf when t0 = 1 or t1 = 0
      Tensor D = x0;
      if (x0_prev.defined() && std::isfinite(h_prev) && std::isfinite(h)) {
        double r = h_prev / h;
        D = x0 * (1 + 0.5 / r) - x0_prev * (0.5 / r);
      }  // the last step (t1 = 0, h infinite) is first order: x = x0, as in k-diffusion
      double e = std::isfinite(h) ? std::exp(-h) : 0.0;
      x = x * (t1 / t0) + D * ((1 - t1) * (1 - e));
      x0_prev = x0;
      h_prev = h;
    } else if (cfg.method == SamplerMethod::kDdim) {
      // alpha = 1-t, sigma = t. x0 and eps predicted from the velocity; the step noise c is
      // eta times the DDPM posterior's standard deviation sigma1 * sqrt(1 - (a0 s1 / (a1 s0))^2).
      auto x0 = x - t0 * v0, eps = x + (1 - t0) * v0;
      double c = 0;
      if (cfg.eta > 0 && t1 > 0) {
        double q = (1 - t0) * t1 / ((1 - t1) * t0);
        c = cfg.eta * t1 * std::sqrt(std::max(0.0, 1 - q * q));
      }
      x = (1 - t1) * x0 + std::sqrt(std::max(0.0, t1 * t1 - c * c)) * eps;
      if (c > 0) x = x + c * (fresh_noise ? fresh_noise() : torch::randn_like(x));
    } else if (cfg.method == SamplerMethod::kAb2 && v_prev.defined()) {
      // Variable-step Adams-Bashforth 2 on the velocity: one call per step, second order.
      double r = dt / dt_prev;
      x = x + dt * ((1 + 0.5 * r) * v0 - 0.5 * r * v_prev);
    } else if (cfg.method == SamplerMethod::kHeun && t1 > 0) {
      auto x1 = x + dt * v0;
      auto v1 = v(x1, torch::full({B}, t1, x.options()));
      x = x + dt * 0.5 * (v0 + v1);
    } else {
      x = x + dt * v0;
    }
    v_prev = v0;
    dt_prev = dt;
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
