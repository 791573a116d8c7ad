// The generator stages as library calls (see generator_runs.h).
#include "pipeline/generator_runs.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <opencv2/imgproc.hpp>
#include <random>
#include <set>
#include <sstream>

#include "adapters/lora.h"
#include "core/device.h"
#include "lesionflow/captions.h"
#include "lesionflow/io.h"
#include "lesionflow/jsonl.h"
#include "lesionflow/log.h"
#include "lesionflow/record_pixels.h"
#include "lesionflow/report.h"
#include "lesionflow/rng.h"
#include "lesionflow/runtime.h"
#include "lesionflow/tokenizer.h"
#include "train/denoise_profile.h"

namespace lf {
namespace {

Result<GenTrainConfig> loop_config(const LoopOptions& o, const std::string& out, uint64_t seed,
                                   int64_t max_warmup) {
  GenTrainConfig tc;
  LF_ASSIGN_OR_RETURN(tc.device, parse_device(o.device));
  tc.steps = o.steps;
  tc.batch = o.batch;
  tc.lr = o.lr;
  tc.max_minutes = o.max_minutes;
  tc.seed = seed;
  tc.out = out;
  tc.resume = o.resume;
  tc.ckpt_every = o.ckpt_every;
  tc.keep_every = o.keep_every;
  tc.sample_every = o.sample_every;
  tc.log_every = o.log_every;
  tc.val_every = o.val_every;
  tc.stop_at_step = o.stop_at_step;
  tc.dist = o.dist;
  tc.batch_threads = o.batch_threads;
  tc.warmup = std::min<int64_t>(max_warmup, o.steps / 10 + 1);  // 10% of the steps, capped
  return tc;
}

nlohmann::json train_result_json(const GenTrainResult& r, const std::string& out) {
  return {{"step", r.step},
          {"last_loss", r.last_loss},
          {"seconds", r.seconds},
          {"images_per_second", r.images_per_second},
          {"stopped_by_budget", r.stopped_by_budget},
          {"stopped_by_signal", r.stopped_by_signal},
          {"checkpoint", out + "/ema.safetensors"}};
}

Status write_tiles(const torch::Tensor& imgs, const std::string& dir,
                   const std::vector<std::string>& names, std::vector<cv::Mat>* tiles_out) {
  auto u8 = tensor_to_images(imgs);
  const int S = imgs.size(2);
  for (int64_t i = 0; i < imgs.size(0); ++i) {
    cv::Mat rgb(S, S, CV_8UC3, u8.data() + i * S * S * 3), bgr;
    cv::cvtColor(rgb, bgr, cv::COLOR_RGB2BGR);
    if (!dir.empty()) LF_RETURN_IF_ERROR(write_png(dir + "/" + names[i], bgr));
    tiles_out->push_back(bgr.clone());
  }
  return Status::ok_status();
}

// Records of `idx` matching every filter key=value (dx, site, sex, age band); at most `limit`
// of them (seeded choice).
std::vector<size_t> filtered(const GenData& d, const std::vector<size_t>& idx,
                             const std::vector<std::string>& filters, int64_t limit,
                             uint64_t seed) {
  std::vector<size_t> out;
  for (size_t i : idx)
    if (record_matches(d.ps.records[i], filters)) out.push_back(i);
  if (limit > 0 && static_cast<int64_t>(out.size()) > limit) {
    std::mt19937_64 rng(derive_seed(seed, Stream::kFinetuneSubset));
    std::shuffle(out.begin(), out.end(), rng);
    out.resize(limit);
    std::sort(out.begin(), out.end());
  }
  return out;
}

// Side in pixels of the images a loaded generator makes (its autoencoder's for a latent one).
int pixel_size(const LoadedGenerator& g) {
  return g.latent() ? g.ae->config().image_size : g.model->config().image_size;
}

// A latent generator trains on cached latents (made on first use) and decodes its grids with its
// autoencoder, whose identity every checkpoint of the run records; a copy of it sits in the run.
Status use_latent_space(LoadedGenerator& gen, const std::string& data_dir, const std::string& out,
                        const GenData& d, const std::vector<size_t>& tr,
                        const std::vector<size_t>& va, CaptionedImages& train, CaptionedImages& val,
                        GenTrainConfig& tc) {
  if (!gen.latent()) return Status::ok_status();
  LF_RETURN_IF_ERROR(attach_latents(gen, data_dir, d.ps, {{&tr, &train}, {&va, &val}}));
  tc.ae = gen.ae;
  tc.ae_hash = gen.ae_hash;
  tc.ae_file = std::filesystem::path(gen.ae_path).filename().string();
  const std::string copy = out + "/" + tc.ae_file;
  auto have = hash_file(copy);
  if (!have.ok() || *have != gen.ae_hash) {
    LF_ASSIGN_OR_RETURN(std::string bytes, read_file(gen.ae_path));
    LF_RETURN_IF_ERROR(write_file_atomic(copy, bytes));
  }
  return Status::ok_status();
}

}  // namespace

Result<std::string> checkpoint_or_shipped(const std::string& given, const std::string& what) {
  if (!given.empty()) return given;
  std::string ckpt = shipped_model_path(kShippedGenerator);
  if (ckpt.empty())
    return Status::error(what + ": no --checkpoint given and the shipped model models/" +
                         kShippedGenerator + " was not found");
  log_info("using the shipped generator " + ckpt);
  return ckpt;
}

CaptionedImages GenData::subset(const std::vector<size_t>& idx) const {
  CaptionedImages c;
  c.size = ps.size;
  for (size_t i : idx) {
    c.pixels.push_back(ps.image(i));
    c.captions.push_back(captions[i]);
  }
  return c;
}

Result<GenData> load_gen_data(const GenDataSpec& spec) {
  if (spec.data.empty())
    return Status::error("--data CACHE_DIR is required (make one with 'lesionflow data prepare')");
  GenData d;
  LF_ASSIGN_OR_RETURN(d.ps, load_prepared(spec.data));
  LF_ASSIGN_OR_RETURN(auto given, read_caption_file(spec.captions));
  for (const auto& r : d.ps.records) {
    auto it = given.find(r.id);
    d.captions.push_back(it != given.end() ? it->second["caption"].get<std::string>()
                                           : compose_caption(facts_from_record(r),
                                                             std::hash<std::string>{}(r.id) | 1));
  }
  LF_ASSIGN_OR_RETURN(d.train_idx, split_or_default(d.ps.records, spec.splits, "train"));
  LF_ASSIGN_OR_RETURN(d.val_idx, split_or_default(d.ps.records, spec.splits, "val"));
  return d;
}

Result<nlohmann::json> run_tokenizer_training(const TokenizerRunOptions& o) {
  if (o.out.empty()) return Status::error("--out FILE.model is required");
  LF_ASSIGN_OR_RETURN(GenData d, load_gen_data(o.data));
  LF_ASSIGN_OR_RETURN(Tokenizer tok, Tokenizer::train(d.captions, {o.vocab, "bpe", o.seed}));
  LF_RETURN_IF_ERROR(write_file_atomic(o.out, tok.model_bytes()));
  int trunc = 0, maxlen = 0;
  for (const auto& c : d.captions) {
    int n = static_cast<int>(tok.encode_raw(c).size()) + 1;
    maxlen = std::max(maxlen, n);
    trunc += n > 64;
  }
  return nlohmann::json{{"vocab", tok.vocab_size()},
                        {"longest_caption_tokens", maxlen},
                        {"over_64", trunc},
                        {"captions", d.captions.size()},
                        {"out", o.out}};
}

nlohmann::json TrainRunOptions::to_json() const {
  return {{"data", data.data},
          {"captions", data.captions},
          {"splits", data.splits},
          {"tokenizer", tokenizer},
          {"vocab", vocab},
          {"preset", preset},
          {"prediction", prediction},
          {"objective", objective},
          {"ae", ae},
          {"patch", patch},
          {"init", init},
          {"add_single", add_single},
          {"steps", loop.steps},
          {"batch", loop.batch},
          {"lr", loop.lr},
          {"max_minutes", loop.max_minutes},
          {"resume", loop.resume},
          {"freeze_text", freeze_text},
          {"out", out},
          {"seed", seed}};
}

// `base` with `n` single-stream blocks appended after its own. Every tensor of `base` is copied by
// name; the new blocks keep their fresh initialisation, whose zero modulation makes each of them
// the identity, so the grown model's output equals base's until training moves the new gates.
static MMDiT grow_single_blocks(const MMDiT& base, int n, uint64_t seed) {
  MMDiTConfig c = base->config();
  c.single_blocks += n;
  torch::manual_seed(seed + 7919);  // the new blocks' weights (deterministic per --seed)
  MMDiT grown(c);
  torch::NoGradGuard ng;
  auto src = base->named_parameters(), dst = grown->named_parameters();
  for (const auto& p : src) dst[p.key()].copy_(p.value());
  auto src_b = base->named_buffers(), dst_b = grown->named_buffers();
  for (const auto& b : src_b) dst_b[b.key()].copy_(b.value());
  log_info("grown: " + std::to_string(base->config().single_blocks) + " -> " +
           std::to_string(c.single_blocks) + " single-stream blocks (" +
           std::to_string(grown->num_parameters()) +
           " parameters; the new ones start as the identity)");
  return grown;
}

Result<nlohmann::json> run_generator_training(const TrainRunOptions& o) {
  if (o.out.empty()) return Status::error("train: --out DIR is required");
  log_info("train " + o.to_json().dump());
  Objective objective = Objective::kFlow;
  if (!o.objective.empty()) {
    LF_ASSIGN_OR_RETURN(objective, parse_objective(o.objective));
  }
  if (objective == Objective::kDiffusion && !o.prediction.empty())
    return Status::error(
        "train: --prediction applies to --objective flow; a diffusion network predicts the noise");

  LoadedGenerator init;  // --init: the generator this run starts from
  if (o.add_single < 0) return Status::error("train: --add-single must be >= 0");
  if (o.add_single > 0 && o.init.empty())
    return Status::error("train: --add-single grows the generator of --init; give --init GEN");
  if (!o.init.empty()) {
    LF_ASSIGN_OR_RETURN(init, load_generator(o.init, o.ae));
    if (!o.tokenizer.empty())
      return Status::error("train: --init " + o.init +
                           " brings its own tokenizer; drop --tokenizer " + o.tokenizer);
    if (!o.objective.empty() && objective != init.flow.objective)
      return Status::error("train: --objective " + o.objective + " differs from the objective of " +
                           o.init);
    objective = init.flow.objective;  // e.g. DDIM grids for a diffusion init
    if (!o.prediction.empty() && o.prediction != prediction_name(init.flow.prediction))
      return Status::error("train: --prediction " + o.prediction +
                           " differs from the prediction of " + o.init);
    if (o.patch > 0 && o.patch != init.model->config().patch)
      return Status::error("train: --patch " + std::to_string(o.patch) +
                           " differs from the patch of " + o.init + " (" +
                           std::to_string(init.model->config().patch) + ")");
    log_info("starting from " + o.init + " (step " + std::to_string(init.step) +
             "): its architecture, tokenizer and flow settings; a fresh optimizer");
    if (o.add_single > 0) init.model = grow_single_blocks(init.model, o.add_single, o.seed);
  }
  LF_ASSIGN_OR_RETURN(GenData d, load_gen_data(o.data));
  LF_RETURN_IF_ERROR(make_dirs(o.out));
  const std::string tok_path = o.out + "/tokenizer.model";
  Result<Tokenizer> tok = Status::error("unset");
  const bool other_rank = !is_main_rank(o.loop.dist);
  if (other_rank) {  // rank 0's tokenizer (training it is not bit-reproducible)
    std::string bytes;
    LF_RETURN_IF_ERROR(o.loop.dist->share_bytes("tokenizer", bytes));
    tok = Tokenizer::from_bytes(bytes);
  } else if (o.loop.resume && file_exists(tok_path))
    tok = Tokenizer::load_file(tok_path);
  else if (init.tok)
    tok = Tokenizer::from_bytes(init.tok->model_bytes());
  else if (!o.tokenizer.empty())
    tok = Tokenizer::load_file(o.tokenizer);
  else {
    std::vector<std::string> corpus;
    for (size_t i : d.train_idx) corpus.push_back(d.captions[i]);
    tok = Tokenizer::train(corpus, {o.vocab, "bpe", o.seed});
  }
  if (!tok.ok()) return tok.status();
  if (!other_rank) {
    if (o.loop.dist) {
      std::string bytes = tok->model_bytes();
      LF_RETURN_IF_ERROR(o.loop.dist->share_bytes("tokenizer", bytes));
    }
    LF_RETURN_IF_ERROR(write_file_atomic(tok_path, tok->model_bytes()));
  }
  MMDiTConfig mc = MMDiTConfig::preset(o.preset);
  mc.vocab_size = tok->vocab_size();
  mc.image_size = d.ps.size;
  LoadedGenerator latent_space;  // only its autoencoder, for a latent generator
  if (init.model) {
    mc = init.model->config();
    const int side = init.latent() ? init.ae->config().image_size : mc.image_size;
    if (side != d.ps.size)
      return Status::error(o.init + ": makes " + std::to_string(side) + "px images, the data is " +
                           std::to_string(d.ps.size) + "px");
    if (init.latent()) {
      latent_space.ae = init.ae;
      latent_space.ae_hash = init.ae_hash;
      latent_space.ae_path = init.ae_path;
    }
  } else if (!o.ae.empty()) {
    LF_ASSIGN_OR_RETURN(LoadedAutoencoder la, load_autoencoder(o.ae));
    if (la.model->config().image_size != d.ps.size)
      return Status::error(o.ae + ": the autoencoder is for " +
                           std::to_string(la.model->config().image_size) +
                           "px images, the data is " + std::to_string(d.ps.size) + "px");
    latent_space.ae = la.model;
    latent_space.ae_hash = la.latent_hash;
    latent_space.ae_path = o.ae;
    mc.image_size = la.model->config().latent_size();
    mc.channels = la.model->config().latent_channels;
    mc.patch = 2;
    mc.prediction = Prediction::kVelocity;  // Flux's objective on latents (--prediction overrides)
  }
  if (o.patch > 0 && !init.model) mc.patch = o.patch;
  if (!o.prediction.empty() && !init.model) {
    LF_ASSIGN_OR_RETURN(mc.prediction, parse_prediction(o.prediction));
  }
  if (objective == Objective::kDiffusion)
    mc.prediction = Prediction::kVelocity;  // not used: a diffusion network's output is the noise
  if (mc.image_size % mc.patch != 0)
    return Status::error("train: --patch " + std::to_string(mc.patch) +
                         " does not divide the input side " + std::to_string(mc.image_size));
  torch::manual_seed(o.seed);
  MMDiT model = init.model ? init.model : MMDiT(mc);
  log_info("model: " + std::to_string(model->num_parameters()) + " parameters, " +
           std::to_string(mc.tokens()) + " image tokens, " +
           (init.model ? "from " + o.init : "preset " + o.preset));
  LF_ASSIGN_OR_RETURN(GenTrainConfig tc, loop_config(o.loop, o.out, o.seed, 100));
  tc.flow.prediction = mc.prediction;
  tc.flow.objective = objective;
  if (init.model) {
    tc.flow = init.flow;
    tc.metadata["init"] = nlohmann::json{
        {"file", std::filesystem::path(o.init).filename().string()},
        {"hash", init.hash},
        {"step", init.step}}.dump();
  }
  if (objective == Objective::kDiffusion)
    tc.grid.sampler.method = SamplerMethod::kDdim;  // DDIM (eta 0) for the grids
  // Validation prompts: the first validation caption of each label, then of each dx.
  std::map<std::string, std::string> by_dx;
  for (size_t i : d.val_idx)
    by_dx.emplace(d.ps.records[i].dx + std::to_string(d.ps.records[i].label), d.captions[i]);
  for (auto& [k, c] : by_dx)
    if (tc.val_prompts.size() < 8) tc.val_prompts.push_back(c);
  auto train = d.subset(d.train_idx), val = d.subset(d.val_idx);
  // What the structure phrases meant in the training captions (synth compares its prompts).
  tc.metadata["caption_profile"] = caption_phrase_profile(train.captions).dump();
  LF_RETURN_IF_ERROR(use_latent_space(latent_space, o.data.data, o.out, d, d.train_idx, d.val_idx,
                                      train, val, tc));
  if (latent_space.latent())
    log_info("latent generator on " + o.ae + " (" + std::to_string(mc.channels) + "x" +
             std::to_string(mc.image_size) + "x" + std::to_string(mc.image_size) +
             " latents, patch " + std::to_string(mc.patch) + ")");
  TrainTarget frozen_text;
  if (o.freeze_text) {
    for (auto& p : model->named_parameters())
      if (p.key().rfind("text.", 0) == 0)
        p.value().set_requires_grad(false);
      else
        frozen_text.params.push_back(p.value());
    log_info("text encoder frozen: training " + std::to_string(frozen_text.params.size()) +
             " parameter tensors");
  }
  LF_ASSIGN_OR_RETURN(GenTrainResult r, train_generator(tc, model, *tok, train, &val,
                                                        o.freeze_text ? &frozen_text : nullptr));
  return train_result_json(r, o.out);
}

Result<nlohmann::json> run_sampling(const SampleRunOptions& o) {
  LF_ASSIGN_OR_RETURN(std::string ckpt, checkpoint_or_shipped(o.checkpoint, "sample"));
  if (o.out.empty()) return Status::error("sample: --out DIR is required");
  std::vector<std::string> prompts = o.prompts;
  if (!o.prompts_file.empty()) {
    std::ifstream in(o.prompts_file);
    if (!in) return Status::error(o.prompts_file + ": cannot open");
    std::string line;
    while (std::getline(in, line))
      if (!line.empty()) prompts.push_back(line);
  }
  if (prompts.empty())
    return Status::error("sample: give --prompt TEXT (repeatable) or --prompts-file FILE");
  if (o.n < 1) return Status::error("sample: --n must be >= 1, got " + std::to_string(o.n));
  LF_ASSIGN_OR_RETURN(torch::Device dev, parse_device(o.device));
  LF_ASSIGN_OR_RETURN(LoadedGenerator gen, load_generator(ckpt, o.ae));
  gen.to(dev);  // before any adapter, which is placed beside the weight it adapts
  GenerateConfig gc = o.gen;
  apply_recommended_sampling(gen.metadata, o.given,
                             gc);  // a distilled student's settings for flags not given
  LF_RETURN_IF_ERROR(check_generate_config(gc, "sample"));
  LF_RETURN_IF_ERROR(load_guide(gc, gen));
  LoraRuntime lora(gen.model);
  std::string adapter_hashes;
  for (auto& spec : o.lora) {
    auto [path, strength] = split_strength(spec);
    LF_ASSIGN_OR_RETURN(auto a, LoraAdapter::load(path, gen.model, gen.hash));
    LF_RETURN_IF_ERROR(lora.add(a, strength));
    adapter_hashes +=
        (adapter_hashes.empty() ? "" : ",") + a->hash + ":" + std::to_string(strength);
  }
  if (!o.lora.empty()) {
    torch::NoGradGuard ng;
    lora.apply();
  }
  LF_RETURN_IF_ERROR(make_dirs(o.out));
  std::vector<std::string> ps, names;
  std::vector<uint64_t> seeds;
  for (size_t p = 0; p < prompts.size(); ++p)
    for (int i = 0; i < o.n; ++i) {
      ps.push_back(prompts[p]);
      seeds.push_back(
          derive_seed(o.seed, Stream::kSampleImage, (static_cast<uint64_t>(p) << 20) + i));
      char nm[64];
      std::snprintf(nm, sizeof nm, "p%03zu_%04d.png", p, i);
      names.push_back(nm);
    }
  Progress prog("sample", static_cast<int64_t>(ps.size()), "img");
  std::vector<cv::Mat> tiles;
  std::ostringstream manifest;
  for (size_t s = 0; s < ps.size(); s += 16) {
    size_t e = std::min(ps.size(), s + 16);
    std::vector<std::string> bp(ps.begin() + s, ps.begin() + e);
    std::vector<uint64_t> bs(seeds.begin() + s, seeds.begin() + e);
    auto imgs = generate_images(gen, bp, bs, gc);
    LF_RETURN_IF_ERROR(write_tiles(
        imgs, o.out, std::vector<std::string>(names.begin() + s, names.begin() + e), &tiles));
    for (size_t i = s; i < e; ++i) {
      nlohmann::json j = sampling_metadata(gc);  // sampler, steps, shift, eta, cfg, interval
      j.update({{"file", names[i]},
                {"prompt", ps[i]},
                {"seed", seeds[i]},
                {"checkpoint", ckpt},
                {"checkpoint_hash", gen.hash},
                {"adapters", adapter_hashes}});
      manifest << j.dump() << '\n';
    }
    prog.update(static_cast<int64_t>(e));
  }
  prog.finish();
  LF_RETURN_IF_ERROR(write_file_atomic(o.out + "/samples.jsonl", manifest.str()));
  LF_RETURN_IF_ERROR(write_png(o.out + "/grid.png", make_grid(tiles, std::min(o.n, 16))));
  return nlohmann::json{{"images", ps.size()}, {"out", o.out}, {"checkpoint", ckpt}};
}

Result<nlohmann::json> run_denoise_profile(const DenoiseProfileRunOptions& o) {
  LF_ASSIGN_OR_RETURN(std::string ckpt, checkpoint_or_shipped(o.checkpoint, "denoise-profile"));
  LF_ASSIGN_OR_RETURN(GenData d, load_gen_data(o.data));
  LF_ASSIGN_OR_RETURN(LoadedGenerator gen, load_generator(ckpt, o.ae));
  if (pixel_size(gen) != d.ps.size)
    return Status::error(o.data.data + ": images are " + std::to_string(d.ps.size) +
                         " px but the generator makes " + std::to_string(pixel_size(gen)) + " px");
  std::vector<size_t> va(d.val_idx.begin(),
                         d.val_idx.begin() + std::min<size_t>(d.val_idx.size(), std::max(0, o.n)));
  CaptionedImages val = d.subset(va);
  LF_RETURN_IF_ERROR(attach_latents(gen, o.data.data, d.ps, {{&va, &val}}));
  DenoiseProfileConfig pc;
  pc.max_images = o.n;
  pc.steps = o.steps;
  pc.cfg_scale = o.cfg;
  pc.seed = o.seed;
  LF_ASSIGN_OR_RETURN(auto rows, denoise_profile(gen.model, *gen.tok, gen.flow, val, pc,
                                                 gen.latent() ? &gen.ae : nullptr));
  nlohmann::json j = {
      {"checkpoint", ckpt}, {"images", val.count()}, {"rows", nlohmann::json::array()}};
  for (const auto& r : rows) {
    j["rows"].push_back({{"t", r.t},
                         {"v_mse", r.v_mse},
                         {"v_mse_uncond", r.v_mse_uncond},
                         {"x0_mse", r.x0_mse},
                         {"x0_spread", r.x0_spread},
                         {"roundtrip_spread", r.roundtrip_spread},
                         {"roundtrip_mse", r.roundtrip_mse},
                         {"x0_pixel_spread", r.x0_pixel_spread},
                         {"roundtrip_pixel_spread", r.roundtrip_pixel_spread}});
  }
  if (!o.out.empty()) LF_RETURN_IF_ERROR(write_file_atomic(o.out, j.dump(2) + "\n"));
  return j;
}

std::pair<std::string, double> split_strength(const std::string& spec) {
  auto c = spec.rfind(':');
  if (c != std::string::npos && c + 1 < spec.size()) {
    char* end = nullptr;
    double v = std::strtod(spec.c_str() + c + 1, &end);
    if (end && *end == '\0') return {spec.substr(0, c), v};
  }
  return {spec, 1.0};
}

Result<nlohmann::json> use_dx_adapters(LoadedGenerator& g,
                                       const std::map<std::string, std::string>& specs,
                                       const std::vector<SynthItem>& plan, SynthGenConfig& sc) {
  nlohmann::json out = nlohmann::json::object();
  if (specs.empty()) return out;
  std::set<std::string> planned_dx;
  for (const auto& it : plan) planned_dx.insert(it.dx);
  std::map<std::string, std::pair<std::shared_ptr<LoraAdapter>, double>> adapters;
  for (const auto& [dx, spec] : specs) {
    if (!planned_dx.count(dx)) {
      std::string have;
      for (const auto& d : planned_dx) have += (have.empty() ? "" : ", ") + d;
      return Status::error("synth: an adapter is given for dx '" + dx +
                           "', but the plan has no image of that diagnosis (it has: " + have + ")");
    }
    auto [path, strength] = split_strength(spec);
    LF_ASSIGN_OR_RETURN(auto a, LoraAdapter::load(path, g.model, g.hash));
    adapters[dx] = {a, strength};
    sc.variant_tag[dx] = a->hash + ":" + std::to_string(strength);
    out[dx] = {{"file", path}, {"hash", a->hash}, {"strength", strength}};
  }
  // A runtime per variant: one adapter bound at a time, the base restored between (and by the
  // last runtime's destructor when sc goes).
  sc.use_variant = [&g, adapters, runtime = std::shared_ptr<LoraRuntime>()](
                       const std::string& dx) mutable -> Status {
    runtime.reset();  // restores the base weights
    if (dx.empty()) return Status::ok_status();
    runtime = std::make_shared<LoraRuntime>(g.model);
    auto a = adapters.find(dx);
    if (a == adapters.end()) return Status::error("synth: no adapter for dx '" + dx + "'");
    LF_RETURN_IF_ERROR(runtime->add(a->second.first, a->second.second));
    torch::NoGradGuard ng;
    runtime->apply();
    return Status::ok_status();
  };
  return out;
}

Result<std::map<std::string, std::string>> parse_dx_adapter_flags(
    const std::vector<std::string>& flags) {
  std::map<std::string, std::string> m;
  for (const auto& f : flags) {
    auto eq = f.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == f.size())
      return Status::error("synth: --adapter-for takes DX=FILE[:STRENGTH], not '" + f + "'");
    const std::string dx = f.substr(0, eq);
    if (m.count(dx)) return Status::error("synth: --adapter-for gives dx '" + dx + "' twice");
    m[dx] = f.substr(eq + 1);
  }
  return m;
}

