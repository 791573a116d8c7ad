// The generator stages as library calls: tokenizer, train, sample, finetune (LoRA or full),
// distill. The CLI, the experiment runner and tests call these with an options struct; each
// returns a JSON summary of what it did (the CLI prints it).
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "lesionflow/data.h"
#include "lesionflow/status.h"
#include "synth/synth.h"
#include "train/generator.h"

namespace lf {

// Where the captioned training images come from.
struct GenDataSpec {
  std::string data;      // prepared cache dir
  std::string captions;  // captions.jsonl (id, caption); default: composed from metadata
  std::string splits;    // splits CSV: train on "train", validate on "val" (default: every 10th
                         // record is val)
};

struct GenData {
  PreparedSet ps;
  std::vector<std::string> captions;  // per record
  std::vector<size_t> train_idx, val_idx;
  CaptionedImages subset(const std::vector<size_t>& idx) const;
};
Result<GenData> load_gen_data(const GenDataSpec& spec);

// The training-loop settings shared by train, finetune and distill.
struct LoopOptions {
  int64_t steps = 2000;
  int batch = 32;
  double lr = 3e-4;
  double max_minutes = 0;
  int ckpt_every = 250, sample_every = 500, log_every = 25, val_every = 250;
  int keep_every = 0;  // keep the EMA weights of every Nth step (ema_step_NNNNNN.safetensors)
  int64_t stop_at_step = -1;  // stop (checkpointed) at this step, keeping the schedule of `steps`
  bool resume = false;
  std::string device = "cpu";  // cpu | cuda[:N]
  std::shared_ptr<Dist> dist;  // data-parallel rank (train/dist.h); nullptr = one process
  int batch_threads = 0;       // GenTrainConfig::batch_threads (0 = auto)
};

struct TokenizerRunOptions {
  GenDataSpec data;
  int vocab = 512;
  std::string out;  // .model file
  uint64_t seed = 0;
};
// {vocab, longest_caption_tokens, over_64, captions, out}
Result<nlohmann::json> run_tokenizer_training(const TokenizerRunOptions& o);

struct TrainRunOptions {
  GenDataSpec data;
  LoopOptions loop;
  std::string tokenizer;  // sentencepiece model; trained on the train captions if empty
  int vocab = 512;
  std::string preset = "small";
  std::string prediction;  // override the preset's ("" = keep)
  std::string objective;   // flow | diffusion ("" = flow)
  std::string ae;          // autoencoder: train a latent generator on its cached latents
  int patch = 0;           // 0 = the preset's (2 on latents)
  // Start from a trained generator (e.g. the shipped one): its architecture, tokenizer, flow
  // settings, weights and (latent) autoencoder; a fresh optimizer and LR schedule. Runs of an
  // earlier session whose state.bin is gone continue this way.
  std::string init;
  // With --init: append this many single-stream blocks to its architecture. Their modulation is
  // zero-initialised (adaLN-zero gates), so the grown model computes exactly what the init does
  // at step 0 and training adds capacity from there.
  int add_single = 0;
  bool freeze_text = false;
  std::string out;
  uint64_t seed = 0;
  nlohmann::json to_json() const;
};
// Trains (or resumes) a generator in `out`; {step, last_loss, seconds, images_per_second,
// stopped_by_budget, checkpoint}.
Result<nlohmann::json> run_generator_training(const TrainRunOptions& o);

struct SampleRunOptions {
  std::string checkpoint;  // "" = the shipped generator
  std::string ae;          // override the autoencoder the checkpoint names
  std::vector<std::string> prompts;
  std::string prompts_file;  // one prompt per line (added to prompts)
  int n = 16;                // images per prompt
  GenerateConfig
      gen;  // sampler, steps, cfg, interval (flags not given: the checkpoint's recommendation)
  SamplerFlags given;
  std::vector<std::string> lora;  // adapter[:strength]
  std::string out;
  uint64_t seed = 0;
  std::string device = "cpu";
};
// PNGs, grid.png and samples.jsonl in `out`; {images, out, checkpoint}.
Result<nlohmann::json> run_sampling(const SampleRunOptions& o);

struct DenoiseProfileRunOptions {
  GenDataSpec data;        // held-out images: the "val" split
  std::string checkpoint;  // "" = the shipped generator
  std::string ae;          // override the autoencoder the checkpoint names
  int n = 256;             // held-out images
  int steps = 20;          // Euler steps of a full round trip
  double cfg = 4.0;        // guidance of the round trips
  std::string out;         // JSON file ("" = none)
  uint64_t seed = 0;
};
// The denoising profile of a generator on held-out images (see train/denoise_profile.h):
// {checkpoint, images, rows: [{t, v_mse, v_mse_uncond, x0_mse, x0_spread, roundtrip_spread,
// roundtrip_mse}]}.
Result<nlohmann::json> run_denoise_profile(const DenoiseProfileRunOptions& o);

struct FinetuneRunOptions {
  GenDataSpec data;
  LoopOptions loop;
  std::string base, ae, out;
  std::vector<std::string> filter;  // key=value, all must match
  int64_t limit = 0;                // at most N training images (seeded choice)
  bool full = false;                // every weight instead of LoRA
  int rank = 16;
  double alpha = 16, lora_dropout = 0;
  std::string targets = "attn,mlp";
  std::vector<std::string> rank_for;  // GROUP=RANK
  uint64_t seed = 0;
};
// Writes finetune.json; returns its content.
Result<nlohmann::json> run_finetune(const FinetuneRunOptions& o);

struct DistillRunOptions {
  GenDataSpec data;
  LoopOptions loop;
  std::string teacher, ae, out;
  DistillConfig distill;
  uint64_t seed = 0;
};
// Writes distill.json; returns its content.
Result<nlohmann::json> run_distill(const DistillRunOptions& o);

// "path[:strength]" -> (path, strength); strength 1 when absent.
std::pair<std::string, double> split_strength(const std::string& spec);
// Per-diagnosis LoRA variants of `g` for a synthetic set: `specs` maps a diagnosis to
// "FILE[:STRENGTH]" (an adapter made by `finetune` on this base; refused with the reason when it
// was made for another base). Sets sc.variant_tag (dx -> "<adapter hash>:<strength>") and
// sc.use_variant, which applies that diagnosis' adapter to g (g must outlive sc) and restores the
// base for "". A dx that no item of `plan` has is an error naming the plan's diagnoses. Returns
// {dx: {file, hash, strength}} for plan.json.
Result<nlohmann::json> use_dx_adapters(LoadedGenerator& g,
                                       const std::map<std::string, std::string>& specs,
                                       const std::vector<SynthItem>& plan, SynthGenConfig& sc);
// "DX=FILE[:STRENGTH]" flags -> {dx: "FILE[:STRENGTH]"}; malformed or repeated dx: an error.
Result<std::map<std::string, std::string>> parse_dx_adapter_flags(
    const std::vector<std::string>& flags);
// The given generator checkpoint, or the shipped one when none is given (logged); `what` names
// the command in the error when neither exists.
Result<std::string> checkpoint_or_shipped(const std::string& given, const std::string& what);

}  // namespace lf
