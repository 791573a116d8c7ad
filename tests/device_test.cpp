// Devices (issue 16): the trainers and the samplers keep every tensor on the device of the model.
// This libtorch build is CPU-only, so CUDA cannot run here. Two kinds of checks:
//  - The step code that is not an nn::Module (the flow/diffusion batch and loss, every sampler,
//    attention and the fused kernels' fallbacks, gradient clipping, EMA, AdamW, the classifier
//    and generator losses' batch moves) runs on the "meta" device: tensors with shapes and dtypes
//    but no data. Mixing a meta tensor with a CPU tensor throws "Expected all tensors to be on
//    the same device", so a tensor made on the CPU inside a step fails these tests, as it would
//    fail on CUDA. (libtorch 1.13's C++ Module::to() cannot move parameters to meta: set_data
//    refuses the CPU -> meta change, so the networks themselves cannot be put there.)
//  - The full steps with the networks run on the configured device (CPU here) and every
//    parameter, gradient, optimizer moment, EMA tensor and output is checked to be on it.
#include <gtest/gtest.h>

#include "adapters/lora.h"
#include "classify/classifier.h"
#include "flow/flow.h"
#include "lesionflow/captions.h"
#include "lesionflow/data.h"
#include "lesionflow/runtime.h"
#include "lesionflow/tokenizer.h"
#include "models/autoencoder.h"
#include "models/mmdit.h"
#include "train/common.h"
#include "train/generator.h"
#include "train_util.h"

