#include "train/generator.h"

#include <chrono>
#include <filesystem>
#include <fstream>
#include <opencv2/imgproc.hpp>
#include <random>
#include <sstream>

#include "lesionflow/io.h"
#include "lesionflow/log.h"
#include "lesionflow/report.h"
#include "lesionflow/rng.h"
#include "lesionflow/stop.h"
#include "models/checkpoint.h"
#include "train/autoencoder.h"
#include "train/common.h"

namespace lf {
using torch::Tensor;
namespace fs = std::filesystem;

nlohmann::json GenTrainConfig::to_json() const {
  return {{"steps", steps},
          {"batch", batch},
          {"lr", lr},
          {"weight_decay", weight_decay},
          {"warmup", warmup},
          {"min_lr_frac", min_lr_frac},
          {"grad_clip", grad_clip},
          {"ema_decay", ema_decay},
          {"caption_dropout", caption_dropout},
          {"augment", augment},
          {"log_every", log_every},
          {"ckpt_every", ckpt_every},
          {"keep_every", keep_every},
          {"sample_every", sample_every},
          {"val_every", val_every},
          {"max_minutes", max_minutes},
          {"seed", seed},
          {"out", out},
          {"flow", flow.to_json()},
          {"device", device.str()},
          {"world_size", dist ? dist->world() : 1},
          {"batch_threads", batch_threads},
          {"val_prompts", val_prompts}};
}

std::pair<Tensor, Tensor> tokenize_batch(const Tokenizer& tok,
                                         const std::vector<std::string>& texts, int T) {
  auto ids = torch::empty({static_cast<int64_t>(texts.size()), T}, torch::kInt64);
  auto mask = torch::empty({static_cast<int64_t>(texts.size()), T}, torch::kBool);
  auto ia = ids.accessor<int64_t, 2>();
  auto ma = mask.accessor<bool, 2>();
  for (size_t i = 0; i < texts.size(); ++i) {
    Encoded e = tok.encode(texts[i], T);
    for (int j = 0; j < T; ++j) {
      ia[i][j] = e.ids[j];
      ma[i][j] = e.mask[j] != 0;
    }
  }
  return {ids, mask};
}

std::pair<Tensor, Tensor> trim_padding(const Tensor& ids, const Tensor& mask) {
  int64_t T = std::max<int64_t>(1, mask.any(0).nonzero().max().item<int64_t>() + 1);
  return {ids.narrow(1, 0, T), mask.narrow(1, 0, T)};
}

namespace {

// Sum over channels of |mean_g - mean_r| + |std_g - std_r| (pixel values in [0,1]).
double colour_stat_distance(const Tensor& gen, const Tensor& real) {
  auto g = (gen.clamp(-1, 1) + 1) / 2, r = (real + 1) / 2;
  auto dm = (g.mean({0, 2, 3}) - r.mean({0, 2, 3})).abs().sum();
  auto ds = (g.std({0, 2, 3}, true, false) - r.std({0, 2, 3}, true, false)).abs().sum();
  return (dm + ds).item<double>();
}

}  // namespace

void use_default_sampling(GenerateConfig& gc) {
  gc.sampler.method = SamplerMethod::kDpm2m;
  gc.sampler.steps = 20;
  gc.cfg_scale = 1.25;
  gc.cfg_t_lo = 0.6;
  gc.cfg_t_hi = 1.0;
}

Status check_generate_config(const GenerateConfig& gc, const std::string& what) {
  auto bad = [&](const std::string& m) { return Status::error(what + ": " + m); };
  if (gc.sampler.steps < 1)
    return bad("--steps must be >= 1, got " + std::to_string(gc.sampler.steps));
  if (!(gc.cfg_scale >= 0)) return bad("--cfg must be >= 0, got " + std::to_string(gc.cfg_scale));
  if (!(gc.sampler.shift > 0))
    return bad("--shift must be > 0, got " + std::to_string(gc.sampler.shift));
  if (gc.batch < 1) return bad("--batch must be >= 1, got " + std::to_string(gc.batch));
  if (!ShardThreads::valid_request(gc.batch_threads))
    return bad("--batch-threads must be 0 (auto), 1 or 2, got " + std::to_string(gc.batch_threads));
  if (!(0 <= gc.sampler.eta && gc.sampler.eta <= 1))
    return bad("--eta must be in [0, 1], got " + std::to_string(gc.sampler.eta));
  if (gc.sampler.eta > 0 && gc.sampler.method != SamplerMethod::kDdim)
    return bad("--eta applies to --sampler ddim only");
  if (!(0 <= gc.cfg_t_lo && gc.cfg_t_lo <= gc.cfg_t_hi && gc.cfg_t_hi <= 1))
    return bad("--cfg-interval must satisfy 0 <= LO <= HI <= 1");
  if (!(gc.sampler.start > 0 && gc.sampler.start <= 1))
    return bad("--strength must be in (0, 1], got " + std::to_string(gc.sampler.start));
  return Status::ok_status();
}

nlohmann::json sampling_metadata(const GenerateConfig& gc) {
  nlohmann::json j = {{"sampler", gc.sampler.method},
                      {"steps", gc.sampler.steps},
                      {"shift", gc.sampler.shift},
                      {"eta", gc.sampler.eta},
                      {"cfg", gc.cfg_scale},
                      {"strength", gc.sampler.start},
                      {"cfg_interval", {gc.cfg_t_lo, gc.cfg_t_hi}}};
  if (!gc.guide.empty()) j["guide"] = gc.guide;
  return j;
}

Status load_guide(GenerateConfig& gc, const LoadedGenerator& main) {
  if (gc.guide.empty()) return Status::ok_status();
  LF_ASSIGN_OR_RETURN(LoadedGenerator g, load_generator(gc.guide, main.ae_path));
  auto refuse = [&](const std::string& what) {
    return Status::error(gc.guide + ": cannot guide " + main.hash + " (" + what +
                         "); a guide is a weaker version of the same model: fewer steps or "
                         "fewer blocks on the same tokenizer and latents");
  };
  const auto &a = main.model->config(), &b = g.model->config();
  if (g.tok->hash() != main.tok->hash())
    return refuse("tokenizer " + g.tok->hash() + " vs " + main.tok->hash());
  if (a.channels != b.channels || a.image_size != b.image_size || a.max_text_len != b.max_text_len)
    return refuse("input " + std::to_string(b.channels) + "x" + std::to_string(b.image_size) +
                  " with " + std::to_string(b.max_text_len) + " text tokens vs " +
                  std::to_string(a.channels) + "x" + std::to_string(a.image_size) + " with " +
                  std::to_string(a.max_text_len));
  if (g.flow.objective != main.flow.objective || g.flow.prediction != main.flow.prediction)
    return refuse("another objective or prediction");
  // A latent guide was loaded with main's autoencoder, so load_generator has already refused one
  // trained on another latent space; what is left is a pixel guide for a latent model or back.
  if (g.latent() != main.latent())
    return refuse(g.latent() ? "a latent guide for a pixel model"
                             : "a pixel guide for a latent model");
  g.model->to(module_device(*main.model));
  gc.guide_model = g.model;
  return Status::ok_status();
}

GenerateConfig recommended_sampling(const std::map<std::string, std::string>& metadata) {
  GenerateConfig gc;
  auto it = metadata.find("sampling");
  if (it == metadata.end()) return gc;
  auto j = nlohmann::json::parse(it->second, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return gc;
  gc.sampler.method = j.value("sampler", gc.sampler.method);
  gc.sampler.steps = j.value("steps", gc.sampler.steps);
  gc.sampler.shift = j.value("shift", gc.sampler.shift);
  gc.sampler.eta = j.value("eta", gc.sampler.eta);
  gc.cfg_scale = j.value("cfg", gc.cfg_scale);
  // Checkpoints written before the interval was recorded were sampled with guidance at every step.
  auto ci = j.value("cfg_interval", std::vector<double>{0.0, 1.0});
  if (ci.size() == 2) {
    gc.cfg_t_lo = ci[0];
    gc.cfg_t_hi = ci[1];
  }
  return gc;
}

void apply_recommended_sampling(const std::map<std::string, std::string>& metadata,
                                const SamplerFlags& given, GenerateConfig& gc) {
  auto it = metadata.find("sampling");
  if (it == metadata.end()) return;
  const GenerateConfig rec = recommended_sampling(metadata);
  if (!given.sampler) gc.sampler.method = rec.sampler.method;
  if (!given.steps) gc.sampler.steps = rec.sampler.steps;
  if (!given.shift) gc.sampler.shift = rec.sampler.shift;
  if (!given.cfg) gc.cfg_scale = rec.cfg_scale;
  // The recommended guidance comes with its own interval: the default one was measured on the
  // shipped model at CFG 1.25, not on this checkpoint's guidance.
  if (!given.interval) {
    gc.cfg_t_lo = rec.cfg_t_lo;
    gc.cfg_t_hi = rec.cfg_t_hi;
  }
  // The recommended eta belongs to the recommended sampler.
  if (!given.eta && gc.sampler.method == rec.sampler.method) gc.sampler.eta = rec.sampler.eta;
  log_info("sampling settings " + sampling_metadata(gc).dump() + " (checkpoint recommends " +
           it->second + ")");
}

void add_distillation(TrainTarget& target, MMDiT teacher, const Tokenizer& tok,
                      const FlowConfig& flow, const DistillConfig& dc) {
  teacher->eval();
  for (auto& p : teacher->parameters()) p.set_requires_grad(false);
  TextCond uncond;
  {
    torch::NoGradGuard ng;
    auto [eids, emask] = tokenize_batch(tok, {""}, teacher->config().max_text_len);
    uncond = teacher->encode_text(eids.narrow(1, 0, 1), emask.narrow(1, 0, 1));
  }
  const double jump = dc.student_steps > 0 ? 1.0 / dc.student_steps : 0.0;
  const int M = std::max(1, dc.substeps);
  target.target_velocity = [teacher, uncond, flow, dc, jump, M](const Tensor& x_t, const Tensor& t,
                                                                const Tensor& ids,
                                                                const Tensor& mask) mutable {
    torch::NoGradGuard ng;
    const int64_t B = x_t.size(0);
    TextCond cond = teacher->encode_text(ids, mask), un = uncond.expand(B);
    auto guided = [&](const Tensor& x, const Tensor& tt) {
      auto vc = to_velocity(teacher->forward(x, tt, cond), x, tt, flow);
      if (dc.guidance == 1.0) return vc;
      auto vu = to_velocity(teacher->forward(x, tt, un), x, tt, flow);
      return vu + dc.guidance * (vc - vu);
    };
    if (jump <= 0) return guided(x_t, t);
    // M equal Euler substeps from t down to max(t - jump, 0); the target is their mean velocity,
    // i.e. (x_t - x_end) / (t - t_end).
    auto h = (t - (t - jump).clamp_min(0.0)) / M;  // [B]
    auto hb = h.view({B, 1, 1, 1});
    Tensor x = x_t, tt = t, sum;
    for (int m = 0; m < M; ++m) {
      auto v = guided(x, tt);
      sum = m == 0 ? v : sum + v;
      if (m + 1 < M) {
        x = x - hb * v;
        tt = tt - h;
      }
    }
    return sum / M;
  };
  if (dc.student_steps > 0 && dc.grid_fraction > 0) {
    const int K = dc.student_steps;
    const double frac = dc.grid_fraction;
    target.timesteps = [flow, K, frac](int64_t B, at::Generator& gen) {
      auto t = sample_timesteps(B, flow, gen);
      auto u = torch::rand({B}, gen, torch::kFloat32);
      auto k =
          torch::randint(1, K + 1, {B}, gen, torch::kInt64).to(torch::kFloat32) / K;  // 1/K .. 1
      return torch::where(u < frac, k, t);
    };
  }
}

Tensor generate_images(LoadedGenerator& g, const std::vector<std::string>& prompts,
                       const std::vector<uint64_t>& seeds, const GenerateConfig& gc,
                       const Tensor& init, Tensor* latents) {
  auto x = generate(g.model, *g.tok, g.flow, prompts, seeds, gc, init);
  if (!g.latent()) return x.clamp(-1, 1);
  if (latents) *latents = x;
  torch::NoGradGuard ng;
  return g.ae->decode(x);
}

Result<Tensor> prepared_latents(LoadedGenerator& g, const std::string& prepared_dir,
                                const PreparedSet& ps) {
  std::vector<const uint8_t*> all;
  for (int64_t i = 0; i < ps.count(); ++i) all.push_back(ps.image(i));
  return latent_cache(prepared_dir, g.ae, g.ae_hash, all, ps.size);
}

Status attach_latents(
    LoadedGenerator& g, const std::string& prepared_dir, const PreparedSet& ps,
    const std::vector<std::pair<const std::vector<size_t>*, CaptionedImages*>>& subsets) {
  if (!g.latent()) return Status::ok_status();
  LF_ASSIGN_OR_RETURN(Tensor lat, prepared_latents(g, prepared_dir, ps));
  for (auto& [idx, out] : subsets) {
    std::vector<int64_t> sel(idx->begin(), idx->end());
    out->latents = lat.index_select(0, torch::tensor(sel, torch::kInt64));
  }
  return Status::ok_status();
}

namespace {
// Fewest images a sampling shard gets under auto. Twenty-eighth sitting, bf16, 2 cores: `sample
// --n 8` (two shards of 4) took 1.82-1.92 s against 1.96-2.02 s in one batch, the whole command
// included; 16 images (shards of 8) 1.08-1.09x in the bench.
constexpr int64_t kMinSampleShardRows = 4;
}  // namespace

Tensor generate(MMDiT& model, const Tokenizer& tok, const FlowConfig& flow,
                const std::vector<std::string>& prompts, const std::vector<uint64_t>& seeds,
                const GenerateConfig& gc, const Tensor& init) {
  torch::NoGradGuard ng;
  const auto& c = model->config();
  const int64_t N = static_cast<int64_t>(prompts.size());
  const double start = gc.sampler.start;
  if (start < 1.0) {
    if (!(start > 0.0))
      throw std::invalid_argument("generate: the start time (strength) must be in (0, 1]");
    if (!init.defined() || init.dim() != 4 || init.size(0) != N || init.size(1) != c.channels ||
        init.size(2) != c.image_size || init.size(3) != c.image_size)
      throw std::invalid_argument("generate: strength < 1 needs one " + std::to_string(c.channels) +
                                  "x" + std::to_string(c.image_size) + "x" +
                                  std::to_string(c.image_size) + " starting image per prompt");
  }
  const auto dev = module_device(*model);  // noise is drawn on the CPU (seed-exact), then moved
  std::vector<Tensor> outs;
  auto [eids, emask] = tokenize_batch(tok, {""}, c.max_text_len);
  eids = eids.to(dev);
  emask = emask.to(dev);
  SamplerConfig sc = gc.sampler;  // a diffusion network: DDIM's steps, evenly spaced in k
  if (flow.objective == Objective::kDiffusion && sc.ts.empty())
    sc.ts = ddpm_sampling_schedule(flow, sc.steps);
  // Images [s, s + n) of the call, with their prompts' padded tokens.
  auto sample_rows = [&](int64_t s, int64_t n, const Tensor& ids_full, const Tensor& mask_full) {
    std::vector<Tensor> noise;
    std::vector<at::Generator> step_gens;  // a stochastic sampler's noise, per image
    for (int64_t i = s; i < s + n; ++i) {
      auto gen = at::detail::createCPUGenerator(seeds[i]);
      noise.push_back(
          torch::randn({1, c.channels, c.image_size, c.image_size}, gen, torch::kFloat32));
      step_gens.push_back(
          at::detail::createCPUGenerator(derive_seed(seeds[i], Stream::kSamplerStep)));
    }
    // Each image's step noise comes from its own stream, so an image does not depend on the
    // batch it was generated in.
    NoiseFn fresh = [&]() {
      std::vector<Tensor> z;
      for (auto& g : step_gens)
        z.push_back(torch::randn({1, c.channels, c.image_size, c.image_size}, g, torch::kFloat32));
      return torch::cat(z, 0).to(dev);
    };
    auto [ids, mask] = trim_padding(ids_full, mask_full);
    ids = ids.to(dev);
    mask = mask.to(dev);
    // The text side is constant over the steps: encode it once. The unconditional branch is the
    // empty caption (BOS only) run as its own 1-token sequence: padded keys are masked, so this
    // equals the padded batch while saving the padded tokens' compute.
    TextCond cond = model->encode_text(ids, mask), uncond;
    const bool guided = gc.cfg_scale != 1.0;
    // The guiding branch: the guide on the same prompt (autoguidance), else this model on the
    // empty caption.
    const bool autoguide = !gc.guide_model.is_empty();
    MMDiT other = autoguide ? gc.guide_model : model;
    if (guided)
      uncond = autoguide
                   ? other->encode_text(ids, mask)
                   : model->encode_text(eids.narrow(1, 0, 1), emask.narrow(1, 0, 1)).expand(n);
    NetFn net_c = [&](const Tensor& x, const Tensor& t) { return model->forward(x, t, cond); };
    NetFn net_u = [&](const Tensor& x, const Tensor& t) { return other->forward(x, t, uncond); };
    VelocityFn v = [&](const Tensor& x, const Tensor& t) {
      auto vc = net_velocity(net_c, x, t, flow);
      if (!guided) return vc;
      // Read t on the host only for a limited guidance interval (a device sync otherwise saved).
      if (gc.cfg_t_lo > 0 || gc.cfg_t_hi < 1) {
        const double tv = t[0].item<double>();
        if (tv < gc.cfg_t_lo || tv > gc.cfg_t_hi) return vc;
      }
      auto vu = net_velocity(net_u, x, t, flow);
      return vu + gc.cfg_scale * (vc - vu);
    };
    auto x1 = torch::cat(noise, 0);
    if (start < 1.0)  // the image on the flow's path at t = start, with this image's own noise
      x1 = (1 - start) * init.narrow(0, s, n).to(torch::kCPU, torch::kFloat32) + start * x1;
    return sample_flow(v, x1.to(dev), sc, fresh);
  };
  // Each batch runs as shards on threads where that pays (ShardThreads): two halves of the batch,
  // each on one intra-op thread. An image depends only on its prompt and seed, not on the rows
  // sampled with it, up to float rounding in the GEMMs.
  const int intra = at::get_num_threads();
  ShardThreads shards(ShardThreads::resolve(gc.batch_threads, std::min<int64_t>(gc.batch, N), intra,
                                            dev.is_cpu(), kMinSampleShardRows),
                      intra);
  for (int64_t s = 0; s < N; s += gc.batch) {
    const int64_t n = std::min<int64_t>(gc.batch, N - s);
    std::vector<std::string> ps(prompts.begin() + s, prompts.begin() + s + n);
    auto [ids_full, mask_full] = tokenize_batch(tok, ps, c.max_text_len);
    std::vector<Tensor> parts(shards.shards());
    const int k = shards.run_rows(n, [&](int j, int64_t lo, int64_t hi) {
      parts[j] = sample_rows(s + lo, hi - lo, ids_full.narrow(0, lo, hi - lo),
                             mask_full.narrow(0, lo, hi - lo));
    });
    parts.resize(k);
    outs.push_back(k == 1 ? parts[0] : torch::cat(parts, 0));
  }
  return torch::cat(outs, 0);
}

Tensor generator_loss(MMDiT& model, const GenBatch& b, const FlowConfig& flow,
                      const TrainTarget* target) {
  const auto dev = module_device(*model);
  auto t = b.t.to(dev), ids = b.ids.to(dev), mask = b.mask.to(dev);
  auto fb = make_train_batch(b.x0.to(dev), b.noise.to(dev), t, flow);
  if (target && target->target_velocity) fb.target = target->target_velocity(fb.x_t, t, ids, mask);
  return flow_loss_per_sample(model->forward(fb.x_t, t, ids, mask), fb, flow);
}

Tensor generator_backward(MMDiT& model, const GenBatch& b, const FlowConfig& flow,
                          ShardThreads& shards, const std::vector<Tensor>& params,
                          const TrainTarget* target) {
  return sharded_mean_backward(
      shards, b.x0.size(0),
      [&](int64_t lo, int64_t hi) {
        GenBatch part = b.rows(lo, hi - lo);
        std::tie(part.ids, part.mask) = trim_padding(part.ids, part.mask);
        return generator_loss(model, part, flow, target);
      },
      params);
}

Result<GenTrainResult> train_generator(const GenTrainConfig& cfg, MMDiT& model,
                                       const Tokenizer& tok, const CaptionedImages& train,
                                       const CaptionedImages* val, const TrainTarget* target) {
  if (train.count() == 0) return Status::error("train: no training images");
  if (!ShardThreads::valid_request(cfg.batch_threads))
    return Status::error("train: --batch-threads must be 0 (auto), 1 or 2, not " +
                         std::to_string(cfg.batch_threads) +
                         " (more shards would sum the gradients in a run-dependent order)");
  if (cfg.out.empty()) return Status::error("train: --out is required");
  const auto& mc = model->config();
  const bool latent = train.latents.defined();
  if (latent && (train.latents.size(0) != train.count() || train.latents.size(2) != mc.channels ||
                 train.latents.size(3) != mc.image_size))
    return Status::error("train: the latents do not match the model's input (" +
                         std::to_string(mc.channels) + "x" + std::to_string(mc.image_size) + "x" +
                         std::to_string(mc.image_size) + ")");
  if (!latent && train.size != mc.image_size)
    return Status::error("train: images are " + std::to_string(train.size) +
                         "px but the model expects " + std::to_string(mc.image_size) +
                         "px (prepare the cache with --size " + std::to_string(mc.image_size) +
                         ")");
  if (target)
    for (const auto& p : target->params)
      if (p.device() != cfg.device)
        return Status::error("train: the trained tensors are on " + p.device().str() +
                             " but the run's device is " + cfg.device.str());
  model->to(cfg.device);
  if (!cfg.ae.is_empty()) {
    Autoencoder ae = cfg.ae;  // a handle: the sample grids decode on the run's device
    ae->to(cfg.device);
  }
  Dist* dist = cfg.dist.get();
  const bool main_rank = is_main_rank(cfg.dist);  // writes checkpoints, metrics, samples
  int64_t shard_lo = 0, shard_hi = cfg.batch;
  if (dist) {
    LF_ASSIGN_OR_RETURN(std::tie(shard_lo, shard_hi),
                        batch_shard(cfg.batch, dist->rank(), dist->world()));
  }
  // This rank's rows of each batch, split over threads (ShardThreads::auto_shards for 0).
  const int intra = at::get_num_threads();
  ShardThreads shards(
      ShardThreads::resolve(cfg.batch_threads, shard_hi - shard_lo, intra, cfg.device.is_cpu()),
      intra);
  if (shards.shards() > 1)
    log_info("train: each batch of " + std::to_string(shard_hi - shard_lo) + " runs as " +
             std::to_string(shards.shards()) + " shards on threads of " +
             std::to_string(shards.intra_threads(0)) + " intra-op thread(s) each");
  if (main_rank) LF_RETURN_IF_ERROR(make_dirs(cfg.out + "/samples"));
  const std::string ckpt = cfg.out + "/checkpoint.safetensors",
                    ema_path = cfg.out + "/ema.safetensors", state = cfg.out + "/state.bin",
                    metrics = cfg.out + "/metrics.jsonl";
  // Tokenize all captions once.
  auto [all_ids, all_mask] = tokenize_batch(tok, train.captions, mc.max_text_len);
  auto [empty_ids, empty_mask] = tokenize_batch(tok, {""}, mc.max_text_len);

  // What is trained: every parameter (default) or the tensors of a target (LoRA adapters).
  std::vector<Tensor> params = target ? target->params : model->parameters();
  if (dist) LF_RETURN_IF_ERROR(dist->broadcast(params));  // one initialisation for every rank
  auto prepare = [&](int64_t train_step) {
    if (target && target->before_forward) target->before_forward(train_step);
  };
  // EMA of the trained tensors; swap_ema() exchanges them with the live values (for
  // validation, sample grids and the EMA checkpoint) and swaps back when called again.
  std::vector<Tensor> ema;
  {
    torch::NoGradGuard ng;
    for (auto& p : params) ema.push_back(p.detach().clone());
  }
  auto swap_ema = [&]() {
    torch::NoGradGuard ng;
    for (size_t i = 0; i < params.size(); ++i) {
      auto tmp = params[i].detach().clone();
      params[i].copy_(ema[i]);
      ema[i].copy_(tmp);
    }
  };
  auto save_weights = [&](const std::string& path, int64_t s, const std::string& kind) -> Status {
    if (target && target->save) return target->save(path, s, kind);
    std::map<std::string, std::string> extra = cfg.metadata;
    if (!cfg.ae_hash.empty()) extra["ae"] = ae_metadata(cfg.ae_hash, cfg.ae_file);
    return save_generator(path, model, tok, s, cfg.flow, kind, extra);
  };
  auto load_weights = [&](const std::string& path) -> Status {
    if (target && target->load) return target->load(path);
    LF_ASSIGN_OR_RETURN(SafeTensors w, load_safetensors(path));
    return load_module_tensors(w, *model, path);
  };
  torch::optim::AdamW opt(
      params, torch::optim::AdamWOptions(cfg.lr).weight_decay(cfg.weight_decay).betas({0.9, 0.99}));

  int64_t step = 0;
  const std::string journal = cfg.out + "/checkpoint.journal";
  if (main_rank) LF_RETURN_IF_ERROR(recover_checkpoint(journal, {ckpt, ema_path, state}));
  if (dist) LF_RETURN_IF_ERROR(dist->barrier());  // the others read what rank 0 recovered
  if (cfg.resume) {
    if (!file_exists(state))
      return Status::error(state + ": nothing to resume (no training state in " + cfg.out + ")");
    LF_RETURN_IF_ERROR(load_weights(ema_path));
    {
      torch::NoGradGuard ng;
      for (size_t i = 0; i < params.size(); ++i) ema[i].copy_(params[i]);
    }
    LF_RETURN_IF_ERROR(load_weights(ckpt));
    LF_ASSIGN_OR_RETURN(step, load_state(state, opt));
    if (main_rank) truncate_metrics(metrics, step);
    log_info("resumed " + cfg.out + " at step " + std::to_string(step));
  } else if (main_rank) {
    std::filesystem::remove(metrics);
  }
  nlohmann::json train_json = cfg.to_json();
  train_json["batch_threads"] = shards.shards();  // what auto (0) resolved to
  if (main_rank)
    LF_RETURN_IF_ERROR(write_file_atomic(
        cfg.out + "/options.json",
        nlohmann::json{{"train", train_json}, {"model", mc.to_json()}}.dump(2) + "\n"));

  auto save_ema = [&](const std::string& p, int64_t s) -> Status {
    swap_ema();
    Status st = save_weights(p, s, "ema");
    swap_ema();
    return st;
  };
  auto save_all = [&](int64_t s) -> Status {
    return commit_checkpoint(
        journal, {{ckpt, [&](const std::string& p) { return save_weights(p, s, "raw"); }},
                  {ema_path, [&](const std::string& p) { return save_ema(p, s); }},
                  {state, [&](const std::string& p) { return save_state(p, s, opt); }}});
  };

  // Rank 0 writes; before that every rank checks that weights and EMA are still the same
  // everywhere (identical gradients keep them so).
  auto checkpoint = [&](int64_t s) -> Status {
    if (dist) {
      LF_RETURN_IF_ERROR(dist->check_in_sync(params, "weights"));
      LF_RETURN_IF_ERROR(dist->check_in_sync(ema, "EMA weights"));
    }
    return main_rank ? save_all(s) : Status::ok_status();
  };

  // Fixed validation batch (first up to 64 images) with fixed noise and timesteps.
  Tensor val_x, val_px, val_ids, val_mask, val_noise, val_t;
  if (main_rank && val && val->count() > 0) {
    int64_t nv = std::min<int64_t>(64, val->count());
    val_px = images_to_tensor(
        std::vector<const uint8_t*>(val->pixels.begin(), val->pixels.begin() + nv), val->size);
    val_x = latent && val->latents.defined()
                ? val->latents.narrow(0, 0, nv).select(1, 0).to(torch::kFloat32)
                : val_px;
    std::tie(val_ids, val_mask) = tokenize_batch(
        tok, std::vector<std::string>(val->captions.begin(), val->captions.begin() + nv),
        mc.max_text_len);
    std::tie(val_ids, val_mask) = trim_padding(val_ids, val_mask);
    auto g = at::detail::createCPUGenerator(derive_seed(cfg.seed, Stream::kGenValidation));
    val_noise = torch::randn(val_x.sizes(), g, torch::kFloat32);
    val_t = (torch::arange(nv, torch::kFloat32) + 0.5) / nv;  // stratified over (0,1)
    for (Tensor* v : {&val_x, &val_ids, &val_mask, &val_noise, &val_t}) *v = v->to(cfg.device);
  }

  BatchPlan plan(train.count(), cfg.batch, cfg.seed);
  BinnedLoss bins;
  double loss_acc = 0;
  int loss_n = 0;
  GenTrainResult res;
  auto t_start = std::chrono::steady_clock::now();
  const int64_t start_step = step;
  double comm_logged = 0, el_logged = 0;  // communication share between two metrics lines
  const int64_t last_step =
      cfg.stop_at_step >= 0 ? std::min(cfg.steps, cfg.stop_at_step) : cfg.steps;
  Progress prog("train", last_step, "step", step);
  model->train();
  StopOnSignal stop_guard;  // SIGTERM / Ctrl-C: checkpoint this step, then return
  // Stopping (a signal, the time budget) before step s. Over several ranks the wish is all-reduced
  // with the step's gradients and every rank stops before applying the step any rank wanted to
  // stop at: they all checkpoint the same step.
  auto stop_before = [&](bool by_signal, bool by_budget) {
    res.stopped_by_signal = by_signal;
    res.stopped_by_budget = by_budget && !by_signal;
    if (by_signal)
      log_warn(std::string(*stop_signal_name() ? stop_signal_name() : "a signal to another rank") +
               " received: checkpointing step " + std::to_string(step) + " in " + cfg.out +
               " (continue with --resume)");
    else
      log_info("time budget of " + std::to_string(cfg.max_minutes) + " min reached at step " +
               std::to_string(step));
  };
  while (step < cfg.steps) {
    const bool want_signal = stop_requested();
    const double minutes =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count() / 60;
    const bool want_budget = cfg.max_minutes > 0 && minutes >= cfg.max_minutes;
    if (!dist && (want_signal || want_budget)) {
      stop_before(want_signal, want_budget);
      break;
    }
    if (cfg.stop_at_step >= 0 && step >= cfg.stop_at_step) break;
    const double lr = warmup_cosine_lr(cfg.lr, cfg.warmup, cfg.steps, cfg.min_lr_frac, step);
    set_lr(opt, lr);
    auto idx = plan.at(step);
    std::mt19937_64 rng(derive_seed(cfg.seed, Stream::kGenBatches, step));
    Tensor x0;
    if (latent) {  // cached latents of a random dihedral transform of each image
      std::vector<int64_t> rows;
      std::uniform_int_distribution<int> d8(0, 7);
      const int64_t V = train.latents.size(1);
      for (auto i : idx) rows.push_back(i * V + (cfg.augment && V == 8 ? d8(rng) : 0));
      x0 = train.latents.flatten(0, 1)
               .index_select(0, torch::tensor(rows, torch::kInt64))
               .to(torch::kFloat32);
    } else {
      std::vector<const uint8_t*> px;
      for (auto i : idx) px.push_back(train.pixels[i]);
      x0 = images_to_tensor(px, train.size);
    }
    if (cfg.augment && !latent) {
      std::vector<Tensor> xs;
      for (int64_t i = 0; i < x0.size(0); ++i) xs.push_back(augment_dihedral(x0[i], rng));
      x0 = torch::stack(xs);
    }
    auto sel =
        torch::from_blob(idx.data(), {static_cast<int64_t>(idx.size())}, torch::kInt64).clone();
    auto ids = all_ids.index_select(0, sel), mask = all_mask.index_select(0, sel);
    std::uniform_real_distribution<double> U(0, 1);
    for (int64_t i = 0; i < ids.size(0); ++i)
      if (U(rng) < cfg.caption_dropout) {
        ids[i].copy_(empty_ids[0]);
        mask[i].copy_(empty_mask[0]);
      }
    auto gen = at::detail::createCPUGenerator(derive_seed(cfg.seed, Stream::kGenNoise, step));
    auto t = target && target->timesteps ? target->timesteps(x0.size(0), gen)
                                         : sample_timesteps(x0.size(0), cfg.flow, gen);
    auto noise = torch::randn(x0.sizes(), gen, torch::kFloat32);
    if (dist) {  // this rank's rows of the global batch (made whole above: the same on every rank)
      const int64_t n = shard_hi - shard_lo;
      x0 = x0.narrow(0, shard_lo, n);
      noise = noise.narrow(0, shard_lo, n);
      t = t.narrow(0, shard_lo, n);
      ids = ids.narrow(0, shard_lo, n);
      mask = mask.narrow(0, shard_lo, n);
    }
    prepare(step);
    auto per =
        generator_backward(model, {x0, noise, t, ids, mask}, cfg.flow, shards, params, target);
    auto loss = per.mean();
    if (dist) {  // gradients, the loss and the stop wishes, averaged over the ranks
      auto flags =
          torch::tensor({loss.item<float>(), want_signal ? 1.0f : 0.0f, want_budget ? 1.0f : 0.0f});
      LF_RETURN_IF_ERROR(dist->allreduce_gradients(params, flags, /*mean=*/true));
      const bool by_signal = flags[1].item<float>() > 0, by_budget = flags[2].item<float>() > 0;
      if (by_signal || by_budget) {
        stop_before(by_signal, by_budget);
        break;
      }
      loss = flags[0];
    }
    double lv = loss.item<double>();
    if (!std::isfinite(lv)) {
      return Status::error("train: loss is " + std::to_string(lv) + " at step " +
                           std::to_string(step) + " (lr " + std::to_string(lr) +
                           "); stopped without overwriting the last checkpoint in " + cfg.out +
                           "; try a lower --lr or --grad-clip");
    }
    Tensor gnorm_t = clip_adamw_ema_step(opt, params, cfg.grad_clip, &ema,
                                         std::min(cfg.ema_decay, (1.0 + step) / (10.0 + step)));
    ++step;
    bins.add(t, per);
    loss_acc += lv;
    ++loss_n;
    res.last_loss = lv;
    double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    double ips = (step - start_step) * cfg.batch / std::max(el, 1e-9);
    char extra[96];
    std::snprintf(extra, sizeof extra, "loss %.4f lr %.2e", lv, lr);
    if (main_rank) prog.update(step, extra);
    if (main_rank && (step % cfg.log_every == 0 || step == cfg.steps)) {
      const double gnorm = gnorm_t.defined() ? gnorm_t.item<double>() : 0.0;
      nlohmann::json m = {
          {"step", step},       {"loss", loss_acc / loss_n}, {"lr", lr},
          {"grad_norm", gnorm}, {"images_per_second", ips},  {"loss_by_t_bin", bins.means()}};
      if (dist) {  // share of the wall time spent in collectives since the last line
        m["world_size"] = dist->world();
        m["comm_share"] = (dist->comm_seconds() - comm_logged) / std::max(el - el_logged, 1e-9);
        comm_logged = dist->comm_seconds();
        el_logged = el;
      }
      for (auto& v : m["loss_by_t_bin"])
        if (v.is_number() && std::isnan(v.get<double>())) v = nullptr;
      append_line(metrics, m.dump());
      loss_acc = 0;
      loss_n = 0;
      bins.reset();
    }
    if (val_x.defined() && cfg.val_every > 0 && step % cfg.val_every == 0) {
      torch::NoGradGuard ng;
      swap_ema();
      prepare(-1);
      double vl =
          generator_loss(model, {val_x, val_noise, val_t, val_ids, val_mask}, cfg.flow, target)
              .mean()
              .item<double>();
      swap_ema();
      append_line(metrics, nlohmann::json{{"step", step}, {"val_loss_ema", vl}}.dump());
    }
    if (main_rank && cfg.sample_every > 0 && step % cfg.sample_every == 0 &&
        !cfg.val_prompts.empty()) {
      std::vector<std::string> ps;
      std::vector<uint64_t> seeds;
      for (int s = 0; s < 2; ++s)
        for (const auto& p : cfg.val_prompts) {
          ps.push_back(p);
          seeds.push_back(1000 + s);
        }
      GenerateConfig gc = cfg.grid;
      swap_ema();
      Tensor imgs;
      {
        torch::NoGradGuard ng;
        prepare(-1);
        imgs = generate(model, tok, cfg.flow, ps, seeds, gc);
        if (!cfg.ae.is_empty()) {
          Autoencoder ae = cfg.ae;  // a handle: decoding does not change the config
          imgs = ae->decode(imgs);
        } else {
          imgs = imgs.clamp(-1, 1);
        }
      }
      swap_ema();
      auto u8 = tensor_to_images(imgs);
      std::vector<cv::Mat> tiles;
      const int S = imgs.size(2);
      for (int64_t i = 0; i < imgs.size(0); ++i) {
        cv::Mat rgb(S, S, CV_8UC3, u8.data() + i * S * S * 3), bgr;
        cv::cvtColor(rgb, bgr, cv::COLOR_RGB2BGR);
        tiles.push_back(bgr);
      }
      char name[64];
      std::snprintf(name, sizeof name, "/samples/step_%06lld.png", static_cast<long long>(step));
      (void)write_png(cfg.out + name, make_grid(tiles, static_cast<int>(cfg.val_prompts.size())));
      nlohmann::json m = {{"step", step}, {"samples", std::string(name).substr(1)}};
      if (val_px.defined())
        m["colour_stat_distance"] = colour_stat_distance(imgs.to(torch::kCPU), val_px);
      append_line(metrics, m.dump());
    }
    if (cfg.ckpt_every > 0 && step % cfg.ckpt_every == 0) LF_RETURN_IF_ERROR(checkpoint(step));
    if (main_rank && cfg.keep_every > 0 && step % cfg.keep_every == 0) {
      char name[64];
      std::snprintf(name, sizeof name, "/ema_step_%06lld.safetensors",
                    static_cast<long long>(step));
      LF_RETURN_IF_ERROR(save_ema(cfg.out + name, step));
    }
  }
  LF_RETURN_IF_ERROR(checkpoint(step));
  if (dist) {
    LF_RETURN_IF_ERROR(dist->barrier());  // every rank returns once the checkpoint is written
    res.comm_seconds = dist->comm_seconds();
  }
  res.step = step;
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  res.images_per_second = (step - start_step) * cfg.batch / std::max(res.seconds, 1e-9);
  if (main_rank)
    prog.finish(res.stopped_by_budget   ? "(time budget)"
                : res.stopped_by_signal ? "(stopped by signal)"
                                        : "",
                step);
  return res;
}

}  // namespace lf
