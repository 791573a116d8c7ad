// lesionflow bench: speed of the pipeline's stages in ONE run, against the machine's sgemm and
// against the same models in python3-torch, interleaved so drift hits every variant alike.
#include "pipeline/bench.h"

#include <torch/csrc/autograd/profiler_legacy.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <numeric>
#include <opencv2/imgproc.hpp>
#include <regex>
#include <tuple>

#include "adapters/lora.h"
#include "classify/classifier.h"
#include "lesionflow/captions.h"
#include "lesionflow/concepts.h"
#include "lesionflow/io.h"
#include "lesionflow/log.h"
#include "lesionflow/phantom.h"
#include "lesionflow/record_pixels.h"
#include "lesionflow/runtime.h"
#include "lesionflow/scratch.h"
#include "train/common.h"
#include "train/generator.h"

namespace lf {

double bench_util::median(std::vector<double> v) {
  if (v.empty()) return std::nan("");
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

namespace {
using bench_util::Clock;
using bench_util::median;
using bench_util::since;

// Forward FLOPs of one image through the MMDiT (multiply-adds x 2), counted per layer from the
// config; T text tokens. Norms, activations, RoPE and softmax are not counted (< 2%).
// `text_encoder` = false leaves out the text encoder (sampling encodes each prompt once).
double mmdit_forward_flops(const MMDiTConfig& c, int T, bool text_encoder = true) {
  const double D = c.dim, Dt = c.text_dim, hid = c.mlp_ratio * c.dim, N = c.tokens(), L = N + T;
  const double pd = c.patch * c.patch * c.channels, S2 = double(c.image_size) * c.image_size;
  double mac = 0;
  if (text_encoder) mac += c.text_layers * (T * 12 * Dt * Dt + 2 * T * T * Dt);
  mac += 256 * D + D * D + Dt * D + D * D;  // timestep + pooled text
  mac += N * pd * D + T * Dt * D;           // input projections
  mac += c.double_blocks * (2 * 6 * D * D + L * (4 * D * D + 2 * D * hid) + 2 * L * L * D);
  mac += c.single_blocks * (3 * D * D + L * (D * (3 * D + hid) + (D + hid) * D) + 2 * L * L * D);
  mac += 2 * D * D + N * D * pd;  // final layer
  const double rc = c.refine_channels, C = c.channels;
  if (rc > 0) mac += S2 * 9 * (2 * C * rc + rc * rc + rc * C);  // conv refinement head
  return 2 * mac;
}

// FLOPs of sampling one image the way generate() does it: the prompt (T real tokens) is encoded
// once, every step runs the image/text body; with guidance the unconditional branch is a
// 1-token sequence, also encoded once.
double mmdit_sample_flops(const MMDiTConfig& c, int T, int steps, bool guided) {
  auto once = [&](int t) { return mmdit_forward_flops(c, t) - mmdit_forward_flops(c, t, false); };
  double f = once(T) + steps * mmdit_forward_flops(c, T, false);
  if (guided) f += once(1) + steps * mmdit_forward_flops(c, 1, false);
  return f;
}

struct Variant {
  std::string name, unit;
  std::function<double()> run;  // one measurement: units per second
  double flops_per_unit = 0;    // for achieved GFLOP/s (0: not counted)
  std::vector<double> values;
};

// A generator fine-tune step, full (every weight trained) or LoRA (rank 16 on attn+mlp, base
// frozen), on one fixed batch of random images: what `lesionflow finetune` does per step.
struct FinetuneBench {
  MMDiT model{nullptr};
  std::shared_ptr<LoraAdapter> adapter;
  std::unique_ptr<LoraRuntime> rt;
  std::unique_ptr<torch::optim::AdamW> opt;
  std::vector<torch::Tensor> params;
  torch::Tensor x0, ids, mask;
  FlowConfig flow;
  std::unique_ptr<ShardThreads> shards;  // as train splits its batches (ShardThreads)
  FinetuneBench(const MMDiTConfig& mc, bool lora, int B, int T, int batch_threads = 0) : model(mc) {
    x0 = torch::randn({B, mc.channels, mc.image_size, mc.image_size});
    ids = torch::randint(3, mc.vocab_size, {B, T}, torch::kInt64);
    mask = torch::ones({B, T}, torch::kBool);
    set_shards(batch_threads);
    flow.prediction = mc.prediction;
    if (lora) {
      adapter = std::move(LoraAdapter::create(model, LoraSpec{}).value());
      rt = std::make_unique<LoraRuntime>(model);
      (void)rt->add(adapter, 1.0);
      rt->freeze_base();
      params = adapter->parameters();
    } else {
      params = model->parameters();
    }
    opt = std::make_unique<torch::optim::AdamW>(params, torch::optim::AdamWOptions(1e-4));
  }
  void set_shards(int batch_threads) {  // 0 = auto, as train
    const int intra = at::get_num_threads();
    shards.reset();
    shards = std::make_unique<ShardThreads>(
        ShardThreads::resolve(batch_threads, x0.size(0), intra, true), intra);
  }
  int64_t trainable() const {
    int64_t n = 0;
    for (auto& p : params) n += p.numel();
    return n;
  }
  void step() {
    if (rt) rt->apply();
    auto gen = at::detail::createCPUGenerator(1);
    auto t = sample_timesteps(x0.size(0), flow, gen);
    generator_backward(model, {x0, torch::randn_like(x0), t, ids, mask}, flow, *shards, params);
    clip_adamw_ema_step(*opt, params, 1.0);  // as training runs it (no EMA, as in python)
  }
};

// The optimizer side of a generator training step (clip + AdamW + EMA) on copies of a model's
// parameters with fixed random gradients: libtorch's ops one after another, or fused.
struct OptimizerBench {
  std::vector<torch::Tensor> params, ema;
  std::unique_ptr<torch::optim::AdamW> opt;
  explicit OptimizerBench(const std::vector<torch::Tensor>& from) {
    for (const auto& p : from) {
      params.push_back(p.detach().clone().requires_grad_(true));
      params.back().mutable_grad() = torch::randn_like(p) * 1e-3;
      ema.push_back(p.detach().clone());
    }
    opt = std::make_unique<torch::optim::AdamW>(
        params, torch::optim::AdamWOptions(1e-4).weight_decay(0.01).betas({0.9, 0.99}));
  }
  double steps_per_second(bool fused, int n) {
    auto t0 = Clock::now();
    for (int i = 0; i < n; ++i) {
      if (fused) {
        clip_adamw_ema_step(*opt, params, 1.0, &ema, 0.999);
      } else {
        clip_grad_norm(params, 1.0);
        opt->step();
        ema_update(ema, params, 0.999);
      }
    }
    return n / since(t0);
  }
};

// Child mode: memory of one fine-tune mode in a fresh process (peak RSS is per process).
Status run_child_memory(const BenchOptions& o) {
  MMDiTConfig mc = MMDiTConfig::preset(o.preset);
  mc.vocab_size = 512;
  torch::manual_seed(0);
  FinetuneBench fb(mc, o.child_memory == "lora", o.batch, o.text_tokens, o.batch_threads);
  const long before = rss_now_mb();
  for (int i = 0; i < 3; ++i) fb.step();
  nlohmann::json j = {{"mode", o.child_memory},
                      {"trainable_parameters", fb.trainable()},
                      {"base_parameters", fb.model->num_parameters()},
                      {"rss_before_mb", before},
                      {"peak_rss_mb", peak_rss_mb()},
                      {"training_mb", peak_rss_mb() - before}};
  std::printf("%s\n", j.dump().c_str());
  return Status::ok_status();
}

// Runs f under the legacy profiler with input shapes and writes a chrome trace (complete events,
// the input shapes under args) -- RecordProfile writes no shapes. scripts/profile_ops.py sums it.
Status write_profile(const std::string& path, const std::function<void()>& f) {
  namespace prof = torch::autograd::profiler;
  prof::enableProfilerLegacy(
      torch::profiler::impl::ProfilerConfig(torch::profiler::impl::ProfilerState::CPU, true));
  f();
  auto lists = prof::disableProfilerLegacy();
  nlohmann::json events = nlohmann::json::array();
  for (const auto& list : lists) {
    std::map<at::RecordFunctionHandle, const prof::LegacyEvent*> open;
    for (const auto& e : list) {
      if (e.kind() == prof::EventKind::PushRange) {
        open[e.handle()] = &e;
      } else if (e.kind() == prof::EventKind::PopRange) {
        auto it = open.find(e.handle());
        if (it == open.end()) continue;
        const auto& s = *it->second;
        events.push_back({{"name", s.name()},
                          {"ph", "X"},
                          {"ts", s.cpuUs()},
                          {"dur", s.cpuElapsedUs(e)},
                          {"pid", 0},
                          {"tid", s.threadId()},
                          {"args", {{"shapes", s.shapes()}}}});
        open.erase(it);
      }
    }
  }
  return write_file_atomic(path, events.dump() + "\n");
}

}  // namespace

namespace {
struct OpTimerCtx : at::ObserverContext {
  std::chrono::steady_clock::time_point start;
  bool top = false;
};
struct OpTimer {
  std::mutex mu;
  std::map<std::string, std::pair<double, int64_t>> ops;  // name -> (ms, calls), under mu
};
std::atomic<OpTimer*> op_timer{nullptr};
thread_local int op_depth = 0;  // nesting of the ops running on this thread
}  // namespace

nlohmann::json time_top_level_ops(const std::function<void()>& f, int steps) {
  OpTimer timer;
  op_timer = &timer;
  auto handle = at::addThreadLocalCallback(
      at::RecordFunctionCallback(
          [](const at::RecordFunction&) -> std::unique_ptr<at::ObserverContext> {
            if (!op_timer) return nullptr;
            auto c = std::make_unique<OpTimerCtx>();
            c->top = op_depth++ == 0;
            c->start = std::chrono::steady_clock::now();
            return c;
          },
          [](const at::RecordFunction& fn, at::ObserverContext* ctx) {
            OpTimer* t = op_timer;
            if (!t || !ctx) return;
            auto* c = static_cast<OpTimerCtx*>(ctx);
            --op_depth;
            if (!c->top) return;
            const double ms = std::chrono::duration<double, std::milli>(
                                  std::chrono::steady_clock::now() - c->start)
                                  .count();
            std::lock_guard<std::mutex> lock(t->mu);
            auto& e = t->ops[fn.name()];
            e.first += ms;
            ++e.second;
          })
          .needsInputs(false));
  struct Remove {  // also when f throws: the callback must not outlive `timer`
    at::CallbackHandle h;
    ~Remove() {
      at::removeCallback(h);
      op_timer = nullptr;
    }
  } remove{handle};
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < steps; ++i) f();
  const double wall =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::vector<std::tuple<double, std::string, int64_t>> order;  // (ms, name, calls)
  double total = 0;
  for (const auto& [name, e] : timer.ops) {
    order.emplace_back(e.first, name, e.second);
    total += e.first;
  }
  std::sort(order.rbegin(), order.rend());
  nlohmann::json ops = nlohmann::json::array();
  for (const auto& [ms, name, calls] : order)
    ops.push_back({{"name", name},
                   {"ms_per_step", ms / steps},
                   {"calls_per_step", static_cast<double>(calls) / steps}});
  return {{"steps", steps},
          {"wall_ms_per_step", wall / steps},
          {"ops_ms_per_step", total / steps},
          {"ops", ops}};
}

Result<nlohmann::json> run_bench(const BenchOptions& o) {
  if (!o.child_memory.empty()) {
    LF_RETURN_IF_ERROR(run_child_memory(o));
    return nlohmann::json{};
  }
  if (!o.child_dist.empty()) {
    LF_RETURN_IF_ERROR(run_child_dist(o));
    return nlohmann::json{};
  }
  const int threads = get_threads();
  log_info("bench: " + std::to_string(threads) + " threads, " + std::to_string(o.reps) +
           " repetitions, BLAS " + loaded_blas() + ", allocator " + loaded_allocator());
  // Generator (random weights: speed does not depend on training).
  std::vector<std::string> corpus;
  auto phantoms = load_dataset("phantom:64", {}, 1);
  for (auto& r : phantoms->records)
    corpus.push_back(compose_caption(facts_from_record(r), std::hash<std::string>{}(r.id) | 1));
  auto tok_r = Tokenizer::train(corpus, {512, "bpe", 0});
  if (!tok_r.ok()) return tok_r.status();
  Tokenizer tok = std::move(*tok_r);
  MMDiTConfig mc = MMDiTConfig::preset(o.preset);
  mc.vocab_size = tok.vocab_size();
  if (o.space == "latent") {  // as train --ae does with the f=4, 4-channel autoencoder
    mc.image_size /= 4;
    mc.channels = 4;
    mc.patch = 2;
    mc.prediction = Prediction::kVelocity;
  }
  torch::manual_seed(0);
  const int S = mc.image_size, B = o.batch, T = o.text_tokens;
  // A training step is a full fine-tune step: one object serves the training row, the
  // LoRA-vs-full ratio and (its random weights) the sampling rows.
  auto full = std::make_shared<FinetuneBench>(mc, false, B, T, o.batch_threads);
  MMDiT& model = full->model;
  const FlowConfig& flow = full->flow;
  auto gen_step = [full] { full->step(); };
  const double train_flops_per_img = 3 * mmdit_forward_flops(mc, T);
  if (o.op_times > 0) {  // top-level op times of the training step, after two warm-up steps
    for (int i = 0; i < 2; ++i) gen_step();
    nlohmann::json r = time_top_level_ops(gen_step, o.op_times);
    std::printf("generator train step (%s): %.1f ms wall, %.1f ms in top-level ops, per step\n",
                precision_name(compute_precision()), r["wall_ms_per_step"].get<double>(),
                r["ops_ms_per_step"].get<double>());
    for (size_t i = 0; i < std::min<size_t>(40, r["ops"].size()); ++i) {
      const auto& e = r["ops"][i];
      std::printf("%9.2f ms %7.1f x  %s\n", e["ms_per_step"].get<double>(),
                  e["calls_per_step"].get<double>(), e["name"].get<std::string>().c_str());
    }
    r["precision"] = precision_name(compute_precision());
    return r;
  }
  if (!o.profile.empty()) {  // per-op times (chrome://tracing; scripts/profile_ops.py sums them)
    gen_step();
    LF_RETURN_IF_ERROR(write_profile(o.profile, [&] {
      for (int i = 0; i < 2; ++i) gen_step();
    }));
    log_info("bench: wrote " + o.profile);
    return nlohmann::json{{"profile", o.profile}};
  }
  std::vector<Variant> vs;
  vs.push_back({"sgemm 2048", "GFLOP/s", [] { return measure_sgemm_gflops(2048, 1.0); }});
  vs.push_back({"generator train step (C++)", "img/s",
                [&] {
                  auto t0 = Clock::now();
                  for (int i = 0; i < 3; ++i) gen_step();
                  return 3.0 * B / since(t0);
                },
                train_flops_per_img});
  // Its optimizer side alone (issue 20), with the EMA training keeps: the ratio of the two rows is
  // what fusing saves, their difference in seconds what it saves per step.
  auto optb = std::make_shared<OptimizerBench>(model->parameters());
  for (bool fused : {false, true})
    vs.push_back({fused ? "optimizer step, fused (clip+AdamW+EMA)"
                        : "optimizer step, libtorch ops (clip+AdamW+EMA)",
                  "steps/s", [optb, fused] { return optb->steps_per_second(fused, 5); }});
  // bf16 rows (issue 20) where the CPU has AVX512_BF16/AMX: the same step with the GEMMs in
  // bfloat16 (fp32 master weights), against a same-run bf16 GEMM.
  const bool bf16 = cpu_has_bf16();
  // Runs f at the given compute precision and restores fp32 (the bench's default).
  auto at_precision = [](Precision p, const std::function<double()>& f) {
    return [p, f] {
      set_compute_precision(p);
      double v = f();
      set_compute_precision(Precision::kFP32);
      return v;
    };
  };
  if (bf16) {
    vs.push_back({"bf16 GEMM 2048", "GFLOP/s", [] { return measure_bf16_gemm_gflops(2048, 1.0); }});
    vs.push_back({"generator train step, bf16 (C++)", "img/s",
                  at_precision(Precision::kBF16,
                               [&] {
                                 auto t0 = Clock::now();
                                 for (int i = 0; i < 3; ++i) gen_step();
                                 return 3.0 * B / since(t0);
                               }),
                  train_flops_per_img});
    // The same step without batch shards (the whole batch on all the intra-op threads), for the
    // shards' share of the speed in the same run.
    if (full->shards->shards() > 1)
      vs.push_back({"generator train step, bf16, one shard (C++)", "img/s",
                    at_precision(Precision::kBF16,
                                 [&] {
                                   full->set_shards(1);
                                   auto t0 = Clock::now();
                                   for (int i = 0; i < 3; ++i) gen_step();
                                   const double ips = 3.0 * B / since(t0);
                                   full->set_shards(o.batch_threads);
                                   return ips;
                                 }),
                    train_flops_per_img});
  }
  if (!o.no_python) {
    std::string cmd = o.python + " scripts/bench_torch.py gen-train '" + mc.to_json().dump() +
                      "' " + std::to_string(B) + " " + std::to_string(T) + " 3 " +
                      std::to_string(threads) + " 2>/dev/null";
    // Twice: python's default glibc malloc, and the allocator lesionflow runs with (tcmalloc,
    // preloaded; or glibc with tune_allocator's settings), so the C++/python ratio can be read
    // without the allocator's share.
    const std::string alloc = loaded_allocator();
    const std::string tuned =
        alloc.front() == '/'
            ? "LD_PRELOAD=" + alloc + " "
            : "GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold="
              "1073741824 ";
    for (const std::string& env : {std::string(), tuned}) {
      std::string c = env + cmd;
      vs.push_back({env.empty() ? "generator train step (python3-torch)"
                                : "generator train step (python3-torch, same malloc settings)",
                    "img/s",
                    [c] {
                      auto out = run_command_capture(c);
                      try {
                        return nlohmann::json::parse(out)["images_per_second"].get<double>();
                      } catch (...) {
                        log_warn("python benchmark failed: " + out.substr(0, 200));
                        return std::nan("");
                      }
                    },
                    train_flops_per_img});
    }
  }
  // LoRA fine-tune of the same base (the full fine-tune is the training row above): steps/s
  // here, memory from one child process per mode.
  auto lora = std::make_shared<FinetuneBench>(mc, true, B, T, o.batch_threads);
  vs.push_back({"fine-tune step, lora (rank 16, attn+mlp)", "steps/s", [lora] {
                  auto t0 = Clock::now();
                  for (int i = 0; i < 2; ++i) lora->step();
                  return 2.0 / since(t0);
                }});
  std::vector<std::string> prompts(16, corpus[0]);
  const int prompt_tokens =
      tok.encode(corpus[0], mc.max_text_len).length;  // generate() trims the padding
  std::vector<uint64_t> seeds(16);
  std::iota(seeds.begin(), seeds.end(), 1);
  // The default sampler (20 Euler steps) with and without guidance, and a distilled student's
  // settings (`lesionflow distill`: few Euler steps, no guidance; same network, so random weights
  // time it as well as trained ones).
  struct SampleVariant {
    int steps;
    double cfg;
    std::string label;
  };
  for (const auto& sv :
       {SampleVariant{o.sample_steps, o.cfg, "CFG " + std::to_string(o.cfg).substr(0, 3)},
        SampleVariant{o.sample_steps, 1.0, "no CFG"},
        SampleVariant{o.distilled_steps, 1.0, "distilled student, no CFG"}}) {
    GenerateConfig gc;
    gc.sampler.steps = sv.steps;
    gc.cfg_scale = sv.cfg;
    gc.batch = 16;
    gc.batch_threads = o.batch_threads;
    // One row: 16 images with `g`, at fp32 or bf16.
    auto row = [&](const std::string& suffix, const GenerateConfig& g, bool in_bf16) {
      std::function<double()> f = [&model, &tok, &flow, prompts, seeds, g] {
        auto t0 = Clock::now();
        generate(model, tok, flow, prompts, seeds, g);
        return 16.0 / since(t0);
      };
      vs.push_back({"sampling, " + std::to_string(sv.steps) + " Euler steps, " + sv.label + suffix,
                    "img/s",
                    in_bf16 ? std::function<double()>(at_precision(Precision::kBF16, f)) : f,
                    mmdit_sample_flops(mc, prompt_tokens, sv.steps, sv.cfg != 1.0)});
    };
    row("", gc, false);
    if (bf16 && sv.cfg != 1.0) {
      row(", bf16", gc, true);
      if (o.batch_threads != 1) {  // the shards' share, in the same run
        GenerateConfig one = gc;
        one.batch_threads = 1;
        row(", bf16, one shard", one, true);
      }
    }
  }
  // Classifiers at the same image size.
  auto cls_set = std::make_shared<LabeledSet>();
  {
    auto ds = load_dataset("phantom:256", {}, 2);
    PrepareStats st;
    auto ps = prepare(*ds, PrepareConfig{S, FitMode::kCrop, threads}, &st);
    std::vector<size_t> all(ps->count());
    std::iota(all.begin(), all.end(), 0);
    *cls_set = labeled_from_prepared(*ps, all, nullptr);
  }
  for (std::string arch : {"cnn", "vit"}) {
    ClassifierConfig cc;
    cc.arch = *parse_arch(arch);
    cc.image_size = S;
    auto m = std::make_shared<Classifier>(cc);
    auto copt =
        std::make_shared<torch::optim::AdamW>((*m)->parameters(), torch::optim::AdamWOptions(1e-3));
    auto cls_train = [m, copt, cls_set] {
      (*m)->train();
      auto t0 = Clock::now();
      for (int i = 0; i < 4; ++i) {
        std::vector<const uint8_t*> px;
        std::vector<int64_t> y;
        for (int k = 0; k < 64; ++k) {
          px.push_back(cls_set->image((i * 64 + k) % cls_set->count()));
          y.push_back(cls_set->labels[(i * 64 + k) % cls_set->count()]);
        }
        auto loss = torch::nn::functional::cross_entropy(
            (*m)->forward(images_to_tensor(px, cls_set->size)), torch::tensor(y));
        copt->zero_grad();
        loss.backward();
        copt->step();
      }
      return 256.0 / since(t0);
    };
    vs.push_back({arch + " classifier train (C++)", "img/s", cls_train});
    if (bf16)
      vs.push_back({arch + " classifier train, bf16 (C++)", "img/s",
                    at_precision(Precision::kBF16, cls_train)});
    vs.push_back({arch + " classifier eval (C++)", "img/s", [m, cls_set] {
                    auto t0 = Clock::now();
                    predict_malignant(*m, *cls_set);
                    return cls_set->count() / since(t0);
                  }});
    if (arch == "vit" && !o.no_python) {
      std::string cmd = o.python + " scripts/bench_torch.py vit-train " + std::to_string(S) + " " +
                        std::to_string(cc.patch) + " " + std::to_string(cc.vit_dim) + " " +
                        std::to_string(cc.vit_depth) + " " + std::to_string(cc.vit_heads) +
                        " 64 4 " + std::to_string(threads) + " 2>/dev/null";
      vs.push_back({"vit classifier train (python3-torch)", "img/s", [cmd] {
                      auto out = run_command_capture(cmd);
                      try {
                        return nlohmann::json::parse(out)["images_per_second"].get<double>();
                      } catch (...) {
                        return std::nan("");
                      }
                    }});
    }
  }
  // Data preparation and captioning on real images when present (else phantoms).
  std::string spec =
      file_exists(o.data + "/HAM10000_metadata.csv") ? "ham10000:" + o.data : "phantom:256";
  LF_ASSIGN_OR_RETURN(Dataset ds, load_dataset(spec, {}, 0));
  if (ds.records.size() > 256) ds.records.resize(256);
  vs.push_back(
      {"prepare at " + std::to_string(S) + " px (" + ds.kind + ")", "img/s", [ds, S, threads] {
         PrepareStats st;
         auto t0 = Clock::now();
         auto ps = prepare(ds, PrepareConfig{S, FitMode::kCrop, threads}, &st);
         return ds.records.size() / since(t0);
       }});
  vs.push_back({"captioning: measure ABC(D), 1 thread (" + ds.kind + ")", "img/s", [ds] {
                  auto t0 = Clock::now();
                  int n = 0;
                  for (size_t i = 0; i < 24 && i < ds.records.size(); ++i) {
                    cv::Mat rgb, mask;
                    if (!load_record_pixels(ds.records[i], 128, &rgb, &mask).ok()) continue;
                    measure_lesion(rgb, mask);
                    ++n;
                  }
                  return n / since(t0);
                }});
  // concepts measure on a folder (decode + measure, all threads): dermoscopy-sized 768x576 PNGs
  // and 64x64 generated-size ones (phantoms, written once).
  for (int side : {576, 64}) {
    const int w = side > 100 ? side * 4 / 3 : side;
    const std::string name = "concepts measure, " + std::to_string(w) + "x" + std::to_string(side) +
                             " PNGs (" + std::to_string(threads) + " threads)";
    // The images are written only when the row is selected (--only filters the rows below).
    if (!o.only.empty() && !std::regex_search(name, std::regex(o.only, std::regex::icase)))
      continue;
    LF_ASSIGN_OR_RETURN(TempDir td, TempDir::create("bench_measure_" + std::to_string(side)));
    auto scratch = std::make_shared<TempDir>(std::move(td));  // lives as long as the row
    const std::string dir = scratch->path();
    const int n = side > 100 ? 48 : 256;
    for (int i = 0; i < n; ++i) {
      cv::Mat sq, mask, img, bgr;
      render_phantom(sample_phantom_params(5000 + i), side, &sq, &mask);
      cv::copyMakeBorder(sq, img, 0, 0, (w - side) / 2, w - side - (w - side) / 2,
                         cv::BORDER_REFLECT);
      cv::cvtColor(img, bgr, cv::COLOR_RGB2BGR);
      LF_RETURN_IF_ERROR(write_png(dir + "/img_" + std::to_string(i) + ".png", bgr));
    }
    vs.push_back({name, "img/s", [scratch, dir, n, threads] {
                    auto t0 = Clock::now();
                    auto r = measure_image_folder(dir, dir + "/concepts.jsonl", threads);
                    return r.ok() ? n / since(t0) : 0.0;
                  }});
  }
  if (!o.only.empty()) {
    std::regex re(o.only, std::regex::icase);
    std::vector<Variant> kept;
    for (size_t i = 0; i < vs.size(); ++i)
      if (i == 0 || std::regex_search(vs[i].name, re)) kept.push_back(std::move(vs[i]));
    vs = std::move(kept);
  }
  // Warm-up once, then interleaved repetitions.
  Progress prog("bench", static_cast<int64_t>(vs.size()) * (o.reps + 1), "run");
  int64_t done = 0;
  for (auto& v : vs) {
    v.run();
    prog.update(++done, v.name + " (warm-up)");
  }
  for (int r = 0; r < o.reps; ++r)
    for (auto& v : vs) {
      v.values.push_back(v.run());
      prog.update(++done, v.name);
    }
  prog.finish();
  // Fine-tune memory: each mode in its own process (peak RSS cannot be reset within one).
  nlohmann::json ft_memory = nlohmann::json::object();
  if (o.only.empty() ||
      std::regex_search(std::string("fine-tune"), std::regex(o.only, std::regex::icase))) {
    for (const char* mode : {"full", "lora"}) {
      std::string out =
          run_command_capture("\"" + self_executable_path() + "\" bench --child-memory " + mode +
                              " --preset " + o.preset + " --batch " + std::to_string(B) +
                              " --text-tokens " + std::to_string(T) + " 2>/dev/null");
      try {
        ft_memory[mode] = nlohmann::json::parse(out.substr(out.rfind('{')));
      } catch (...) {
        log_warn("fine-tune memory child failed: " + out.substr(0, 200));
      }
    }
  }
  // Data-parallel rows: each layout in its own processes, after the interleaved rows.
  nlohmann::json data_parallel;
  if (o.only.empty() ||
      std::regex_search(std::string("data-parallel"), std::regex(o.only, std::regex::icase))) {
    LF_ASSIGN_OR_RETURN(data_parallel, bench_data_parallel(o));
  }
  // Report.
  const double sgemm = median(vs[0].values);
  nlohmann::json res = {{"date", ""},
                        {"threads", threads},
                        {"blas", loaded_blas()},
                        {"allocator", loaded_allocator()},
                        {"torch", torch_version()},
                        {"reps", o.reps},
                        {"preset", o.preset},
                        {"space", o.space},
                        {"batch", B},
                        {"text_tokens", T},
                        {"generator_parameters", model->num_parameters()},
                        {"generator_train_gflop_per_image", train_flops_per_img / 1e9},
                        {"results", nlohmann::json::array()}};
  std::time_t now = std::time(nullptr);
  char date[32];
  std::strftime(date, sizeof date, "%Y-%m-%d_%H%M", std::gmtime(&now));
  res["date"] = date;
  std::printf("\n%-48s %12s %10s %12s %10s\n", "benchmark", "median", "unit", "GFLOP/s",
              "of sgemm");
  std::map<std::string, double> med;
  for (auto& v : vs) {
    double m = median(v.values);
    med[v.name] = m;
    double gf = v.flops_per_unit > 0 ? m * v.flops_per_unit / 1e9
                                     : (v.unit == "GFLOP/s" ? m : std::nan(""));
    nlohmann::json j = {{"name", v.name}, {"unit", v.unit}, {"median", m}, {"values", v.values}};
    if (!std::isnan(gf)) {
      j["gflops"] = gf;
      j["fraction_of_sgemm"] = gf / sgemm;
    }
    res["results"].push_back(j);
    if (std::isnan(gf))
      std::printf("%-48s %12.2f %10s %12s %10s\n", v.name.c_str(), m, v.unit.c_str(), "-", "-");
    else
      std::printf("%-48s %12.2f %10s %12.1f %9.0f%%\n", v.name.c_str(), m, v.unit.c_str(), gf,
                  100 * gf / sgemm);
  }
  nlohmann::json ratios = nlohmann::json::object();
  auto ratio = [&](const std::string& key, const std::string& a, const std::string& b) {
    if (med.count(a) && med.count(b) && med[b] > 0) ratios[key] = med[a] / med[b];
  };
  ratio("generator_train_cpp_over_python", "generator train step (C++)",
        "generator train step (python3-torch)");
  ratio("generator_train_cpp_over_python_same_malloc", "generator train step (C++)",
        "generator train step (python3-torch, same malloc settings)");
  ratio("vit_train_cpp_over_python", "vit classifier train (C++)",
        "vit classifier train (python3-torch)");
  ratio("generator_train_bf16_over_fp32", "generator train step, bf16 (C++)",
        "generator train step (C++)");
  ratio("generator_train_bf16_shards_over_one_shard", "generator train step, bf16 (C++)",
        "generator train step, bf16, one shard (C++)");
  ratio("generator_train_bf16_over_python_fp32", "generator train step, bf16 (C++)",
        "generator train step (python3-torch)");
  ratio("sampling_cfg_bf16_over_fp32",
        "sampling, " + std::to_string(o.sample_steps) + " Euler steps, CFG " +
            std::to_string(o.cfg).substr(0, 3) + ", bf16",
        "sampling, " + std::to_string(o.sample_steps) + " Euler steps, CFG " +
            std::to_string(o.cfg).substr(0, 3));
  ratio("sampling_cfg_bf16_shards_over_one_shard",
        "sampling, " + std::to_string(o.sample_steps) + " Euler steps, CFG " +
            std::to_string(o.cfg).substr(0, 3) + ", bf16",
        "sampling, " + std::to_string(o.sample_steps) + " Euler steps, CFG " +
            std::to_string(o.cfg).substr(0, 3) + ", bf16, one shard");
  ratio("cnn_train_bf16_over_fp32", "cnn classifier train, bf16 (C++)",
        "cnn classifier train (C++)");
  ratio("vit_train_bf16_over_fp32", "vit classifier train, bf16 (C++)",
        "vit classifier train (C++)");
  if (med.count("bf16 GEMM 2048") && med.count("generator train step, bf16 (C++)") &&
      med["bf16 GEMM 2048"] > 0)
    ratios["generator_train_bf16_fraction_of_bf16_gemm"] =
        med["generator train step, bf16 (C++)"] * train_flops_per_img / 1e9 / med["bf16 GEMM 2048"];
  if (med.count("fine-tune step, lora (rank 16, attn+mlp)") &&
      med.count("generator train step (C++)"))
    ratios["finetune_lora_over_full_steps_per_second"] =
        med["fine-tune step, lora (rank 16, attn+mlp)"] / (med["generator train step (C++)"] / B);
  res["ratios"] = ratios;
  res["finetune_memory"] = ft_memory;
  if (!data_parallel.is_null()) res["data_parallel"] = data_parallel;
  for (auto& [mode, m] : ft_memory.items())
    std::printf("%-48s %12lld params %8lld MB training memory (peak RSS %lld MB)\n",
                ("fine-tune " + mode).c_str(), (long long)m.value("trainable_parameters", 0LL),
                (long long)m.value("training_mb", 0LL), (long long)m.value("peak_rss_mb", 0LL));
  for (auto& [k, v] : ratios.items()) std::printf("%-48s %12.2f x\n", k.c_str(), v.get<double>());
  LF_RETURN_IF_ERROR(make_dirs(o.out));
  std::string path = o.out + "/" + date + ".json";
  LF_RETURN_IF_ERROR(write_file_atomic(path, res.dump(2) + "\n"));
  std::printf("-> %s\n", path.c_str());
  return res;
}

}  // namespace lf