namespace lf {
namespace {

using torch::Tensor;
const torch::Device kMeta(torch::kMeta);
// The device the network steps are configured for: the only one this build has.
const torch::Device kDev(torch::kCPU);

MMDiTConfig device_config(int channels, Prediction pred, int vocab) {
  MMDiTConfig c = test::latent_micro(vocab);
  c.channels = channels;
  c.prediction = pred;
  return c;
}

std::shared_ptr<Tokenizer> phantom_tokenizer() {
  static std::shared_ptr<Tokenizer> tok = [] {
    auto ds = load_dataset("phantom:200", {}, 3);
    std::vector<std::string> caps;
    for (auto& r : ds->records) caps.push_back(compose_caption(facts_from_record(r), 0));
    return std::make_shared<Tokenizer>(*Tokenizer::train(caps, {64, "bpe", 0}));
  }();
  return tok;
}

// A batch as the training loop builds it (CPU): the third caption is padded, so the attention
// mask is not all true.
GenBatch cpu_batch(const MMDiTConfig& c, const Tokenizer& tok, const FlowConfig& flow) {
  auto gen = at::detail::createCPUGenerator(7);
  GenBatch b;
  b.x0 = torch::randn({3, c.channels, c.image_size, c.image_size}, gen, torch::kFloat32);
  b.noise = torch::randn(b.x0.sizes(), gen, torch::kFloat32);
  b.t = sample_timesteps(3, flow, gen);
  std::tie(b.ids, b.mask) = tokenize_batch(
      tok, {"melanoma on the back, blue-gray", "nevus, light brown and dark brown", "nevus"},
      c.max_text_len);
  return b;
}

void expect_on(const torch::Tensor& t, const torch::Device& d, const std::string& what) {
  ASSERT_TRUE(t.defined()) << what;
  EXPECT_EQ(t.device(), d) << what;
}

// Forward, backward, clip, AdamW and EMA: every parameter, gradient, optimizer moment and EMA
// tensor ends on the device.
void train_step_on(MMDiT& model, std::vector<torch::Tensor> params, const GenBatch& b,
                   const FlowConfig& flow, const torch::Device& d) {
  torch::optim::AdamW opt(params, torch::optim::AdamWOptions(1e-3));
  std::vector<torch::Tensor> ema;
  for (auto& p : params) ema.push_back(p.detach().clone());
  auto per = generator_loss(model, b, flow);
  expect_on(per, d, "per-sample loss");
  EXPECT_EQ(per.sizes(), torch::IntArrayRef({3}));
  opt.zero_grad();
  per.mean().backward();
  expect_on(clip_grad_norm(params, 1.0), d, "gradient norm");
  opt.step();
  ema_update(ema, params, 0.99);
  for (size_t i = 0; i < params.size(); ++i) {
    expect_on(params[i], d, "parameter " + std::to_string(i));
    expect_on(params[i].grad(), d, "gradient " + std::to_string(i));
    expect_on(ema[i], d, "EMA " + std::to_string(i));
  }
  int moments = 0;
  for (auto& [key, state] : opt.state()) {
    auto& s = static_cast<torch::optim::AdamWParamState&>(*state);
    expect_on(s.exp_avg(), d, "exp_avg");
    expect_on(s.exp_avg_sq(), d, "exp_avg_sq");
    ++moments;
  }
  EXPECT_EQ(moments, static_cast<int>(params.size()));
}

TEST(Device, MixingTheMetaDeviceWithTheCpuIsAnError) {
  // The premise of the meta tests: a CPU tensor created inside a step on the meta device throws,
  // and so does reading a value on the host.
  auto x = torch::randn({2, 3}, torch::TensorOptions().device(kMeta));
  EXPECT_THROW((void)(x + torch::ones({2, 3})), c10::Error);
  EXPECT_THROW((void)x.sum().item<double>(), c10::Error);
  EXPECT_EQ((x + torch::ones({2, 3}, x.options())).device(), kMeta);
}

TEST(Device, FlowBatchesLossesAndEverySamplerStayOnTheDevice) {
  auto on = torch::TensorOptions().device(kMeta);
  auto gen = at::detail::createCPUGenerator(3);
  auto x0 = torch::randn({3, 4, 8, 8}, on), noise = torch::randn({3, 4, 8, 8}, on);
  for (auto pred : {Prediction::kVelocity, Prediction::kX}) {
    FlowConfig flow;
    flow.prediction = pred;
    auto t = sample_timesteps(3, flow, gen).to(kMeta);  // drawn on the CPU (seed-exact), moved
    auto fb = make_train_batch(x0, noise, t, flow);
    expect_on(fb.x_t, kMeta, "x_t");
    expect_on(fb.target, kMeta, "target");
    auto out = torch::randn_like(x0).requires_grad_(true);
    auto loss = flow_loss_per_sample(out, fb, flow);
    expect_on(loss, kMeta, "per-sample loss");
    loss.mean().backward();
    expect_on(out.grad(), kMeta, "gradient of the network output");
    NetFn net = [](const Tensor& x, const Tensor& tt) { return x * 0.5 + tt.view({-1, 1, 1, 1}); };
    expect_on(net_velocity(net, x0, t, flow), kMeta, "velocity of a network");
  }
  // Every sampler, with a velocity field that uses the time tensor the sampler made.
  VelocityFn v = [](const Tensor& x, const Tensor& t) { return x - t.view({-1, 1, 1, 1}); };
  for (auto method : {SamplerMethod::kEuler, SamplerMethod::kHeun, SamplerMethod::kAb2,
                      SamplerMethod::kDpm2m, SamplerMethod::kDdim}) {
    SamplerConfig sc;
    sc.method = method;
    sc.steps = 4;
    sc.eta = 1.0;
    NoiseFn fresh = [&]() { return torch::randn({3, 4, 8, 8}, gen).to(kMeta); };
    expect_on(sample_flow(v, noise, sc, fresh), kMeta, "sample");
  }
}

TEST(Device, AttentionAndTheFusedKernelsFallBackOffTheCpu) {
  auto on = torch::TensorOptions().device(kMeta);
  auto q = torch::randn({2, 2, 5, 8}, on).requires_grad_(true);
  auto mask = torch::ones({2, 5}, on.dtype(torch::kBool));
  auto bias = attention_bias(mask);  // built even when nothing is masked: no host read
  expect_on(bias, kMeta, "attention bias");
  auto o = attention(q, q, q, bias);
  expect_on(o, kMeta, "attention");
  auto w = torch::ones({8}, on);
  auto cos = torch::ones({5, 4}, on), sin = torch::zeros({5, 4}, on);
  auto r = qk_norm_rope(q.narrow(2, 0, 3), w, q.narrow(2, 3, 2), w, cos, sin);
  expect_on(r, kMeta, "qk norm + rope");
  auto g = gelu_tanh(o);
  (g.sum() + r.sum()).backward();
  expect_on(q.grad(), kMeta, "gradient");
}

TEST(Device, ClipEmaAndAdamWStayOnTheDevice) {
  auto on = torch::TensorOptions().device(kMeta);
  std::vector<torch::Tensor> params = {torch::randn({4, 3}, on).requires_grad_(true),
                                       torch::randn({5}, on).requires_grad_(true)};
  std::vector<torch::Tensor> ema;
  for (auto& p : params) ema.push_back(p.detach().clone());
  torch::optim::AdamW opt(params, torch::optim::AdamWOptions(1e-3));
  (params[0].sum() + params[1].pow(2).sum()).backward();
  // The fused step falls back to clip + AdamW + EMA off the CPU.
  expect_on(clip_adamw_ema_step(opt, params, 1.0, &ema, 0.99), kMeta, "gradient norm");
  for (size_t i = 0; i < params.size(); ++i) {
    expect_on(params[i], kMeta, "parameter");
    expect_on(ema[i], kMeta, "EMA");
  }
  for (auto& [key, state] : opt.state()) {
    auto& st = static_cast<torch::optim::AdamWParamState&>(*state);
    expect_on(st.exp_avg(), kMeta, "exp_avg");
    expect_on(st.exp_avg_sq(), kMeta, "exp_avg_sq");
  }
}

TEST(Device, GeneratorTrainingStepKeepsEveryTensorOnTheDevice) {
  auto tok = phantom_tokenizer();
  struct Case {
    int channels;
    Prediction pred;
    Objective objective;
    Precision precision;
  };
  // Pixels and latents, velocity and x prediction, and the bf16 GEMM path of the MMDiT.
  for (auto cs : {Case{3, Prediction::kVelocity, Objective::kFlow, Precision::kFP32},
                  Case{4, Prediction::kX, Objective::kFlow, Precision::kFP32},
                  Case{4, Prediction::kVelocity, Objective::kFlow, Precision::kBF16}}) {
    SCOPED_TRACE(std::to_string(cs.channels) + " channels, precision " +
                 precision_name(cs.precision));
    auto c = device_config(cs.channels, cs.pred, tok->vocab_size());
    FlowConfig flow;
    flow.prediction = cs.pred;
    flow.objective = cs.objective;
    set_compute_precision(cs.precision);
    torch::manual_seed(0);
    MMDiT model(c);
    model->to(kDev);
    EXPECT_EQ(module_device(*model), kDev);
    train_step_on(model, model->parameters(), cpu_batch(c, *tok, flow), flow, kDev);
    set_compute_precision(Precision::kFP32);
  }
}

TEST(Device, LoraFineTuneStepCreatesItsAdaptersOnTheDevice) {
  auto tok = phantom_tokenizer();
  auto c = device_config(4, Prediction::kVelocity, tok->vocab_size());
  torch::manual_seed(0);
  MMDiT model(c);
  model->to(kDev);  // as finetune does, before the adapters (created beside the weights)
  auto adapter = LoraAdapter::create(model, LoraSpec{});
  ASSERT_TRUE(adapter.ok()) << adapter.status().message();
  for (auto& p : (*adapter)->parameters()) expect_on(p, kDev, "adapter tensor");
  LoraRuntime rt(model);
  ASSERT_TRUE(rt.add(*adapter, 1.0).ok());
  rt.freeze_base();
  rt.set_rank_dropout(0.25, 3);  // the dropout mask is drawn on the CPU and moved
  rt.apply(0);
  FlowConfig flow;
  train_step_on(model, (*adapter)->parameters(), cpu_batch(c, *tok, flow), flow, kDev);
}

TEST(Device, SamplingAndDecodingStayOnTheDevice) {
  auto tok = phantom_tokenizer();
  auto c = device_config(4, Prediction::kVelocity, tok->vocab_size());
  torch::manual_seed(0);
  MMDiT model(c);
  model->to(kDev);
  AEConfig ac;
  ac.image_size = 32;
  ac.latent_channels = 4;
  ac.widths = {8, 16, 16};  // f = 4: 32 px images <-> 8x8 latents
  Autoencoder ae(ac);
  ae->to(kDev);
  for (auto method :
       {SamplerMethod::kEuler, SamplerMethod::kHeun, SamplerMethod::kDpm2m, SamplerMethod::kDdim}) {
    GenerateConfig gc;
    gc.sampler.method = method;
    gc.sampler.steps = 3;
    gc.sampler.eta = 1.0;  // DDIM draws fresh noise per step (on the CPU, per image, then moved)
    gc.cfg_scale = 2.0;
    auto x = generate(model, *tok, FlowConfig{}, {"melanoma, blue-gray", "nevus"}, {1, 2}, gc);
    expect_on(x, kDev, "latent sample");
    EXPECT_EQ(x.sizes(), torch::IntArrayRef({2, 4, 8, 8}));
    auto img = ae->decode(x);
    expect_on(img, kDev, "decoded image");
    EXPECT_EQ(img.sizes(), torch::IntArrayRef({2, 3, 32, 32}));
  }
}

TEST(Device, ClassifierTrainingStepKeepsEveryTensorOnTheDevice) {
  for (auto arch : {ClassifierArch::kCnn, ClassifierArch::kVit}) {
    SCOPED_TRACE(arch_name(arch));
    ClassifierConfig cc;
    cc.arch = arch;
    cc.image_size = 16;
    cc.width = 8;
    cc.vit_dim = 32;
    cc.vit_depth = 1;
    cc.vit_heads = 2;
    cc.patch = 4;
    torch::manual_seed(0);
    Classifier model(cc);
    model->to(kDev);
    model->train();
    torch::optim::AdamW opt(model->parameters(), torch::optim::AdamWOptions(1e-3));
    auto x = torch::rand({4, 3, 16, 16}) * 2 - 1;  // the batch as the loop makes it (CPU)
    auto loss = classifier_loss(model, x, torch::tensor({0, 1, 1, 0}, torch::kInt64),
                                torch::tensor({1.0f, 2.0f, 2.0f, 1.0f}));
    expect_on(loss, kDev, "loss");
    opt.zero_grad();
    loss.backward();
    expect_on(clip_grad_norm(model->parameters(), 5.0), kDev, "gradient norm");
    opt.step();
    for (auto& p : model->parameters()) {
      expect_on(p, kDev, "parameter");
      expect_on(p.grad(), kDev, "gradient");
    }
  }
}

TEST(Device, ClipGradNormMatchesLibtorchsClipGradNorm) {
  // The device-neutral clip replaced torch::nn::utils::clip_grad_norm_ in every trainer: same
  // norm, same clipped gradients (so runs and resumes are unchanged), below and above the bound.
  for (double max_norm : {0.05, 1e3}) {
    torch::manual_seed(1);
    std::vector<torch::Tensor> a, b;
    for (auto n : {5, 7, 3}) {
      auto g = torch::randn({n});
      a.push_back(torch::zeros({n}, torch::requires_grad()));
      b.push_back(torch::zeros({n}, torch::requires_grad()));
      a.back().mutable_grad() = g.clone();
      b.back().mutable_grad() = g.clone();
    }
    double ref = torch::nn::utils::clip_grad_norm_(a, max_norm);
    double got = clip_grad_norm(b, max_norm).item<double>();
    EXPECT_DOUBLE_EQ(got, ref);
    for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i].grad(), b[i].grad()));
  }
}

