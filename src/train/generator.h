// Training and sampling of the text-to-image generator.
#pragma once
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "flow/flow.h"
#include "lesionflow/data.h"
#include "lesionflow/status.h"
#include "lesionflow/tokenizer.h"
#include "models/mmdit.h"

namespace lf {

// Images (uint8 NHWC, all the same side) with one caption each.
struct CaptionedImages {
  int size = 0;
  std::vector<const uint8_t*> pixels;
  std::vector<std::string> captions;
  int64_t count() const { return static_cast<int64_t>(pixels.size()); }
};
// [N,3,S,S] float in [-1,1]
torch::Tensor images_to_tensor(const std::vector<const uint8_t*>& px, int size);
// [-1,1] float [N,3,S,S] -> uint8 NHWC RGB
std::vector<uint8_t> tensor_to_images(const torch::Tensor& x);

struct GenTrainConfig {
  int64_t steps = 2000;        // total planned steps (LR schedule spans these)
  int64_t stop_at_step = -1;   // stop early (simulated interruption; -1 = never)
  int batch = 32;
  double lr = 3e-4;
  double weight_decay = 0.0;
  int64_t warmup = 100;
  double min_lr_frac = 0.1;    // cosine decays to lr * min_lr_frac
  double grad_clip = 1.0;
  double ema_decay = 0.999;
  double caption_dropout = 0.1;  // empty caption for classifier-free guidance
  bool augment = true;         // flips + 90-degree rotations
  int log_every = 25;
  int ckpt_every = 250;
  int sample_every = 500;      // validation grid with EMA weights (0 = never)
  int val_every = 250;         // validation loss (0 = never)
  double max_minutes = 0;      // wall-clock budget (0 = none): checkpoint and stop
  uint64_t seed = 0;
  std::string out;             // run directory
  bool resume = false;
  FlowConfig flow;
  std::vector<std::string> val_prompts;  // for sample grids
  nlohmann::json to_json() const;
};

struct GenTrainResult {
  int64_t step = 0;
  double last_loss = 0;
  double seconds = 0;
  double images_per_second = 0;
  bool stopped_by_budget = false;
};

// What a training run optimises. Default (nullptr): every parameter of the model, with full
// generator checkpoints. LoRA fine-tuning passes its adapter tensors, a hook that applies them
// to the frozen base before every forward, and its own save/load of the adapter file; a frozen
// text encoder passes the other parameters and keeps the default (full checkpoint) save/load.
struct TrainTarget {
  std::vector<torch::Tensor> params;
  std::function<void()> before_forward;
  std::function<Status(const std::string& path, int64_t step, const std::string& kind)> save;
  std::function<Status(const std::string& path)> load;
};

// Run directory: checkpoint.safetensors (weights), ema.safetensors (EMA weights),
// state.bin (optimizer + step; all other randomness is derived from (seed, step)),
// metrics.jsonl, samples/step_XXXXXX.png, options.json.
Result<GenTrainResult> train_generator(const GenTrainConfig& cfg, MMDiT& model, const Tokenizer& tok,
                                       const CaptionedImages& train, const CaptionedImages* val,
                                       const TrainTarget* target = nullptr);

Status save_generator(const std::string& path, MMDiT& model, const Tokenizer& tok, int64_t step,
                      const FlowConfig& flow, const std::string& kind);
struct LoadedGenerator {
  MMDiT model{nullptr};
  std::shared_ptr<Tokenizer> tok;
  FlowConfig flow;
  int64_t step = 0;
  std::string hash;  // content hash of the checkpoint file
  std::map<std::string, std::string> metadata;
};
Result<LoadedGenerator> load_generator(const std::string& path);

struct GenerateConfig {
  SamplerConfig sampler;
  double cfg_scale = 4.0;  // 1 = no guidance (one forward per step)
  // Guidance only while lo <= t <= hi (Kynkaenniemi et al. 2024, guidance in a limited
  // interval); outside it one conditional forward per step. Default: every step.
  double cfg_t_lo = 0.0, cfg_t_hi = 1.0;
  int batch = 16;
};
// One image per (prompt, seed) pair; the noise of image i depends only on seeds[i].
torch::Tensor generate(MMDiT& model, const Tokenizer& tok, const FlowConfig& flow,
                       const std::vector<std::string>& prompts, const std::vector<uint64_t>& seeds,
                       const GenerateConfig& gc);

// Drop trailing columns that are padding in every row (exact: padded keys are masked out).
std::pair<torch::Tensor, torch::Tensor> trim_padding(const torch::Tensor& ids, const torch::Tensor& mask);
// Tokenize a list of captions: ids [N,T] int64, mask [N,T] bool.
std::pair<torch::Tensor, torch::Tensor> tokenize_batch(const Tokenizer& tok,
                                                       const std::vector<std::string>& texts, int max_len);

}  // namespace lf
