// Training and sampling of the text-to-image generator.
#pragma once
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/shard_threads.h"
#include "data/images_torch.h"
#include "flow/flow.h"
#include "lesionflow/data.h"
#include "lesionflow/status.h"
#include "lesionflow/tokenizer.h"
#include "models/autoencoder.h"
#include "models/generator_io.h"
#include "models/mmdit.h"
#include "train/dist.h"

namespace lf {

// Images (uint8 NHWC, all the same side) with one caption each. For a latent generator,
// `latents` holds each image's normalised autoencoder latents under the 8 dihedral transforms
// ([N, 8, C, s, s], see encode_dihedral_latents): the model is trained on those, and the pixels
// serve the colour statistics of the sample grids.
struct CaptionedImages {
  int size = 0;
  std::vector<const uint8_t*> pixels;
  std::vector<std::string> captions;
  torch::Tensor latents;
  int64_t count() const { return static_cast<int64_t>(pixels.size()); }
};

struct GenerateConfig {
  SamplerConfig sampler;
  // 1 = no guidance (one forward per step). 2 is the library's default (training grids, tests): it
  // was the best guidance of the shipped v2 model (HAM-FD 5.6 against 11.9 at 3 and 20.7 at 4).
  // `sample`, `synth` and `serve` start from use_default_sampling() instead (CFG 1.25, below).
  double cfg_scale = 2.0;
  // Guidance only while lo <= t <= hi (Kynkaenniemi et al. 2024, guidance in a limited
  // interval); outside it one conditional forward per step. Default here: every step;
  // use_default_sampling() guides only t >= 0.6.
  double cfg_t_lo = 0.0, cfg_t_hi = 1.0;
  int batch = 16;
  // Each batch split over this many threads, the intra-op threads shared among them
  // (core/shard_threads.h): 0 = auto (2 on a CPU with >= 2 threads and >= 8 images a batch), 1,
  // or 2. An image depends on its prompt and seed only, up to float rounding.
  int batch_threads = 0;
  // Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself"):
  // with a guide, the guiding branch is that weaker model on the same prompt instead of this
  // model on the empty caption, v = v_guide + cfg_scale * (v_model - v_guide), within the same
  // interval. `guide` is its file (recorded with every image), `guide_model` the loaded network
  // (load_guide: the same tokenizer, input and latent space as the model it guides).
  std::string guide;
  MMDiT guide_model{nullptr};
};

// The sampling defaults of `sample`, `synth` and `serve` (flags not given, no recommendation in
// the checkpoint): DPM-Solver++(2M), 20 steps, CFG 1.25 applied while t >= 0.6 (9 of the 20
// steps guided: 29 forwards per image instead of 40). On the shipped HAM model (v3, decoder v2)
// and 2,000 images with the real class mix, CFG 1.25 gave HAM-FD 0.79 against 1.05 at CFG 1, 1.38
// at 1.5 and 0.94 at CFG 1 with 40 steps (fifteenth sitting; DPM++ against Euler: ninth sitting);
// guiding only t >= 0.6 gave 0.84 against 0.85 for every step on today's captions, 1.40x the
// images/s (twentieth sitting): the guidance that matters is at high noise. Sets only the sampler
// method, steps and guidance (scale and interval) of `gc`.
void use_default_sampling(GenerateConfig& gc);

// Loads gc.guide (if set) into gc.guide_model on main's device, to sample `main` with. Refused,
// with both files named, when the guide's tokenizer, model input (channels, size, text length),
// flow objective/prediction or autoencoder latent space differ from main's.
Status load_guide(GenerateConfig& gc, const LoadedGenerator& main);

// steps >= 1, cfg_scale >= 0, 0 <= cfg_t_lo <= cfg_t_hi <= 1, batch >= 1, shift > 0; the error
// names `what` (the command) and the flag.
Status check_generate_config(const GenerateConfig& gc, const std::string& what);

struct GenTrainConfig {
  int64_t steps = 2000;       // total planned steps (LR schedule spans these)
  int64_t stop_at_step = -1;  // stop early (simulated interruption; -1 = never)
  int batch = 32;
  double lr = 3e-4;
  double weight_decay = 0.0;
  int64_t warmup = 100;
  double min_lr_frac = 0.1;  // cosine decays to lr * min_lr_frac
  double grad_clip = 1.0;
  double ema_decay = 0.999;
  double caption_dropout = 0.1;  // empty caption for classifier-free guidance
  bool augment = true;           // flips + 90-degree rotations
  int log_every = 25;
  int ckpt_every = 250;
  // Also keep the EMA weights of every Nth step as ema_step_NNNNNN.safetensors (0 = never): the
  // run's own earlier models, e.g. an autoguidance guide or HAM-FD along training.
  int keep_every = 0;
  int sample_every = 500;  // validation grid with EMA weights (0 = never)
  int val_every = 250;     // validation loss (0 = never)
  double max_minutes = 0;  // wall-clock budget (0 = none): checkpoint and stop
  uint64_t seed = 0;
  std::string out;  // run directory
  bool resume = false;
  FlowConfig flow;
  std::vector<std::string> val_prompts;  // for sample grids
  GenerateConfig grid;                   // sampler settings of the sample grids
  // Latent generator: the autoencoder that decodes the sample grids; its identity goes into
  // every checkpoint's metadata (key "ae") so the checkpoint is never decoded by another one.
  Autoencoder ae{nullptr};
  std::string ae_hash, ae_file;
  // Extra metadata written into every checkpoint (e.g. "init": the generator a run started from).
  std::map<std::string, std::string> metadata;
  // Where the model, its optimizer state, EMA and batches live. The loop moves the model (and
  // the grid's autoencoder) there; LoRA adapters must already be there (error otherwise).
  torch::Device device = torch::kCPU;
  // Data-parallel training (train/dist.h): this rank's share of each global batch of `batch`
  // images, gradients averaged over the ranks; only rank 0 writes. nullptr = one process.
  std::shared_ptr<Dist> dist;
  // Threads that each run a share of the (rank's) batch at once, with the intra-op threads
  // split among them (core/shard_threads.h): 0 = auto (2 on a CPU with >= 2 threads and >= 16
  // rows, else 1), 1 or 2. The gradients are the same up to float rounding for any choice; a
  // resumed run continues exactly when it uses the same count.
  int batch_threads = 0;
  nlohmann::json to_json() const;
};

struct GenTrainResult {
  int64_t step = 0;
  double last_loss = 0;
  double seconds = 0;
  double images_per_second = 0;
  bool stopped_by_budget = false;
  bool stopped_by_signal = false;  // SIGTERM/SIGINT: checkpoint written, then returned
  double comm_seconds = 0;         // waiting in collectives (data-parallel runs)
};

// What a training run optimises. Default (nullptr): every parameter of the model, with full
// generator checkpoints. LoRA fine-tuning passes its adapter tensors, a hook that applies them
// to the frozen base before every forward, and its own save/load of the adapter file; a frozen
// text encoder passes the other parameters and keeps the default (full checkpoint) save/load.
struct TrainTarget {
  std::vector<torch::Tensor> params;
  std::function<void(int64_t step)>
      before_forward;  // step of the training forward; -1: validation, sampling
  std::function<Status(const std::string& path, int64_t step, const std::string& kind)> save;
  std::function<Status(const std::string& path)> load;
  // Distillation: the regression target (a velocity) for x_t at t with caption ids/mask replaces
  // the flow target eps - x0, in training and in the validation loss.
  std::function<torch::Tensor(const torch::Tensor& x_t, const torch::Tensor& t,
                              const torch::Tensor& ids, const torch::Tensor& mask)>
      target_velocity;
  // Timesteps of a training batch (default: the flow's logit-normal draw).
  std::function<torch::Tensor(int64_t B, at::Generator& gen)> timesteps;
};

// Guidance + step distillation (Meng et al. 2023, "On distillation of guided diffusion models",
// adapted to rectified flow): a student that samples in `student_steps` Euler steps without
// classifier-free guidance learns, for x_t at t, the teacher's guided displacement over one student
// step, i.e. the mean guided velocity along `substeps` teacher Euler steps from t to t -
// 1/student_steps.
struct DistillConfig {
  double guidance = 4.0;  // the teacher's CFG scale baked into the student
  int student_steps = 4;  // the student's Euler steps from t = 1 to 0
  int substeps = 4;       // teacher Euler steps per student step (1 = guidance distillation only)
  double grid_fraction = 0.5;  // share of training timesteps drawn on the student's step grid
};
// Target and timestep hooks for train_generator (the teacher runs without gradients).
void add_distillation(TrainTarget& target, MMDiT teacher, const Tokenizer& tok,
                      const FlowConfig& flow, const DistillConfig& dc);
// Checkpoint metadata "sampling": the settings a checkpoint should be sampled with (written by
// distillation); GenerateConfig defaults otherwise.
GenerateConfig recommended_sampling(const std::map<std::string, std::string>& metadata);
nlohmann::json sampling_metadata(const GenerateConfig& gc);
// Which sampler settings the user gave on the command line.
struct SamplerFlags {
  bool sampler = false, steps = false, shift = false, cfg = false, eta = false, interval = false;
};
// If the checkpoint recommends sampling settings (a distilled student), they replace the fields
// of `gc` whose flag was not given (logged); otherwise `gc` stays as it is.
void apply_recommended_sampling(const std::map<std::string, std::string>& metadata,
                                const SamplerFlags& given, GenerateConfig& gc);

// The generator shipped in models/ (latent; its autoencoder beside it) that `sample` uses by
// default.
inline const char* kShippedGenerator = "lesionflow_ham64.safetensors";

// One training batch as the data side makes it (any device; CPU here).
struct GenBatch {
  torch::Tensor x0, noise, t, ids, mask;
  GenBatch rows(int64_t lo, int64_t n) const {  // rows [lo, lo + n) of every field (views)
    return {x0.narrow(0, lo, n), noise.narrow(0, lo, n), t.narrow(0, lo, n), ids.narrow(0, lo, n),
            mask.narrow(0, lo, n)};
  }
};
// The loss of one step: the batch is moved to the model's device, noised on the flow's path
// (or the DDPM schedule), the model predicts, and the per-sample loss [B] is returned on that
// device with no host synchronisation. The training loop and the device test call this.
torch::Tensor generator_loss(MMDiT& model, const GenBatch& b, const FlowConfig& flow,
                             const TrainTarget* target = nullptr);
// The backward of a training step (the training loop and the bench's step call this): the
// per-sample losses of b, detached, and the gradients of their mean in `params`, b's rows split
// over the shard threads (sharded_mean_backward), each shard's text trimmed of the padding its
// rows share.
torch::Tensor generator_backward(MMDiT& model, const GenBatch& b, const FlowConfig& flow,
                                 ShardThreads& shards, const std::vector<torch::Tensor>& params,
                                 const TrainTarget* target = nullptr);

// Run directory: checkpoint.safetensors (weights), ema.safetensors (EMA weights),
// state.bin (optimizer + step; all other randomness is derived from (seed, step)),
// metrics.jsonl, samples/step_XXXXXX.png, options.json.
Result<GenTrainResult> train_generator(const GenTrainConfig& cfg, MMDiT& model,
                                       const Tokenizer& tok, const CaptionedImages& train,
                                       const CaptionedImages* val,
                                       const TrainTarget* target = nullptr);

// generate() followed by the autoencoder's decoder for a latent generator: images [N,3,S,S] in
// [-1,1].
// With gc.sampler.start < 1, `init` holds one starting image per prompt in the model's space
// ([N,C,S,S] latents or pixels; see generate).
// `latents` (optional, latent generators only): receives the normalised latents [N,C,s,s] before
// decoding.
torch::Tensor generate_images(LoadedGenerator& g, const std::vector<std::string>& prompts,
                              const std::vector<uint64_t>& seeds, const GenerateConfig& gc,
                              const torch::Tensor& init = torch::Tensor(),
                              torch::Tensor* latents = nullptr);
// The latents of every record of a prepared cache for a latent generator, [N, 8 dihedral
// transforms, C, s, s] fp16, from the cache's latent file (encoded and written on first use).
Result<torch::Tensor> prepared_latents(LoadedGenerator& g, const std::string& prepared_dir,
                                       const PreparedSet& ps);
// The images the generator is trained on: the latents of `images` (latent generator) or the images.
// Attaches latents from the prepared cache's latent file (made on first use) to each subset
// (record indices, images); the file is read once for all of them.
Status attach_latents(
    LoadedGenerator& g, const std::string& prepared_dir, const PreparedSet& ps,
    const std::vector<std::pair<const std::vector<size_t>*, CaptionedImages*>>& subsets);

// One sample per (prompt, seed) pair in the model's space (pixels in about [-1,1], or normalised
// latents, which must not be clamped); the noise of image i depends only on seeds[i].
// gc.sampler.start = s < 1 (image-to-image, SDEdit): image i starts from (1 - s) init[i] +
// s noise_i at t = s instead of from noise at t = 1; `init` is [N,C,S,S] in the model's space.
torch::Tensor generate(MMDiT& model, const Tokenizer& tok, const FlowConfig& flow,
                       const std::vector<std::string>& prompts, const std::vector<uint64_t>& seeds,
                       const GenerateConfig& gc, const torch::Tensor& init = torch::Tensor());

// Drop trailing columns that are padding in every row (exact: padded keys are masked out).
std::pair<torch::Tensor, torch::Tensor> trim_padding(const torch::Tensor& ids,
                                                     const torch::Tensor& mask);
// Tokenize a list of captions: ids [N,T] int64, mask [N,T] bool.
std::pair<torch::Tensor, torch::Tensor> tokenize_batch(const Tokenizer& tok,
                                                       const std::vector<std::string>& texts,
                                                       int max_len);

}  // namespace lf