// Two copies of the same parameters (one of 150K elements: several chunks of the fused loop; one
// without a gradient), each step given the same random gradients.
struct OptCase {
  std::vector<torch::Tensor> params, ema;
  std::unique_ptr<torch::optim::AdamW> opt;
  explicit OptCase(uint64_t seed) {
    torch::manual_seed(seed);
    for (auto shape : std::vector<std::vector<int64_t>>{{300, 500}, {7}, {3, 5}, {11}})
      params.push_back(torch::randn(shape).requires_grad_(true));
    for (auto& p : params) ema.push_back(p.detach().clone() * 0.5);
    opt = std::make_unique<torch::optim::AdamW>(
        params, torch::optim::AdamWOptions(1e-2).weight_decay(0.05).betas({0.9, 0.99}));
  }
  void set_grads(int step) {
    torch::manual_seed(100 + step);
    for (size_t i = 0; i < params.size(); ++i) {
      if (i == 3) continue;  // never gets a gradient: skipped by the clip and AdamW
      params[i].mutable_grad() = torch::randn(params[i].sizes()) * (step % 2 ? 10.0 : 0.01);
    }
  }
};

// max |a - b| over max |b|: element-wise relative differences blow up where an update nearly
// cancels a weight (a one-ulp difference of the terms over a result near zero).
double max_rel_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return ((a - b).abs().max() / b.abs().max()).item<double>();
}

