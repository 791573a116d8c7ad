// lesionflow text train-tokenizer | train | sample | finetune | distill | lora merge
#include <algorithm>
#include <random>
#include <sstream>
#include <filesystem>
#include <fstream>
#include <map>
#include <opencv2/imgproc.hpp>


#include "adapters/lora.h"
#include "cli.h"
#include "lesionflow/captions.h"
#include "lesionflow/data.h"
#include "lesionflow/io.h"
#include "lesionflow/jsonl.h"
#include "lesionflow/log.h"
#include "lesionflow/record_pixels.h"
#include "lesionflow/report.h"
#include "lesionflow/tokenizer.h"
#include "train/generator.h"

namespace lf::cli {
namespace {

std::pair<std::string, double> split_strength(const std::string& spec);
struct GenOptions;
struct LoadedData;
Status use_latent_space(LoadedGenerator& gen, const GenOptions& o, const LoadedData& d, const std::vector<size_t>& tr,
                        const std::vector<size_t>& va, CaptionedImages& train, CaptionedImages& val, GenTrainConfig& tc);

struct GenOptions {
  std::string data;       // prepared cache dir
  std::string captions;   // captions.jsonl (id, caption); default: composed from metadata
  std::string splits;     // splits CSV; train on "train", validate on "val"
  std::string tokenizer;  // sentencepiece model; trained from the captions if empty
  int vocab = 512;
  std::string preset = "small";
  std::string prediction;  // override the preset's
  std::string ae;          // train: autoencoder (latent generator); sample etc.: override the recorded one
  int patch = 0;           // train: patch side (0 = the preset's, 2 on latents)
  int64_t steps = 2000;
  int batch = 32;
  double lr = 3e-4;
  double max_minutes = 0;
  int ckpt_every = 250, sample_every = 500, log_every = 25, val_every = 250;
  bool resume = false;
  std::string out;
  // sample
  std::string checkpoint;
  std::vector<std::string> prompts;
  std::string prompts_file;
  int n = 16;
  int sample_steps = 20;
  double cfg = 4.0;
  std::string sampler = "euler";
  double shift = 1.0;
  std::vector<double> cfg_interval{0.0, 1.0};  // guidance only for t in [lo, hi]
  std::vector<std::string> lora;  // sample: adapter[:strength] (repeatable)
  SamplerFlags given;  // sample: which sampler flags were given (set by CLI)
  // finetune
  std::string base;
  int rank = 16;
  double alpha = 16;
  double lora_dropout = 0;
  std::string targets = "attn,mlp";
  std::vector<std::string> rank_for, filter;
  int64_t limit = 0;
  bool full = false;
  bool freeze_text = false;  // train: keep the text encoder's weights fixed
  // distill
  std::string teacher;
  DistillConfig distill;
  nlohmann::json to_json() const {
    return {{"data", data}, {"captions", captions}, {"splits", splits}, {"tokenizer", tokenizer},
            {"vocab", vocab}, {"preset", preset}, {"prediction", prediction}, {"ae", ae}, {"patch", patch}, {"steps", steps},
            {"batch", batch}, {"lr", lr}, {"max_minutes", max_minutes}, {"resume", resume},
            {"out", out}, {"checkpoint", checkpoint}, {"prompts", prompts}, {"prompts_file", prompts_file},
            {"n", n}, {"sample_steps", sample_steps}, {"cfg", cfg}, {"sampler", sampler}, {"shift", shift},
            {"cfg_interval", cfg_interval}, {"lora", lora}, {"base", base}, {"rank", rank}, {"alpha", alpha}, {"targets", targets},
            {"rank_for", rank_for}, {"lora_dropout", lora_dropout}, {"filter", filter}, {"limit", limit}, {"full", full}, {"teacher", teacher},
            {"guidance", distill.guidance}, {"student_steps", distill.student_steps}, {"substeps", distill.substeps},
            {"grid_fraction", distill.grid_fraction}};
  }
};

struct LoadedData {
  PreparedSet ps;
  std::vector<std::string> captions;  // per record
  std::vector<size_t> train_idx, val_idx;
};

Result<LoadedData> load_data(const GenOptions& o) {
  if (o.data.empty()) return Status::error("--data CACHE_DIR is required (make one with 'lesionflow data prepare')");
  LoadedData d;
  LF_ASSIGN_OR_RETURN(d.ps, load_prepared(o.data));
  std::map<std::string, std::string> given;
  if (!o.captions.empty()) {
    LF_ASSIGN_OR_RETURN(auto lines, read_jsonl(o.captions));
    for (size_t i = 0; i < lines.size(); ++i) {
      if (!lines[i].contains("id") || !lines[i].contains("caption"))
        return Status::error(o.captions + ": record " + std::to_string(i + 1) + " lacks 'id' or 'caption'");
      given[lines[i]["id"].get<std::string>()] = lines[i]["caption"].get<std::string>();
    }
  }
  for (const auto& r : d.ps.records) {
    auto it = given.find(r.id);
    d.captions.push_back(it != given.end() ? it->second
                                           : compose_caption(facts_from_record(r), std::hash<std::string>{}(r.id) | 1));
  }
  if (!o.splits.empty()) {
    LF_ASSIGN_OR_RETURN(d.train_idx, select_split(d.ps.records, o.splits, "train"));
    LF_ASSIGN_OR_RETURN(d.val_idx, select_split(d.ps.records, o.splits, "val"));
  } else {
    for (size_t i = 0; i < d.ps.records.size(); ++i) (i % 10 == 9 ? d.val_idx : d.train_idx).push_back(i);
  }
  return d;
}

CaptionedImages subset(const LoadedData& d, const std::vector<size_t>& idx) {
  CaptionedImages c;
  c.size = d.ps.size;
  for (size_t i : idx) {
    c.pixels.push_back(d.ps.image(i));
    c.captions.push_back(d.captions[i]);
  }
  return c;
}

Status write_tiles(const torch::Tensor& imgs, const std::string& dir, const std::vector<std::string>& names,
                   int cols, std::vector<cv::Mat>* tiles_out) {
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

Status run_tokenizer(const GenOptions& o, const GlobalOptions& g) {
  if (o.out.empty()) return Status::error("--out FILE.model is required");
  LF_ASSIGN_OR_RETURN(LoadedData d, load_data(o));
  LF_ASSIGN_OR_RETURN(Tokenizer tok, Tokenizer::train(d.captions, {o.vocab, "bpe", g.seed}));
  LF_RETURN_IF_ERROR(write_file_atomic(o.out, tok.model_bytes()));
  int trunc = 0, maxlen = 0;
  for (const auto& c : d.captions) {
    int n = static_cast<int>(tok.encode_raw(c).size()) + 1;
    maxlen = std::max(maxlen, n);
    trunc += n > 64;
  }
  std::printf("tokenizer: vocab %d, longest caption %d tokens, %d of %zu over 64 -> %s\n", tok.vocab_size(),
              maxlen, trunc, d.captions.size(), o.out.c_str());
  return Status::ok_status();
}

// The training-loop settings shared by train and finetune (warm-up: 10% of the steps, capped).
GenTrainConfig loop_config(const GenOptions& o, const GlobalOptions& g, int64_t max_warmup) {
  GenTrainConfig tc;
  tc.steps = o.steps;
  tc.batch = o.batch;
  tc.lr = o.lr;
  tc.max_minutes = o.max_minutes;
  tc.seed = g.seed;
  tc.out = o.out;
  tc.resume = o.resume;
  tc.ckpt_every = o.ckpt_every;
  tc.sample_every = o.sample_every;
  tc.log_every = o.log_every;
  tc.val_every = o.val_every;
  tc.warmup = std::min<int64_t>(max_warmup, o.steps / 10 + 1);
  return tc;
}

Status run_train(const GenOptions& o, const GlobalOptions& g) {
  if (o.out.empty()) return Status::error("train: --out DIR is required");
  log_info("train " + o.to_json().dump());
  LF_ASSIGN_OR_RETURN(LoadedData d, load_data(o));
  LF_RETURN_IF_ERROR(make_dirs(o.out));
  const std::string tok_path = o.out + "/tokenizer.model";
  Result<Tokenizer> tok = Status::error("unset");
  if (o.resume && file_exists(tok_path)) tok = Tokenizer::load_file(tok_path);
  else if (!o.tokenizer.empty()) tok = Tokenizer::load_file(o.tokenizer);
  else {
    std::vector<std::string> corpus;
    for (size_t i : d.train_idx) corpus.push_back(d.captions[i]);
    tok = Tokenizer::train(corpus, {o.vocab, "bpe", g.seed});
  }
  if (!tok.ok()) return tok.status();
  LF_RETURN_IF_ERROR(write_file_atomic(tok_path, tok->model_bytes()));
  MMDiTConfig mc = MMDiTConfig::preset(o.preset);
  mc.vocab_size = tok->vocab_size();
  mc.image_size = d.ps.size;
  LoadedGenerator latent_space;  // only its autoencoder, for a latent generator
  if (!o.ae.empty()) {
    LF_ASSIGN_OR_RETURN(LoadedAutoencoder la, load_autoencoder(o.ae));
    if (la.model->config().image_size != d.ps.size)
      return Status::error(o.ae + ": the autoencoder is for " + std::to_string(la.model->config().image_size) +
                           "px images, the data is " + std::to_string(d.ps.size) + "px");
    latent_space.ae = la.model;
    latent_space.ae_hash = la.hash;
    latent_space.ae_path = o.ae;
    mc.image_size = la.model->config().latent_size();
    mc.channels = la.model->config().latent_channels;
    mc.patch = 2;
    mc.prediction = "velocity";  // Flux's objective on latents (--prediction overrides)
  }
  if (o.patch > 0) mc.patch = o.patch;
  if (!o.prediction.empty()) mc.prediction = o.prediction;
  if (mc.image_size % mc.patch != 0)
    return Status::error("train: --patch " + std::to_string(mc.patch) + " does not divide the input side " +
                         std::to_string(mc.image_size));
  torch::manual_seed(g.seed);
  MMDiT model(mc);
  log_info("model: " + std::to_string(model->num_parameters()) + " parameters, " + std::to_string(mc.tokens()) +
           " image tokens, preset " + o.preset);
  GenTrainConfig tc = loop_config(o, g, 100);
  tc.flow.prediction = mc.prediction;
  // Validation prompts: the first validation caption of each label, then of each dx.
  std::map<std::string, std::string> by_dx;
  for (size_t i : d.val_idx) by_dx.emplace(d.ps.records[i].dx + std::to_string(d.ps.records[i].label), d.captions[i]);
  for (auto& [k, c] : by_dx)
    if (tc.val_prompts.size() < 8) tc.val_prompts.push_back(c);
  auto train = subset(d, d.train_idx), val = subset(d, d.val_idx);
  LF_RETURN_IF_ERROR(use_latent_space(latent_space, o, d, d.train_idx, d.val_idx, train, val, tc));
  if (latent_space.latent())
    log_info("latent generator on " + o.ae + " (" + std::to_string(mc.channels) + "x" + std::to_string(mc.image_size) +
             "x" + std::to_string(mc.image_size) + " latents, patch " + std::to_string(mc.patch) + ")");
  TrainTarget frozen_text;
  if (o.freeze_text) {
    for (auto& p : model->named_parameters())
      if (p.key().rfind("text.", 0) == 0) p.value().set_requires_grad(false);
      else frozen_text.params.push_back(p.value());
    log_info("text encoder frozen: training " + std::to_string(frozen_text.params.size()) + " parameter tensors");
  }
  LF_ASSIGN_OR_RETURN(GenTrainResult r, train_generator(tc, model, *tok, train, &val, o.freeze_text ? &frozen_text : nullptr));
  nlohmann::json j = {{"step", r.step}, {"last_loss", r.last_loss}, {"seconds", r.seconds},
                      {"images_per_second", r.images_per_second}, {"stopped_by_budget", r.stopped_by_budget},
                      {"checkpoint", o.out + "/ema.safetensors"}};
  if (g.json) emit_json(g, j);
  else std::printf("trained to step %lld (%.1f img/s, last loss %.4f) -> %s/ema.safetensors\n",
                   (long long)r.step, r.images_per_second, r.last_loss, o.out.c_str());
  return Status::ok_status();
}

Status run_sample(const GenOptions& o, const GlobalOptions& g) {
  std::string ckpt = o.checkpoint.empty() ? shipped_model_path(kShippedGenerator) : o.checkpoint;
  if (ckpt.empty())
    return Status::error(std::string("sample: no --checkpoint given and the shipped model models/") + kShippedGenerator +
                         " was not found");
  if (o.checkpoint.empty()) log_info("using the shipped generator " + ckpt);
  if (o.out.empty()) return Status::error("sample: --out DIR is required");
  std::vector<std::string> prompts = o.prompts;
  if (!o.prompts_file.empty()) {
    std::ifstream in(o.prompts_file);
    if (!in) return Status::error(o.prompts_file + ": cannot open");
    std::string line;
    while (std::getline(in, line))
      if (!line.empty()) prompts.push_back(line);
  }
  if (prompts.empty()) return Status::error("sample: give --prompt TEXT (repeatable) or --prompts-file FILE");
  LF_ASSIGN_OR_RETURN(LoadedGenerator gen, load_generator(ckpt, o.ae));
  LoraRuntime lora(gen.model);
  std::string adapter_hashes;
  for (auto& spec : o.lora) {
    auto [path, strength] = split_strength(spec);
    LF_ASSIGN_OR_RETURN(auto a, LoraAdapter::load(path, gen.model, gen.hash));
    LF_RETURN_IF_ERROR(lora.add(a, strength));
    adapter_hashes += (adapter_hashes.empty() ? "" : ",") + a->hash + ":" + std::to_string(strength);
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
      seeds.push_back(g.seed * 1000003ULL + p * 100003ULL + i);
      char nm[64];
      std::snprintf(nm, sizeof nm, "p%03zu_%04d.png", p, i);
      names.push_back(nm);
    }
  GenerateConfig gc;
  gc.sampler.method = o.sampler;
  gc.sampler.steps = o.sample_steps;
  gc.sampler.shift = o.shift;
  gc.cfg_scale = o.cfg;
  apply_recommended_sampling(gen.metadata, o.given, gc);  // a distilled student's settings for flags not given
  gc.cfg_t_lo = o.cfg_interval[0];
  gc.cfg_t_hi = o.cfg_interval[1];
  Progress prog("sample", static_cast<int64_t>(ps.size()), "img");
  std::vector<cv::Mat> tiles;
  std::ostringstream manifest;
  for (size_t s = 0; s < ps.size(); s += 16) {
    size_t e = std::min(ps.size(), s + 16);
    std::vector<std::string> bp(ps.begin() + s, ps.begin() + e);
    std::vector<uint64_t> bs(seeds.begin() + s, seeds.begin() + e);
    auto imgs = generate_images(gen, bp, bs, gc);
    LF_RETURN_IF_ERROR(write_tiles(imgs, o.out, std::vector<std::string>(names.begin() + s, names.begin() + e), o.n, &tiles));
    for (size_t i = s; i < e; ++i)
      manifest << nlohmann::json{{"file", names[i]}, {"prompt", ps[i]}, {"seed", seeds[i]},
                                 {"steps", gc.sampler.steps}, {"cfg", gc.cfg_scale}, {"cfg_interval", o.cfg_interval},
                                 {"sampler", gc.sampler.method}, {"shift", gc.sampler.shift}, {"checkpoint", ckpt},
                                 {"checkpoint_hash", gen.hash}, {"adapters", adapter_hashes}}.dump() << '\n';
    prog.update(static_cast<int64_t>(e));
  }
  prog.finish();
  LF_RETURN_IF_ERROR(write_file_atomic(o.out + "/samples.jsonl", manifest.str()));
  LF_RETURN_IF_ERROR(write_png(o.out + "/grid.png", make_grid(tiles, std::min(o.n, 16))));
  if (!g.json) std::printf("wrote %zu images, grid.png and samples.jsonl to %s\n", ps.size(), o.out.c_str());
  return Status::ok_status();
}

// "path[:strength]" -> (path, strength); strength 1 when absent.
std::pair<std::string, double> split_strength(const std::string& spec) {
  auto c = spec.rfind(':');
  if (c != std::string::npos && c + 1 < spec.size()) {
    char* end = nullptr;
    double v = std::strtod(spec.c_str() + c + 1, &end);
    if (end && *end == '\0') return {spec.substr(0, c), v};
  }
  return {spec, 1.0};
}


// Records of the training split matching every --filter key=value (dx, site, sex, age band).
std::vector<size_t> filtered(const LoadedData& d, const std::vector<size_t>& idx, const std::vector<std::string>& filters,
                             int64_t limit, uint64_t seed) {
  std::vector<size_t> out;
  for (size_t i : idx)
    if (record_matches(d.ps.records[i], filters)) out.push_back(i);
  if (limit > 0 && static_cast<int64_t>(out.size()) > limit) {
    std::mt19937_64 rng(seed + 4242);
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
// autoencoder, whose identity every checkpoint of the run records.
Status use_latent_space(LoadedGenerator& gen, const GenOptions& o, const LoadedData& d, const std::vector<size_t>& tr,
                        const std::vector<size_t>& va, CaptionedImages& train, CaptionedImages& val, GenTrainConfig& tc) {
  if (!gen.latent()) return Status::ok_status();
  LF_RETURN_IF_ERROR(attach_latents(gen, o.data, d.ps, tr, train));
  LF_RETURN_IF_ERROR(attach_latents(gen, o.data, d.ps, va, val));
  tc.ae = gen.ae;
  tc.ae_hash = gen.ae_hash;
  tc.ae_file = std::filesystem::path(gen.ae_path).filename().string();
  const std::string copy = o.out + "/" + tc.ae_file;
  auto have = hash_file(copy);
  if (!have.ok() || *have != gen.ae_hash) {
    LF_ASSIGN_OR_RETURN(std::string bytes, read_file(gen.ae_path));
    LF_RETURN_IF_ERROR(write_file_atomic(copy, bytes));
  }
  return Status::ok_status();
}

Status run_finetune(const GenOptions& o, const GlobalOptions& g) {
  if (o.base.empty()) return Status::error("finetune: --base CHECKPOINT is required");
  if (o.out.empty()) return Status::error("finetune: --out DIR is required");
  LF_RETURN_IF_ERROR(check_filters(o.filter));
  LF_ASSIGN_OR_RETURN(LoadedGenerator base, load_generator(o.base, o.ae));
  LF_ASSIGN_OR_RETURN(LoadedData d, load_data(o));
  if (d.ps.size != pixel_size(base))
    return Status::error("finetune: the data is " + std::to_string(d.ps.size) + "px, the base model " +
                         std::to_string(pixel_size(base)) + "px");
  auto tr_idx = filtered(d, d.train_idx, o.filter, o.limit, g.seed);
  auto va_idx = filtered(d, d.val_idx, o.filter, 0, g.seed);
  if (tr_idx.empty()) return Status::error("finetune: no training images match the filters");
  LF_RETURN_IF_ERROR(make_dirs(o.out));
  GenTrainConfig tc = loop_config(o, g, 50);
  tc.flow = base.flow;
  for (size_t k = 0; k < va_idx.size() && tc.val_prompts.size() < 6; ++k) tc.val_prompts.push_back(d.captions[va_idx[k]]);
  if (tc.val_prompts.empty())
    for (size_t k = 0; k < tr_idx.size() && tc.val_prompts.size() < 6; ++k) tc.val_prompts.push_back(d.captions[tr_idx[k]]);
  auto train = subset(d, tr_idx), val = subset(d, va_idx);
  LF_RETURN_IF_ERROR(use_latent_space(base, o, d, tr_idx, va_idx, train, val, tc));
  const int64_t base_params = base.model->num_parameters();
  nlohmann::json info = {{"base", o.base}, {"base_hash", base.hash}, {"train_images", tr_idx.size()},
                         {"val_images", va_idx.size()}, {"filter", o.filter}, {"base_parameters", base_params}};
  GenTrainResult r;
  if (o.full) {
    info["mode"] = "full";
    info["trainable_parameters"] = base_params;
    log_info("full fine-tune: " + std::to_string(base_params) + " trainable parameters on " + std::to_string(tr_idx.size()) + " images");
    LF_ASSIGN_OR_RETURN(r, train_generator(tc, base.model, *base.tok, train, va_idx.empty() ? nullptr : &val));
  } else {
    LoraSpec spec;
    std::stringstream ts(o.targets);
    spec.targets.clear();
    for (std::string t; std::getline(ts, t, ',');)
      if (!t.empty()) spec.targets.push_back(t);
    spec.rank = o.rank;
    spec.alpha = o.alpha;
    spec.seed = g.seed;
    for (auto& rf : o.rank_for) {
      auto eq = rf.find('=');
      if (eq == std::string::npos) return Status::error("--rank-for '" + rf + "' must be GROUP=RANK");
      spec.rank_for[rf.substr(0, eq)] = std::atoi(rf.c_str() + eq + 1);
    }
    LF_ASSIGN_OR_RETURN(auto adapter, LoraAdapter::create(base.model, spec));
    LoraRuntime rt(base.model);
    LF_RETURN_IF_ERROR(rt.add(adapter, 1.0));
    rt.freeze_base();
    nlohmann::json extra = {{"targets", spec.targets}, {"rank", spec.rank}, {"alpha", spec.alpha}, {"lora_dropout", o.lora_dropout},
                            {"rank_for", spec.rank_for}, {"filter", o.filter}, {"base", o.base}};
    TrainTarget target;
    target.params = adapter->parameters();
    rt.set_rank_dropout(o.lora_dropout, g.seed);
    target.before_forward = [&rt](int64_t step) { rt.apply(step); };
    target.save = [&](const std::string& path, int64_t step, const std::string& kind) {
      extra["weights"] = kind;
      return adapter->save(path, base.hash, step, extra.dump());
    };
    target.load = [&](const std::string& path) -> Status {
      LF_ASSIGN_OR_RETURN(auto saved, LoraAdapter::load(path, base.model, base.hash));
      torch::NoGradGuard ng;
      auto dst = adapter->parameters(), src = saved->parameters();
      if (dst.size() != src.size()) return Status::error(path + ": adapter layout differs from this run's");
      for (size_t i = 0; i < dst.size(); ++i) dst[i].copy_(src[i]);
      return Status::ok_status();
    };
    info["mode"] = "lora";
    info["trainable_parameters"] = adapter->num_parameters();
    info["lora_modules"] = adapter->modules().size();
    log_info("LoRA fine-tune: " + std::to_string(adapter->num_parameters()) + " trainable parameters (" +
             std::to_string(100.0 * adapter->num_parameters() / base_params) + "% of " + std::to_string(base_params) +
             ") in " + std::to_string(adapter->modules().size()) + " modules, " + std::to_string(tr_idx.size()) + " images");
    LF_ASSIGN_OR_RETURN(r, train_generator(tc, base.model, *base.tok, train, va_idx.empty() ? nullptr : &val, &target));
  }
  info["steps"] = r.step;
  info["seconds"] = r.seconds;
  info["steps_per_second"] = (r.step - (o.resume ? 0 : 0)) / std::max(r.seconds, 1e-9);
  info["images_per_second"] = r.images_per_second;
  info["peak_rss_mb"] = peak_rss_mb();
  LF_RETURN_IF_ERROR(write_file_atomic(o.out + "/finetune.json", info.dump(2) + "\n"));
  if (g.json) emit_json(g, info);
  else std::printf("%s fine-tune: %lld trainable parameters, %lld steps, %.2f img/s, peak RSS %ld MB -> %s/ema.safetensors\n",
                   info["mode"].get<std::string>().c_str(), (long long)info["trainable_parameters"].get<int64_t>(),
                   (long long)r.step, r.images_per_second, peak_rss_mb(), o.out.c_str());
  return Status::ok_status();
}

Status run_distill(const GenOptions& o, const GlobalOptions& g) {
  if (o.out.empty()) return Status::error("distill: --out DIR is required");
  if (o.distill.student_steps < 1) return Status::error("distill: --student-steps must be >= 1");
  LF_ASSIGN_OR_RETURN(LoadedGenerator teacher, load_generator(o.teacher, o.ae));
  LF_ASSIGN_OR_RETURN(LoadedGenerator student, load_generator(o.teacher, o.ae));  // starts as the teacher
  LF_ASSIGN_OR_RETURN(LoadedData d, load_data(o));
  if (d.ps.size != pixel_size(teacher))
    return Status::error("distill: the data is " + std::to_string(d.ps.size) + "px, the teacher " +
                         std::to_string(pixel_size(teacher)) + "px");
  LF_RETURN_IF_ERROR(make_dirs(o.out));
  GenTrainConfig tc = loop_config(o, g, 50);
  tc.flow = teacher.flow;
  tc.grid.sampler.steps = o.distill.student_steps;
  tc.grid.cfg_scale = 1.0;
  for (size_t k = 0; k < d.val_idx.size() && tc.val_prompts.size() < 6; ++k) tc.val_prompts.push_back(d.captions[d.val_idx[k]]);
  auto train = subset(d, d.train_idx), val = subset(d, d.val_idx);
  LF_RETURN_IF_ERROR(use_latent_space(student, o, d, d.train_idx, d.val_idx, train, val, tc));
  TrainTarget target;
  target.params = student.model->parameters();
  add_distillation(target, teacher.model, *teacher.tok, teacher.flow, o.distill);
  const nlohmann::json sampling = sampling_metadata(tc.grid);
  const std::map<std::string, std::string> md = {
      {"sampling", sampling.dump()},
      {"distilled_from", nlohmann::json{{"teacher", o.teacher}, {"teacher_hash", teacher.hash},
                                        {"guidance", o.distill.guidance}, {"student_steps", o.distill.student_steps},
                                        {"substeps", o.distill.substeps}}.dump()}};
  std::map<std::string, std::string> student_md = md;
  if (student.latent()) student_md["ae"] = ae_metadata(tc.ae_hash, tc.ae_file);
  target.save = [&](const std::string& path, int64_t s, const std::string& kind) {
    return save_generator(path, student.model, *student.tok, s, student.flow, kind, student_md);
  };
  log_info("distill: student of " + o.teacher + " for " + std::to_string(o.distill.student_steps) +
           " Euler steps without guidance (teacher CFG " + std::to_string(o.distill.guidance) + ", " +
           std::to_string(o.distill.substeps) + " teacher steps per student step)");
  LF_ASSIGN_OR_RETURN(GenTrainResult r, train_generator(tc, student.model, *student.tok, train, &val, &target));
  nlohmann::json j = {{"step", r.step}, {"last_loss", r.last_loss}, {"seconds", r.seconds},
                      {"images_per_second", r.images_per_second}, {"stopped_by_budget", r.stopped_by_budget},
                      {"checkpoint", o.out + "/ema.safetensors"}, {"sampling", sampling}};
  LF_RETURN_IF_ERROR(write_file_atomic(o.out + "/distill.json", j.dump(2) + "\n"));
  if (g.json) emit_json(g, j);
  else std::printf("distilled to step %lld (%.1f img/s, last loss %.4f) -> %s/ema.safetensors (samples with %d steps, no CFG)\n",
                   (long long)r.step, r.images_per_second, r.last_loss, o.out.c_str(), o.distill.student_steps);
  return Status::ok_status();
}

Status run_lora_merge(const GenOptions& o, const GlobalOptions& g) {
  if (o.lora.empty()) return Status::error("lora merge: give --adapter FILE[:STRENGTH] (repeatable)");
  std::vector<std::pair<std::string, double>> ads;
  for (auto& s : o.lora) ads.push_back(split_strength(s));
  LF_RETURN_IF_ERROR(merge_lora(o.base, ads, o.out));
  if (!g.json) std::printf("merged %zu adapter(s) into %s\n", ads.size(), o.out.c_str());
  return Status::ok_status();
}

}  // namespace

void add_generator(CLI::App& app, GlobalOptions& g, Runner* run) {
  static GenOptions o;
  auto data_flags = [](CLI::App* s) {
    s->add_option("--data", o.data, "prepared cache directory (lesionflow data prepare)");
    s->add_option("--captions", o.captions, "captions.jsonl (id, caption); default: composed from metadata");
    s->add_option("--splits", o.splits, "splits CSV: train on 'train', validate on 'val'");
    s->add_option("--vocab", o.vocab, "tokenizer vocabulary size (upper bound)")->capture_default_str();
  };
  // The training-loop flags shared by train and finetune.
  auto loop_flags = [](CLI::App* s) {
    s->add_option("--steps", o.steps, "total optimisation steps")->capture_default_str();
    s->add_option("--batch", o.batch, "batch size")->capture_default_str();
    s->add_option("--lr", o.lr, "peak learning rate")->capture_default_str();
    s->add_option("--max-minutes", o.max_minutes, "wall-clock budget; checkpoint and stop (0 = none)");
    s->add_option("--ckpt-every", o.ckpt_every, "checkpoint every N steps")->capture_default_str();
    s->add_option("--sample-every", o.sample_every, "validation grid every N steps")->capture_default_str();
    s->add_option("--log-every", o.log_every, "metrics every N steps")->capture_default_str();
    s->add_option("--val-every", o.val_every, "validation loss (EMA weights) every N steps")->capture_default_str();
    s->add_flag("--resume", o.resume, "continue the run in --out exactly where it stopped");
  };
  auto* text = app.add_subcommand("text", "tokenizer tools");
  text->require_subcommand(1);
  auto* tt = text->add_subcommand("train-tokenizer", "train a sentencepiece model on the captions");
  data_flags(tt);
  tt->add_option("--out", o.out, "output .model file")->required();
  tt->callback([&g, run]() { *run = [&g]() { return run_tokenizer(o, g); }; });

  auto* tr = app.add_subcommand("train", "train the text-to-image rectified-flow generator");
  data_flags(tr);
  tr->add_option("--tokenizer", o.tokenizer, "sentencepiece model (default: train one on the captions)");
  tr->add_option("--preset", o.preset, "tiny | small | base")->capture_default_str();
  tr->add_option("--prediction", o.prediction, "velocity | x (default: the preset's)");
  tr->add_option("--ae", o.ae, "autoencoder .safetensors: train a latent generator on its cached latents (ae encode)");
  tr->add_option("--patch", o.patch, "patch side (default: the preset's; 2 on latents)")->check(CLI::Range(1, 32));
  tr->add_flag("--freeze-text", o.freeze_text, "keep the text encoder at its initial (or --resume) weights");
  loop_flags(tr);
  tr->add_option("--out", o.out, "run directory")->required();
  tr->callback([&g, run]() { *run = [&g]() { return run_train(o, g); }; });

  auto* sa = app.add_subcommand("sample", "generate images from prompts with a trained generator");
  sa->add_option("--checkpoint", o.checkpoint, std::string("generator .safetensors (default: the shipped models/") + kShippedGenerator + ")");
  sa->add_option("--prompt", o.prompts, "prompt (repeatable)");
  sa->add_option("--prompts-file", o.prompts_file, "one prompt per line");
  sa->add_option("--n", o.n, "images per prompt")->capture_default_str();
  // Unset sampler flags take the checkpoint's recommendation (a distilled student's), else these defaults.
  sa->add_option("--steps", o.sample_steps, "sampler steps (default: the checkpoint's recommendation, else 20)")
      ->each([](const std::string&) { o.given.steps = true; });
  sa->add_option("--cfg", o.cfg, "classifier-free guidance scale, 1 = off (default: the checkpoint's, else 4)")
      ->each([](const std::string&) { o.given.cfg = true; });
  sa->add_option("--cfg-interval", o.cfg_interval, "guide only while LO <= t <= HI (t = 1 is noise)")
      ->expected(2)->check(CLI::Range(0.0, 1.0))->capture_default_str();
  sa->add_option("--sampler", o.sampler, "euler | heun | ab2 | dpm2m (default: the checkpoint's, else euler)")
      ->check(CLI::IsMember({"euler", "heun", "ab2", "dpm2m"}))->each([](const std::string&) { o.given.sampler = true; });
  sa->add_option("--shift", o.shift, "timestep shift of the schedule (default: the checkpoint's, else 1)")
      ->each([](const std::string&) { o.given.shift = true; });
  sa->add_option("--ae", o.ae, "autoencoder of a latent generator (default: the file its checkpoint names, beside it)");
  sa->add_option("--lora", o.lora, "LoRA adapter FILE[:STRENGTH] applied at run time (repeatable)");
  sa->add_option("--out", o.out, "output directory")->required();
  sa->callback([&g, run]() { *run = [&g]() { return run_sample(o, g); }; });

  auto* ft = app.add_subcommand("finetune", "adapt a trained generator to a subset with LoRA (or --full)");
  data_flags(ft);
  ft->add_option("--base", o.base, "base generator checkpoint")->required();
  ft->add_option("--ae", o.ae, "autoencoder of a latent base (default: the file its checkpoint names, beside it)");
  ft->add_option("--filter", o.filter, "train on images with dx=, site=, sex= or age=VALUE (repeatable, all must match)");
  ft->add_option("--limit", o.limit, "at most N training images (seeded choice)")->capture_default_str();
  ft->add_option("--rank", o.rank, "LoRA rank")->capture_default_str();
  ft->add_option("--alpha", o.alpha, "LoRA alpha (scale alpha/rank)")->capture_default_str();
  ft->add_option("--targets", o.targets, "attn,mlp,mod,io,text or re:REGEX")->capture_default_str();
  ft->add_option("--rank-for", o.rank_for, "per-group rank, e.g. mod=4 (repeatable)");
  ft->add_option("--lora-dropout", o.lora_dropout, "rank dropout on the LoRA path: each step drops each rank component with probability P")
      ->check(CLI::Range(0.0, 0.95))->capture_default_str();
  ft->add_flag("--full", o.full, "full fine-tune of every weight (for comparison)");
  loop_flags(ft);
  ft->add_option("--out", o.out, "run directory (adapter: ema.safetensors / checkpoint.safetensors)")->required();
  ft->callback([&g, run]() { *run = [&g]() { return run_finetune(o, g); }; });

  auto* di = app.add_subcommand("distill", "distil a generator into a few-step student that needs no guidance");
  data_flags(di);
  di->add_option("--teacher", o.teacher, "teacher generator checkpoint (the student starts as a copy)")->required();
  di->add_option("--ae", o.ae, "autoencoder of a latent teacher (default: the file its checkpoint names, beside it)");
  di->add_option("--guidance", o.distill.guidance, "teacher CFG scale baked into the student")->capture_default_str();
  di->add_option("--student-steps", o.distill.student_steps, "Euler steps the student samples with")->capture_default_str();
  di->add_option("--substeps", o.distill.substeps, "teacher Euler steps per student step (1 = guidance distillation only)")
      ->check(CLI::Range(1, 64))->capture_default_str();
  di->add_option("--grid-fraction", o.distill.grid_fraction, "share of training timesteps on the student's step grid")
      ->check(CLI::Range(0.0, 1.0))->capture_default_str();
  loop_flags(di);
  di->add_option("--out", o.out, "run directory (student: ema.safetensors)")->required();
  di->callback([&g, run]() { *run = [&g]() { return run_distill(o, g); }; });

  auto* lo = app.add_subcommand("lora", "LoRA adapter tools");
  lo->require_subcommand(1);
  auto* mg = lo->add_subcommand("merge", "merge adapters into a new full generator checkpoint");
  mg->add_option("--base", o.base, "base generator checkpoint")->required();
  mg->add_option("--adapter", o.lora, "adapter FILE[:STRENGTH] (repeatable)")->required();
  mg->add_option("--out", o.out, "merged checkpoint")->required();
  mg->callback([&g, run]() { *run = [&g]() { return run_lora_merge(o, g); }; });
}

}  // namespace lf::cli