Result<nlohmann::json> run_finetune(const FinetuneRunOptions& o) {
  if (o.base.empty()) return Status::error("finetune: --base CHECKPOINT is required");
  if (o.out.empty()) return Status::error("finetune: --out DIR is required");
  LF_RETURN_IF_ERROR(check_filters(o.filter));
  LF_ASSIGN_OR_RETURN(LoadedGenerator base, load_generator(o.base, o.ae));
  LF_ASSIGN_OR_RETURN(GenData d, load_gen_data(o.data));
  if (d.ps.size != pixel_size(base))
    return Status::error("finetune: the data is " + std::to_string(d.ps.size) +
                         "px, the base model " + std::to_string(pixel_size(base)) + "px");
  auto tr_idx = filtered(d, d.train_idx, o.filter, o.limit, o.seed);
  auto va_idx = filtered(d, d.val_idx, o.filter, 0, o.seed);
  if (tr_idx.empty()) return Status::error("finetune: no training images match the filters");
  LF_RETURN_IF_ERROR(make_dirs(o.out));
  LF_ASSIGN_OR_RETURN(GenTrainConfig tc, loop_config(o.loop, o.out, o.seed, 50));
  base.to(tc.device);  // before the adapters, which are created beside the weights they adapt
  tc.flow = base.flow;
  for (size_t k = 0; k < va_idx.size() && tc.val_prompts.size() < 6; ++k)
    tc.val_prompts.push_back(d.captions[va_idx[k]]);
  if (tc.val_prompts.empty())
    for (size_t k = 0; k < tr_idx.size() && tc.val_prompts.size() < 6; ++k)
      tc.val_prompts.push_back(d.captions[tr_idx[k]]);
  auto train = d.subset(tr_idx), val = d.subset(va_idx);
  LF_RETURN_IF_ERROR(use_latent_space(base, o.data.data, o.out, d, tr_idx, va_idx, train, val, tc));
  const int64_t base_params = base.model->num_parameters();
  nlohmann::json info = {{"base", o.base},
                         {"base_hash", base.hash},
                         {"train_images", tr_idx.size()},
                         {"val_images", va_idx.size()},
                         {"filter", o.filter},
                         {"base_parameters", base_params}};
  GenTrainResult r;
  if (o.full) {
    info["mode"] = "full";
    info["trainable_parameters"] = base_params;
    log_info("full fine-tune: " + std::to_string(base_params) + " trainable parameters on " +
             std::to_string(tr_idx.size()) + " images");
    LF_ASSIGN_OR_RETURN(
        r, train_generator(tc, base.model, *base.tok, train, va_idx.empty() ? nullptr : &val));
  } else {
    LoraSpec spec;
    std::stringstream ts(o.targets);
    spec.targets.clear();
    for (std::string t; std::getline(ts, t, ',');)
      if (!t.empty()) spec.targets.push_back(t);
    spec.rank = o.rank;
    spec.alpha = o.alpha;
    spec.seed = o.seed;
    for (auto& rf : o.rank_for) {
      auto eq = rf.find('=');
      if (eq == std::string::npos)
        return Status::error("--rank-for '" + rf + "' must be GROUP=RANK");
      spec.rank_for[rf.substr(0, eq)] = std::atoi(rf.c_str() + eq + 1);
    }
    LF_ASSIGN_OR_RETURN(auto adapter, LoraAdapter::create(base.model, spec));
    LoraRuntime rt(base.model);
    LF_RETURN_IF_ERROR(rt.add(adapter, 1.0));
    rt.freeze_base();
    nlohmann::json extra = {{"targets", spec.targets},
                            {"rank", spec.rank},
                            {"alpha", spec.alpha},
                            {"lora_dropout", o.lora_dropout},
                            {"rank_for", spec.rank_for},
                            {"filter", o.filter},
                            {"base", o.base}};
    TrainTarget target;
    target.params = adapter->parameters();
    rt.set_rank_dropout(o.lora_dropout, o.seed);
    target.before_forward = [&rt](int64_t step) { rt.apply(step); };
    target.save = [&](const std::string& path, int64_t step, const std::string& kind) {
      extra["weights"] = kind;
      return adapter->save(path, base.hash, step, extra.dump());
    };
    target.load = [&](const std::string& path) -> Status {
      LF_ASSIGN_OR_RETURN(auto saved, LoraAdapter::load(path, base.model, base.hash));
      torch::NoGradGuard ng;
      auto dst = adapter->parameters(), src = saved->parameters();
      if (dst.size() != src.size())
        return Status::error(path + ": adapter layout differs from this run's");
      for (size_t i = 0; i < dst.size(); ++i) dst[i].copy_(src[i]);
      return Status::ok_status();
    };
    info["mode"] = "lora";
    info["trainable_parameters"] = adapter->num_parameters();
    info["lora_modules"] = adapter->modules().size();
    log_info("LoRA fine-tune: " + std::to_string(adapter->num_parameters()) +
             " trainable parameters (" +
             std::to_string(100.0 * adapter->num_parameters() / base_params) + "% of " +
             std::to_string(base_params) + ") in " + std::to_string(adapter->modules().size()) +
             " modules, " + std::to_string(tr_idx.size()) + " images");
    LF_ASSIGN_OR_RETURN(r, train_generator(tc, base.model, *base.tok, train,
                                           va_idx.empty() ? nullptr : &val, &target));
  }
  if (!is_main_rank(o.loop.dist)) return train_result_json(r, o.out);  // rank 0 writes
  info["steps"] = r.step;
  info["seconds"] = r.seconds;
  info["steps_per_second"] = r.step / std::max(r.seconds, 1e-9);
  info["images_per_second"] = r.images_per_second;
  info["peak_rss_mb"] = peak_rss_mb();
  LF_RETURN_IF_ERROR(write_file_atomic(o.out + "/finetune.json", info.dump(2) + "\n"));
  return info;
}