TEST(Optimizer, FusedClipAdamWEmaMatchesLibtorch) {
  // clip_adamw_ema_step against clip_grad_norm + torch::optim::AdamW::step + ema_update: the same
  // norms, weights, moments and EMA, with the clip active on odd steps (gradients x10) and idle on
  // even ones; on steps 4 and 5 libtorch's own step runs on the fused optimizer's state, which only
  // matches if the fused path kept that state under libtorch's keys and step counts.
  OptCase ref(1), fused(1);
  for (int step = 0; step < 6; ++step) {
    ref.set_grads(step);
    fused.set_grads(step);
    double n_ref = clip_grad_norm(ref.params, 1.0).item<double>();
    ref.opt->step();
    ema_update(ref.ema, ref.params, 0.9);
    double n_fused;
    if (step < 4) {
      n_fused = clip_adamw_ema_step(*fused.opt, fused.params, 1.0, &fused.ema, 0.9).item<double>();
    } else {
      n_fused = clip_grad_norm(fused.params, 1.0).item<double>();
      fused.opt->step();
      ema_update(fused.ema, fused.params, 0.9);
    }
    EXPECT_NEAR(n_fused, n_ref, 1e-5 * n_ref) << "step " << step;
    for (size_t i = 0; i < ref.params.size(); ++i) {
      SCOPED_TRACE("step " + std::to_string(step) + ", parameter " + std::to_string(i));
      EXPECT_LT(max_rel_diff(fused.params[i], ref.params[i]), 1e-6);
      EXPECT_LT(max_rel_diff(fused.ema[i], ref.ema[i]), 1e-6);
    }
    // A fused step must change something: the weights moved from the start.
    if (step == 0) {
      EXPECT_GT((fused.params[0] - OptCase(1).params[0]).abs().max().item<double>(), 1e-3);
    }
  }
  EXPECT_EQ(fused.opt->state().size(), 3u);  // no state for the parameter without a gradient
  for (const auto& p : ref.params) {
    if (!p.grad().defined()) continue;
    const auto key = c10::guts::to_string(p.unsafeGetTensorImpl());
    auto& r = static_cast<torch::optim::AdamWParamState&>(*ref.opt->state().at(key));
    const size_t i = &p - ref.params.data();
    auto& f = static_cast<torch::optim::AdamWParamState&>(
        *fused.opt->state().at(c10::guts::to_string(fused.params[i].unsafeGetTensorImpl())));
    EXPECT_EQ(f.step(), r.step());
    EXPECT_LT(max_rel_diff(f.exp_avg(), r.exp_avg()), 1e-5);
    EXPECT_LT(max_rel_diff(f.exp_avg_sq(), r.exp_avg_sq()), 1e-5);
  }
}

