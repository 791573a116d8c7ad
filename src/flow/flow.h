// Rectified flow: x_t = (1 - t) x0 + t eps, velocity target eps - x0. Independent of any network:
// samplers only see velocity(x_t, t).
#pragma once
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "lesionflow/status.h"
#include "pch_torch.h"

namespace lf {

// What the network outputs: the velocity eps - x0, or the clean image x0 (turned into a velocity).
enum class Prediction { kVelocity, kX };
Result<Prediction> parse_prediction(const std::string& name);  // "velocity" | "x"
const char* prediction_name(Prediction p);
// Sampler of the flow ODE (see sample_flow).
enum class SamplerMethod { kEuler, kHeun, kAb2, kDpm2m, kDdim };
Result<SamplerMethod> parse_sampler(
    const std::string& name);  // "euler" | "heun" | "ab2" | "dpm2m" | "ddim"
const char* sampler_name(SamplerMethod m);
// What is trained: the rectified flow (x_t = (1-t) x0 + t eps, the network's output turned into
// the velocity eps - x0), or DDPM diffusion (x_k = sqrt(abar_k) x0 + sqrt(1 - abar_k) eps on a
// linear beta schedule of K steps, the network predicts eps; Ho et al. 2020), the baseline the
// flow is compared against. Samplers integrate the flow ODE in both cases: a diffusion network is
// queried through the rescaling x_flow = x_k / (a + s), t = s / (a + s) (a = sqrt(abar),
// s = sqrt(1 - abar)), under which Euler is exactly DDIM (eta 0) and the ddim sampler with eta is
// DDIM with eta.
enum class Objective { kFlow, kDiffusion };
Result<Objective> parse_objective(const std::string& name);  // "flow" | "diffusion"
const char* objective_name(Objective o);
// JSON as their names; an unknown name throws std::invalid_argument with the parse error.
void to_json(nlohmann::json& j, Objective o);
void from_json(const nlohmann::json& j, Objective& o);
void to_json(nlohmann::json& j, Prediction p);
void from_json(const nlohmann::json& j, Prediction& p);
void to_json(nlohmann::json& j, SamplerMethod m);
void from_json(const nlohmann::json& j, SamplerMethod& m);

struct FlowConfig {
  Objective objective = Objective::kFlow;
  Prediction prediction =
      Prediction::kVelocity;  // flow: velocity | x (network outputs the clean image)
  double logit_mean = 0.0;    // logit-normal timestep sampling: t = sigmoid(N(m, s))
  double logit_std = 1.0;
  double shift = 1.0;          // timestep shift t' = s t / (1 + (s - 1) t); 1 = none
  double x_pred_t_min = 0.05;  // clamp t when turning an x-prediction into a velocity
  // diffusion only: K noise levels, betas linear from beta_start to beta_end (DDPM's values).
  // The network sees t = k / K; training draws k uniformly from 1..K.
  int ddpm_steps = 1000;
  double beta_start = 1e-4, beta_end = 0.02;
  nlohmann::json to_json() const;
  static FlowConfig from_json(const nlohmann::json& j);  // absent keys keep their defaults
};

// t in (0,1), [B]: flow: drawn logit-normal then shifted; diffusion: k / K with k uniform in 1..K.
torch::Tensor sample_timesteps(int64_t B, const FlowConfig& cfg, at::Generator& gen);
// abar_k for k = 0..K (abar_0 = 1) of the DDPM schedule.
std::vector<double> ddpm_alpha_bar(const FlowConfig& cfg);
// The flow time t = s / (a + s) of DDPM step k (0..K).
double ddpm_flow_time(const std::vector<double>& abar, int k);
double shift_time(double t, double shift);
// Network output -> velocity estimate.
torch::Tensor to_velocity(const torch::Tensor& out, const torch::Tensor& x_t,
                          const torch::Tensor& t, const FlowConfig& cfg);

// The network runs on (x, t) in its own space and time and returns its raw output.
using NetFn = std::function<torch::Tensor(const torch::Tensor& x, const torch::Tensor& t)>;
// The velocity of the flow path at (x, t) from the network: to_velocity for a flow network; for a
// diffusion network, x is rescaled to the DDPM step whose noise share s / (a + s) is t (k
// interpolated in log abar; t above the last step's is held there), eps is predicted and turned
// into the velocity eps - x0 with x0 = (x_k - s eps) / a.
torch::Tensor net_velocity(const NetFn& net, const torch::Tensor& x, const torch::Tensor& t,
                           const FlowConfig& cfg);

struct FlowBatch {
  torch::Tensor x_t, t;  // the network's input and time
  torch::Tensor target;  // what the loss compares with: the velocity eps - x0 (flow; the output
                         // of to_velocity) or the noise eps (diffusion; the raw output)
};
// Flow path x_t = (1-t) x0 + t noise with the velocity target.
FlowBatch make_flow_batch(const torch::Tensor& x0, const torch::Tensor& noise,
                          const torch::Tensor& t);
// The objective's training batch: make_flow_batch (flow), or x_k = a x0 + s noise with k = t K
// rounded and the noise as target (diffusion).
FlowBatch make_train_batch(const torch::Tensor& x0, const torch::Tensor& noise,
                           const torch::Tensor& t, const FlowConfig& cfg);
// Per-sample MSE of the objective: [B]. Flow: between the velocity implied by `out` and the
// target; diffusion: between `out` (the predicted noise) and the noise.
torch::Tensor flow_loss_per_sample(const torch::Tensor& out, const FlowBatch& b,
                                   const FlowConfig& cfg);

// ---- samplers ----
using VelocityFn = std::function<torch::Tensor(const torch::Tensor& x_t, const torch::Tensor& t)>;
// ab2: Adams-Bashforth 2 on the velocity (variable step, Euler first step); dpm2m:
// DPM-Solver++(2M) in data-prediction form. Both second order at the cost of Euler.
// ddim: DDIM on the path x_t = (1-t) x0 + t eps with stochasticity eta: each step predicts x0
// and eps, then draws x_t1 from the forward process' posterior whose variance is eta^2 times
// DDPM's (eta = 0: deterministic, equal to Euler; eta = 1: DDPM ancestral sampling). Fresh noise
// re-injected at every step lets the sampler correct a model whose velocity field is off
// (Karras et al. 2022, EDM section 4).
struct SamplerConfig {
  SamplerMethod method =
      SamplerMethod::kEuler;  // euler | heun | ab2 | dpm2m | ddim (ab2, dpm2m: 1 call per step)
  int steps = 20;
  double shift = 1.0;      // timestep shift of the sampling schedule
  double eta = 0.0;        // ddim only: 0 = deterministic .. 1 = ancestral
  std::vector<double> ts;  // explicit decreasing schedule ending at 0 (steps + 1 entries); empty:
                           // uniform in t from 1 with `shift`
  // Where integration starts: 1 = from pure noise; s < 1 = from an image noised to t = s
  // (SDEdit, Meng et al. 2022): the schedule's times below s, preceded by s itself.
  double start = 1.0;
};
// The flow times of DDIM's schedule for a diffusion network: steps + 1 DDPM steps spaced evenly
// from K down to 0.
std::vector<double> ddpm_sampling_schedule(const FlowConfig& cfg, int steps);
// Decreasing schedule from 1 to 0 with steps+1 entries (cfg.ts when given); with start < 1 only
// its times below start, preceded by start (so about steps * start steps).
std::vector<double> sampling_schedule(const SamplerConfig& cfg);
// Fresh standard normal noise shaped like the state, for stochastic samplers.
using NoiseFn = std::function<torch::Tensor()>;
// Integrates dx/dt = v from t=1 (noise) to t=0. Number of velocity calls: steps (euler, ab2, dpm2m,
// ddim) or 2*steps-1 (heun). A stochastic ddim (eta > 0) draws its step noise from `fresh_noise`
// (default: torch::randn_like on the global generator).
torch::Tensor sample_flow(const VelocityFn& v, torch::Tensor noise, const SamplerConfig& cfg,
                          const NoiseFn& fresh_noise = nullptr);

// Loss per timestep bin (10 bins over [0,1]) for logging.
struct BinnedLoss {
  std::vector<double> sum = std::vector<double>(10, 0.0);
  std::vector<int64_t> count = std::vector<int64_t>(10, 0);
  void add(const torch::Tensor& t, const torch::Tensor& per_sample);
  std::vector<double> means() const;
  void reset() { *this = BinnedLoss(); }
};

}  // namespace lf