Result<nlohmann::json> run_distill(const DistillRunOptions& o) {
  if (o.out.empty()) return Status::error("distill: --out DIR is required");
  if (o.distill.student_steps < 1) return Status::error("distill: --student-steps must be >= 1");
  LF_ASSIGN_OR_RETURN(LoadedGenerator teacher, load_generator(o.teacher, o.ae));
  if (teacher.flow.objective != Objective::kFlow)
    return Status::error("distill: " + o.teacher +
                         " is a diffusion model (objective diffusion); distillation is "
                         "implemented for rectified-flow teachers only");
  LF_ASSIGN_OR_RETURN(LoadedGenerator student,
                      load_generator(o.teacher, o.ae));  // starts as the teacher
  LF_ASSIGN_OR_RETURN(GenData d, load_gen_data(o.data));
  if (d.ps.size != pixel_size(teacher))
    return Status::error("distill: the data is " + std::to_string(d.ps.size) + "px, the teacher " +
                         std::to_string(pixel_size(teacher)) + "px");
  LF_RETURN_IF_ERROR(make_dirs(o.out));
  LF_ASSIGN_OR_RETURN(GenTrainConfig tc, loop_config(o.loop, o.out, o.seed, 50));
  teacher.to(tc.device);
  tc.flow = teacher.flow;
  tc.grid.sampler.steps = o.distill.student_steps;
  tc.grid.cfg_scale = 1.0;
  for (size_t k = 0; k < d.val_idx.size() && tc.val_prompts.size() < 6; ++k)
    tc.val_prompts.push_back(d.captions[d.val_idx[k]]);
  auto train = d.subset(d.train_idx), val = d.subset(d.val_idx);
  LF_RETURN_IF_ERROR(
      use_latent_space(student, o.data.data, o.out, d, d.train_idx, d.val_idx, train, val, tc));
  TrainTarget target;
  target.params = student.model->parameters();
  add_distillation(target, teacher.model, *teacher.tok, teacher.flow, o.distill);
  const nlohmann::json sampling = sampling_metadata(tc.grid);
  std::map<std::string, std::string> md = {
      {"sampling", sampling.dump()},
      {"distilled_from", nlohmann::json{{"teacher", o.teacher},
                                        {"teacher_hash", teacher.hash},
                                        {"guidance", o.distill.guidance},
                                        {"student_steps", o.distill.student_steps},
                                        {"substeps", o.distill.substeps}}
                             .dump()}};
  if (student.latent()) md["ae"] = ae_metadata(tc.ae_hash, tc.ae_file);
  target.save = [&](const std::string& path, int64_t s, const std::string& kind) {
    return save_generator(path, student.model, *student.tok, s, student.flow, kind, md);
  };
  log_info("distill: student of " + o.teacher + " for " + std::to_string(o.distill.student_steps) +
           " Euler steps without guidance (teacher CFG " + std::to_string(o.distill.guidance) +
           ", " + std::to_string(o.distill.substeps) + " teacher steps per student step)");
  LF_ASSIGN_OR_RETURN(GenTrainResult r,
                      train_generator(tc, student.model, *student.tok, train, &val, &target));
  nlohmann::json j = train_result_json(r, o.out);
  j["sampling"] = sampling;
  if (is_main_rank(o.loop.dist))
    LF_RETURN_IF_ERROR(write_file_atomic(o.out + "/distill.json", j.dump(2) + "\n"));
  return j;
}

}  // namespace lf