TEST(Optimizer, FusedStepStateSavesAndResumesInLibtorch) {
  // The optimizer state of fused steps, saved and loaded into a fresh libtorch AdamW (a resume),
  // continues exactly as the uninterrupted fused run does.
  OptCase run(2), resumed(2);
  for (int step = 0; step < 3; ++step) {
    run.set_grads(step);
    clip_adamw_ema_step(*run.opt, run.params, 1.0);
  }
  const std::string path = ::testing::TempDir() + "/fused_state.bin";
  ASSERT_TRUE(save_state(path, 3, *run.opt).ok());
  {
    torch::NoGradGuard ng;
    for (size_t i = 0; i < run.params.size(); ++i) resumed.params[i].copy_(run.params[i]);
  }
  auto st = load_state(path, *resumed.opt);
  ASSERT_TRUE(st.ok()) << st.status().message();
  EXPECT_EQ(*st, 3);
  for (auto* c : {&run, &resumed}) {
    c->set_grads(3);
    clip_adamw_ema_step(*c->opt, c->params, 1.0);
  }
  for (size_t i = 0; i < run.params.size(); ++i)
    EXPECT_TRUE(torch::equal(resumed.params[i], run.params[i])) << "parameter " << i;
}

TEST(Optimizer, FusedStepPropagatesNanFromAGradient) {
  // A NaN in one gradient makes the norm NaN, and the clip spreads it to every weight that has a
  // gradient, exactly as clip_grad_norm + libtorch's AdamW do.
  OptCase ref(3), c(3);
  for (auto* o : {&ref, &c}) {
    o->set_grads(0);
    o->params[1].mutable_grad()[2] = std::nan("");
  }
  EXPECT_TRUE(std::isnan(clip_grad_norm(ref.params, 1.0).item<double>()));
  ref.opt->step();
  auto n = clip_adamw_ema_step(*c.opt, c.params, 1.0, &c.ema, 0.9);
  EXPECT_TRUE(std::isnan(n.item<double>()));
  for (size_t i = 0; i < c.params.size(); ++i)
    EXPECT_TRUE(torch::equal(torch::isnan(c.params[i]), torch::isnan(ref.params[i])))
        << "parameter " << i;
  EXPECT_TRUE(torch::isnan(c.params[0]).all().item<bool>());
}

}  // namespace
}  // namespace lf
