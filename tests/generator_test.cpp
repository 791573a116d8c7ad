#include "train/generator.h"

#include <unistd.h>

#include <limits>
#include <sstream>

#include "flow/flow.h"
#include "lesionflow/captions.h"
#include "lesionflow/io.h"
#include "lesionflow/tokenizer.h"
#include "models/checkpoint.h"
#include "models/mmdit.h"
#include "models/mmdit_blocks.h"
#include "test_util.h"
#include "train/common.h"
#include "train_util.h"

namespace lf {
using torch::Tensor;

namespace {
// test::latent_micro on 16x16 pixels with 4x4 patches, 16 text tokens, x-prediction.
MMDiTConfig micro() {
  MMDiTConfig c = test::latent_micro(64);
  c.image_size = 16;
  c.channels = 3;
  c.patch = 4;
  c.max_text_len = 16;
  c.prediction = Prediction::kX;  // the tiny preset's, as before
  return c;
}
// A model of config c with every weight drawn N(0, sd) after seeding: non-trivial outputs
// (the zero-initialised heads of a fresh model would hide differences).
MMDiT random_model(const MMDiTConfig& c, uint64_t seed, double sd) {
  torch::manual_seed(seed);
  MMDiT m(c);
  torch::NoGradGuard ng;
  for (auto& p : m->parameters()) p.normal_(0, sd);
  return m;
}
std::vector<std::string> phantom_captions(int n) {
  auto ds = load_dataset("phantom:" + std::to_string(n), {}, 3);
  std::vector<std::string> out;
  for (auto& r : ds->records) out.push_back(compose_caption(facts_from_record(r), 0));
  return out;
}
// The sampling tests' setting: 20 phantom captions, a tokenizer trained on them, and the micro
// config sized for it.
struct SamplingSetup {
  std::vector<std::string> caps;
  std::shared_ptr<Tokenizer> tok;
  MMDiTConfig c;
};
SamplingSetup sampling_setup() {
  SamplingSetup s;
  s.caps = phantom_captions(20);
  auto tok = Tokenizer::train(s.caps, {64, "bpe", 0});
  if (!tok.ok()) throw std::runtime_error("tokenizer: " + tok.status().message());
  s.tok = std::make_shared<Tokenizer>(std::move(*tok));
  s.c = micro();
  s.c.vocab_size = s.tok->vocab_size();
  return s;
}
}  // namespace

TEST(Tokenizer, TrainEncodeDecodeAndUnknownWords) {
  auto caps = phantom_captions(300);
  auto tok = Tokenizer::train(caps, {256, "bpe", 0});
  ASSERT_TRUE(tok.ok()) << tok.status().message();
  auto e = tok->encode(caps[0], 64);
  EXPECT_EQ(e.ids[0], tok->bos_id());
  EXPECT_FALSE(e.truncated);
  EXPECT_EQ(tok->decode(e.ids), caps[0]);
  int real = 0;
  for (auto m : e.mask) real += m;
  EXPECT_EQ(real, e.length);
  EXPECT_EQ(e.ids[e.length], tok->pad_id());
  // Unknown words degrade to pieces/unk instead of failing.
  auto u = tok->encode("zzqx melanoma", 64);
  EXPECT_GT(u.length, 1);
  auto t = tok->encode(caps[0], 4);
  EXPECT_TRUE(t.truncated);
  EXPECT_EQ(t.length, 4);
  // Same corpus -> same vocabulary and encodings (the model bytes also record temp paths).
  auto tok2 = Tokenizer::train(caps, {256, "bpe", 0});
  EXPECT_EQ(tok->vocab_size(), tok2->vocab_size());
  for (const auto& c : caps) ASSERT_EQ(tok->encode_raw(c), tok2->encode_raw(c));
}

TEST(MMDiT, ShapesAndParameterCount) {
  torch::manual_seed(0);
  auto c = micro();
  MMDiT m(c);
  auto x = torch::randn({3, 3, 16, 16});
  auto ids = torch::randint(0, 64, {3, 16}, torch::kInt64);
  auto mask = torch::ones({3, 16}, torch::kBool);
  auto y = m->forward(x, torch::rand({3}), ids, mask);
  EXPECT_EQ(y.sizes(), x.sizes());
  EXPECT_GT(m->num_parameters(), 10000);
  // Trimming padding columns does not change the output.
  mask.narrow(1, 5, 11).fill_(false);
  auto y1 = m->forward(x, torch::full({3}, 0.5), ids, mask);
  auto y2 = m->forward(x, torch::full({3}, 0.5), ids.narrow(1, 0, 5), mask.narrow(1, 0, 5));
  EXPECT_LT((y1 - y2).abs().max().item<float>(), 1e-5);
}

TEST(MMDiT, CachedTextAndOneTokenUnconditionalEqualThePaddedBatch) {
  // The sampler encodes the text once and runs the empty caption as a 1-token sequence; both
  // must give what the training-time forward gives on the padded batch.
  MMDiT m = random_model(micro(), 4, 0.2);
  torch::NoGradGuard ng;
  auto x = torch::randn({3, 3, 16, 16}), t = torch::rand({3});
  auto ids = torch::randint(3, 64, {3, 9}, torch::kInt64);
  auto mask = torch::ones({3, 9}, torch::kBool);
  mask[2].narrow(0, 6, 3).fill_(false);
  auto full = m->forward(x, t, ids, mask);
  EXPECT_GT(full.abs().max().item<float>(), 0.1f);
  EXPECT_TRUE(torch::equal(m->forward(x, t, m->encode_text(ids, mask)), full));
  auto empty_ids = torch::zeros({3, 9}, torch::kInt64),
       empty_mask = torch::zeros({3, 9}, torch::kBool);
  empty_ids.select(1, 0).fill_(1);
  empty_mask.select(1, 0).fill_(true);
  auto padded = m->forward(x, t, empty_ids, empty_mask);
  auto one = m->forward(x, t,
                        m->encode_text(empty_ids.narrow(0, 0, 1).narrow(1, 0, 1),
                                       empty_mask.narrow(0, 0, 1).narrow(1, 0, 1))
                            .expand(3));
  EXPECT_LT((one - padded).abs().max().item<float>(), 1e-5);
  EXPECT_FALSE(torch::allclose(one, full, 1e-3, 1e-3));  // the condition matters
}

TEST(MMDiT, ParallelAttentionMatchesPlainOpsForwardAndBackward) {
  torch::manual_seed(6);
  const int threads = torch::get_num_threads();
  torch::set_num_threads(2);  // the batch x heads items are split over threads
  // float32 takes the direct-sgemm path, float64 the batched-GEMM fallback.
  for (auto dtype : {torch::kFloat32, torch::kFloat64})
    for (bool masked : {false, true}) {
      auto opt = torch::dtype(dtype).requires_grad(true);
      auto q = torch::randn({3, 2, 11, 8}, opt), k = torch::randn({3, 2, 11, 8}, opt);
      auto v = torch::randn({3, 2, 11, 8}, opt);
      auto mask = torch::ones({3, 11}, torch::kBool);
      if (masked) mask[1].narrow(0, 4, 7).fill_(false);
      auto go = torch::randn({3, 2, 11, 8}, torch::dtype(dtype));
      auto out = attention(q, k, v, attention_bias(mask));
      auto grads = torch::autograd::grad({out}, {q, k, v}, {go});
      // Reference: the textbook formula with autograd.
      auto s = torch::matmul(q, k.transpose(-2, -1)) / std::sqrt(8.0);
      s = s.masked_fill(mask.logical_not().view({3, 1, 1, 11}), -1e9);
      auto ref = torch::matmul(torch::softmax(s, -1), v);
      auto rgrads = torch::autograd::grad({ref}, {q, k, v}, {go});
      EXPECT_LT((out - ref).abs().max().item<float>(), 1e-5) << masked;
      for (int i = 0; i < 3; ++i)
        EXPECT_LT((grads[i] - rgrads[i]).abs().max().item<float>(), 1e-5) << masked << i;
      EXPECT_GT(rgrads[1].abs().max().item<float>(), 1e-3);
    }
  torch::set_num_threads(threads);
}

// Under Precision::kBF16 the attention runs bf16 GEMMs around a fused softmax (bf16 scores in,
// bf16 probabilities out, float32 arithmetic): forward and backward within a few bf16 roundings of
// the float64 formula on the same values, padded keys ignored exactly, a NaN kept.
TEST(MMDiT, Bf16AttentionMatchesTheFormulaWithinBf16Rounding) {
  torch::manual_seed(16);
  const int threads = torch::get_num_threads();
  torch::set_num_threads(2);
  for (int64_t S : {11, 37})  // shorter than the kernel's 16 lanes, and a remainder after two
    for (bool masked : {false, true}) {
      auto bf = [](torch::IntArrayRef sz) {
        return torch::randn(sz).to(torch::kBFloat16).requires_grad_();
      };
      auto q = bf({3, 2, S, 8}), k = bf({3, 2, S, 8}), v = bf({3, 2, S, 8});
      auto mask = torch::ones({3, S}, torch::kBool);
      if (masked) mask[1].narrow(0, 4, S - 4).fill_(false);
      auto go = torch::randn({3, 2, S, 8});
      set_compute_precision(Precision::kBF16);
      auto out = attention(q, k, v, attention_bias(mask));
      auto g = torch::autograd::grad({out}, {q, k, v}, {go.to(out.scalar_type())});
      set_compute_precision(Precision::kFP32);
      ASSERT_EQ(out.scalar_type(), torch::kBFloat16);
      auto d = [](const torch::Tensor& t) {
        return t.detach().to(torch::kFloat64).requires_grad_();
      };
      auto qd = d(q), kd = d(k), vd = d(v);
      auto s = torch::matmul(qd, kd.transpose(-2, -1)) / std::sqrt(8.0);
      s = s.masked_fill(mask.logical_not().view({3, 1, 1, S}), -1e9);
      auto ref = torch::matmul(torch::softmax(s, -1), vd);
      auto rg = torch::autograd::grad({ref}, {qd, kd, vd}, {go.to(torch::kFloat64)});
      auto err = [](const torch::Tensor& a, const torch::Tensor& b) {
        return (a.to(torch::kFloat64) - b).abs().max().item<double>() /
               (1 + b.abs().max().item<double>());
      };
      EXPECT_LT(err(out, ref), 2e-2) << S << masked;
      for (int i = 0; i < 3; ++i) {
        EXPECT_LT(err(g[i], rg[i]), 3e-2) << S << masked << i;
        EXPECT_GT(rg[i].abs().max().item<double>(), 1e-2) << i;
      }
      if (masked) {  // values and gradients at padded keys: no influence, no gradient
        set_compute_precision(Precision::kBF16);
        auto v2 = v.detach().clone();
        v2[1].narrow(1, 4, S - 4).fill_(100);
        EXPECT_TRUE(torch::equal(attention(q, k, v2, attention_bias(mask)), out));
        set_compute_precision(Precision::kFP32);
        EXPECT_EQ(g[1][1].narrow(1, 4, S - 4).abs().max().item<float>(), 0.f);
      }
    }
  // A NaN in one query gives NaN in that query's row, not elsewhere.
  auto q = torch::randn({1, 1, 5, 8}).to(torch::kBFloat16), k = q.clone(), v = q.clone();
  q[0][0][2][3] = std::nanf("");
  set_compute_precision(Precision::kBF16);
  auto o = attention(q, k, v, {});
  set_compute_precision(Precision::kFP32);
  EXPECT_TRUE(torch::isnan(o[0][0][2]).all().item<bool>());
  EXPECT_FALSE(torch::isnan(o[0][0][1]).any().item<bool>());
  torch::set_num_threads(threads);
}

// ln_modulate(): the composed ops under fp32 (bit for bit), one fused pass each way under bf16
// whose bf16 output is the fp32 result within a bf16 rounding and whose gradients (x, and shift
// and scale as chunks of one modulation vector, as the blocks take them) match the composed ops'.
TEST(MMDiT, LnModulateMatchesTheComposedOps) {
  torch::manual_seed(17);
  const int threads = torch::get_num_threads();
  torch::set_num_threads(2);
  for (int64_t D : {24, 40}) {  // a remainder after the kernel's 16 lanes, and two full lanes + 8
    auto x = (3 + 2 * torch::randn({3, 7, D})).requires_grad_();
    auto mod = (0.5 * torch::randn({3, 1, 2 * D})).requires_grad_();
    auto ch = mod.chunk(2, -1);
    auto go = torch::randn({3, 7, D});
    auto ref = mmdit_detail::modulate(mmdit_detail::ln(x), ch[0], ch[1]);
    auto rg = torch::autograd::grad({ref}, {x, mod}, {go}, /*retain_graph=*/true);
    EXPECT_TRUE(torch::equal(ln_modulate(x, ch[0], ch[1]), ref));  // fp32: unchanged
    set_compute_precision(Precision::kBF16);
    auto y = ln_modulate(x, ch[0], ch[1]);
    auto g = torch::autograd::grad({y}, {x, mod}, {go.to(torch::kBFloat16)});
    set_compute_precision(Precision::kFP32);
    ASSERT_EQ(y.scalar_type(), torch::kBFloat16);
    auto yf = y.to(torch::kFloat32);
    EXPECT_LT(((yf - ref) / (ref.abs() + 1e-2)).abs().max().item<float>(), 1.0f / 128) << D;
    // gradients: the output gradient enters as bf16 (as from the GEMM), so compare against the
    // composed ops fed the same rounded gradient
    auto rgb =
        torch::autograd::grad({ref}, {x, mod}, {go.to(torch::kBFloat16).to(torch::kFloat32)});
    for (int i = 0; i < 2; ++i) {
      const float scale = rgb[i].abs().max().item<float>();
      EXPECT_GT(scale, 1e-2) << i;
      EXPECT_LT((g[i] - rgb[i]).abs().max().item<float>(), 1e-4 * (1 + scale)) << D << i;
      EXPECT_LT((g[i] - rg[i]).abs().max().item<float>(), 2e-2 * (1 + scale)) << D << i;
    }
  }
  torch::set_num_threads(threads);
}

TEST(MMDiT, GatedResidualMatchesTheComposedOps) {
  torch::manual_seed(18);
  const int threads = torch::get_num_threads();
  torch::set_num_threads(2);
  const auto h = torch::kBFloat16;
  for (int64_t D : {24, 40}) {        // a remainder after 16 lanes, and two full lanes + 8
    for (bool two : {false, true}) {  // one GEMM output, or the single block's two
      auto x = torch::randn({3, 7, D}).requires_grad_();
      auto mod = torch::randn({3, 1, 3 * D}).requires_grad_();
      auto gate = mod.chunk(3, -1)[1];  // a strided [B,1,D] view, as the blocks pass it
      auto y1 = torch::randn({3, 7, D}).to(h).requires_grad_();
      auto y2 = two ? torch::randn({3, 7, D}).to(h).requires_grad_() : torch::Tensor();
      auto go = torch::randn({3, 7, D});
      // the composed ops: the GEMM outputs cast to float32, summed, addcmul
      auto yf = two ? y1.to(torch::kFloat32) + y2.to(torch::kFloat32) : y1.to(torch::kFloat32);
      auto ref = mmdit_detail::gated_add(x, gate, yf);
      std::vector<torch::Tensor> in{x, mod, y1};
      if (two) in.push_back(y2);
      auto rg = torch::autograd::grad({ref}, in, {go});
      set_compute_precision(Precision::kBF16);
      auto out = gated_residual(x, gate, y1, y2);
      auto g = torch::autograd::grad({out}, in, {go});
      set_compute_precision(Precision::kFP32);
      ASSERT_EQ(out.scalar_type(), torch::kFloat32);
      EXPECT_TRUE(torch::equal(out, ref)) << D << two;  // bit for bit (FMA as ATen's)
      EXPECT_TRUE(torch::equal(g[0], rg[0]));           // x: the output gradient itself
      // the gate's gradient: the same products summed in another order
      EXPECT_LT((g[1] - rg[1]).abs().max().item<float>(),
                1e-5 * (1 + rg[1].abs().max().item<float>()));
      EXPECT_GT(rg[1].abs().max().item<float>(), 1e-2);
      for (size_t i = 2; i < in.size(); ++i) {  // y: g * gate rounded once to bf16, as the cast's
        ASSERT_EQ(g[i].scalar_type(), h);
        EXPECT_TRUE(torch::equal(g[i], rg[i])) << D << two << i;
      }
      // float32 (and fp32 y): the composed ops, unchanged
      EXPECT_TRUE(torch::equal(gated_residual(x, gate, yf), ref));
    }
  }
  torch::set_num_threads(threads);
}

TEST(MMDiT, MergeHeadsSplitIsTheMergedHeadsSlicedAndBack) {
  torch::manual_seed(19);
  for (auto dt : {torch::kFloat32, torch::kBFloat16}) {
    auto o = torch::randn({3, 4, 11, 8}).to(dt).requires_grad_();
    auto [a, b] = merge_heads_split(o, 4);
    auto m = mmdit_detail::merge_heads(o);
    EXPECT_TRUE(a.is_contiguous() && b.is_contiguous());
    EXPECT_TRUE(torch::equal(a, m.narrow(1, 0, 4)));
    EXPECT_TRUE(torch::equal(b, m.narrow(1, 4, 7)));
    auto ga = torch::randn({3, 4, 32}).to(dt), gb = torch::randn({3, 7, 32}).to(dt);
    auto g = torch::autograd::grad({a, b}, {o}, {ga, gb})[0];
    auto r = torch::autograd::grad({m.narrow(1, 0, 4), m.narrow(1, 4, 7)}, {o}, {ga, gb})[0];
    EXPECT_TRUE(torch::equal(g, r));
    // one stream unused: its rows get a zero gradient
    auto [a2, b2] = merge_heads_split(o, 4);
    auto g2 =
        torch::autograd::grad({(b2.to(torch::kFloat32) * gb.to(torch::kFloat32)).sum()}, {o})[0];
    EXPECT_EQ(g2.narrow(2, 0, 4).abs().max().item<float>(), 0.f);
    EXPECT_TRUE(torch::equal(g2.narrow(2, 4, 7), r.narrow(2, 4, 7)));
  }
}

TEST(Generate, SeedsFixTheImageAndTheGuidanceIntervalSkipsGuidance) {
  auto [caps, tok, c] = sampling_setup();
  MMDiT m = random_model(c, 8, 0.2);
  FlowConfig flow;
  std::vector<std::string> prompts(caps.begin(), caps.begin() + 4);
  std::vector<uint64_t> seeds{11, 12, 13, 14};
  GenerateConfig gc;
  gc.sampler.steps = 4;
  gc.cfg_scale = 3;
  gc.batch = 4;
  auto a = generate(m, *tok, flow, prompts, seeds, gc);
  gc.batch = 3;  // other batching: image i still depends only on (prompt i, seed i)
  auto b = generate(m, *tok, flow, prompts, seeds, gc);
  EXPECT_LT((a - b).abs().max().item<float>(), 1e-4);
  gc.cfg_t_lo = 2;  // interval never reached: one conditional forward per step, as with cfg 1
  auto never = generate(m, *tok, flow, prompts, seeds, gc);
  gc.cfg_scale = 1;
  auto unguided = generate(m, *tok, flow, prompts, seeds, gc);
  EXPECT_TRUE(torch::equal(never, unguided));
  EXPECT_GT((a - unguided).abs().max().item<float>(), 1e-3);  // guidance changes the images
  // A stochastic sampler: the step noise too belongs to the image (its seed), not the batch.
  gc.sampler.method = SamplerMethod::kDdim;
  gc.sampler.eta = 1.0;
  gc.batch = 4;
  auto s4 = generate(m, *tok, flow, prompts, seeds, gc);
  gc.batch = 1;
  auto s1 = generate(m, *tok, flow, prompts, seeds, gc);
  EXPECT_LT((s4 - s1).abs().max().item<float>(), 1e-4);
  EXPECT_GT((s4 - unguided).abs().max().item<float>(), 1e-3);  // the step noise changes images
  gc.cfg_t_lo = 0;
  EXPECT_TRUE(check_generate_config(gc, "sample").ok());
  gc.sampler.method = SamplerMethod::kEuler;  // eta without ddim is refused, as is eta > 1
  EXPECT_FALSE(check_generate_config(gc, "sample").ok());
  gc.sampler.method = SamplerMethod::kDdim;
  gc.sampler.eta = 1.5;
  EXPECT_FALSE(check_generate_config(gc, "sample").ok());
}

// Sampling batch shards (GenerateConfig::batch_threads): each half of a batch is sampled on its
// own thread; the images are those of one thread up to float rounding, for every sampler path
// (guided, stochastic step noise, a starting image), an odd batch and a batch cut short.
TEST(Generate, BatchShardsOnThreadsGiveTheImagesOfOneThread) {
  auto [caps, tok, c] = sampling_setup();
  MMDiT m = random_model(c, 8, 0.2);
  FlowConfig flow;
  std::vector<std::string> prompts(caps.begin(), caps.begin() + 9);
  std::vector<uint64_t> seeds{21, 22, 23, 24, 25, 26, 27, 28, 29};
  torch::manual_seed(5);
  const Tensor init = torch::rand({9, c.channels, c.image_size, c.image_size}) * 2 - 1;
  GenerateConfig gc;
  gc.sampler.steps = 3;
  gc.cfg_scale = 2;
  gc.batch = 7;  // batches of 7 (shards of 3 and 4) and 2 (shards of 1 and 1)
  for (int variant = 0; variant < 3; ++variant) {
    if (variant == 1) {  // a stochastic sampler's step noise belongs to the image
      gc.sampler.method = SamplerMethod::kDdim;
      gc.sampler.eta = 1.0;
    }
    if (variant == 2) gc.sampler.start = 0.6;  // from a starting image
    const Tensor x = variant == 2 ? init : Tensor();
    gc.batch_threads = 1;
    auto one = generate(m, *tok, flow, prompts, seeds, gc, x);
    gc.batch_threads = 2;
    auto two = generate(m, *tok, flow, prompts, seeds, gc, x);
    auto again = generate(m, *tok, flow, prompts, seeds, gc, x);
    ASSERT_EQ(two.sizes(), one.sizes());
    EXPECT_LT((two - one).abs().max().item<float>(), 1e-4) << variant;
    EXPECT_TRUE(torch::equal(two, again)) << variant;
    // The rows stay in prompt order: a different seed's image differs.
    EXPECT_GT((two.narrow(0, 0, 1) - two.narrow(0, 1, 1)).abs().max().item<float>(), 1e-3);
  }
  gc.batch_threads = 3;
  EXPECT_FALSE(check_generate_config(gc, "sample").ok());
}

// Autoguidance: the guiding branch is the guide on the same prompt, so after one Euler step
// (linear in the velocity) the image is the guide's image plus w times the difference; with the
// model as its own guide the images are the unguided ones at any weight; with weight 0 they are
// the guide's. A guide of another tokenizer or input size is refused, naming the file.
TEST(Generate, AutoguidanceBlendsTheGuideOnTheSamePromptAndChecksTheGuide) {
  auto [caps, tok, c] = sampling_setup();
  MMDiT m = random_model(c, 8, 0.2), weak = random_model(c, 9, 0.2);
  FlowConfig flow;
  flow.prediction = Prediction::kX;
  std::vector<std::string> prompts(caps.begin(), caps.begin() + 4);
  std::vector<uint64_t> seeds{11, 12, 13, 14};
  GenerateConfig gc;
  gc.sampler.method = SamplerMethod::kEuler;
  gc.sampler.steps = 1;
  gc.cfg_scale = 1;
  gc.batch = 3;
  auto own = generate(m, *tok, flow, prompts, seeds, gc);
  auto guide_only = generate(weak, *tok, flow, prompts, seeds, gc);
  EXPECT_GT((own - guide_only).abs().max().item<float>(), 1e-2);
  gc.guide_model = weak;
  gc.cfg_scale = 2.5;
  auto blended = generate(m, *tok, flow, prompts, seeds, gc);
  EXPECT_TRUE(torch::allclose(blended, guide_only + 2.5 * (own - guide_only), 1e-4, 1e-5))
      << (blended - guide_only - 2.5 * (own - guide_only)).abs().max();
  // Classifier-free guidance at the same weight is another image: the guide replaced the empty
  // caption.
  gc.guide_model = MMDiT{nullptr};
  auto cfg = generate(m, *tok, flow, prompts, seeds, gc);
  EXPECT_GT((cfg - blended).abs().max().item<float>(), 1e-2);
  // Several DPM-Solver++ steps: the model as its own guide is no guidance; weight 0 is the guide.
  gc.sampler.method = SamplerMethod::kDpm2m;
  gc.sampler.steps = 4;
  gc.cfg_scale = 1;
  auto m4 = generate(m, *tok, flow, prompts, seeds, gc);
  auto w4 = generate(weak, *tok, flow, prompts, seeds, gc);
  gc.cfg_scale = 3;
  gc.guide_model = m;
  EXPECT_TRUE(torch::allclose(generate(m, *tok, flow, prompts, seeds, gc), m4, 1e-4, 1e-5));
  gc.cfg_scale = 0;
  gc.guide_model = weak;
  EXPECT_TRUE(torch::allclose(generate(m, *tok, flow, prompts, seeds, gc), w4, 1e-4, 1e-5));

  // load_guide: files written and read back.
  const std::string dir = test::tmp_dir("guide");
  ASSERT_TRUE(save_generator(dir + "/main.safetensors", m, *tok, 9, flow, "ema").ok());
  ASSERT_TRUE(save_generator(dir + "/weak.safetensors", weak, *tok, 3, flow, "ema").ok());
  auto other_tok = Tokenizer::train(phantom_captions(40), {96, "bpe", 0});
  ASSERT_TRUE(other_tok.ok());
  ASSERT_NE(other_tok->hash(), tok->hash());
  ASSERT_TRUE(save_generator(dir + "/tok.safetensors", weak, *other_tok, 3, flow, "ema").ok());
  auto c32 = c;
  c32.image_size = 32;
  MMDiT big = random_model(c32, 10, 0.2);
  ASSERT_TRUE(save_generator(dir + "/size.safetensors", big, *tok, 3, flow, "ema").ok());
  auto main = load_generator(dir + "/main.safetensors");
  ASSERT_TRUE(main.ok()) << main.status().message();
  GenerateConfig lc;
  EXPECT_TRUE(load_guide(lc, *main).ok());  // no guide: nothing to do
  EXPECT_TRUE(lc.guide_model.is_empty());
  for (const char* bad : {"tok", "size"}) {
    lc.guide = dir + "/" + bad + ".safetensors";
    auto st = load_guide(lc, *main);
    ASSERT_FALSE(st.ok()) << bad;
    EXPECT_NE(st.message().find(lc.guide), std::string::npos) << st.message();
    EXPECT_NE(st.message().find(std::string(bad) == "tok" ? "tokenizer" : "input"),
              std::string::npos)
        << st.message();
    EXPECT_TRUE(lc.guide_model.is_empty());
  }
  lc.guide = dir + "/weak.safetensors";
  ASSERT_TRUE(load_guide(lc, *main).ok());
  ASSERT_FALSE(lc.guide_model.is_empty());
  EXPECT_TRUE(torch::equal(lc.guide_model->parameters()[0], weak->parameters()[0]));
  EXPECT_EQ(sampling_metadata(lc).value("guide", ""), lc.guide);
}

TEST(Generate, ReturnsTheModelSpaceUnclampedAndOnlyPixelsAreClamped) {
  // A fresh network predicts zero velocity (adaLN-zero, zero output layer), so a sample is its
  // starting noise. Normalised latents have unit spread: clamping them to [-1,1] (which a
  // pixel image needs) washed out every decoded latent sample before this test.
  auto caps = phantom_captions(10);
  auto tok = Tokenizer::train(caps, {64, "bpe", 0});
  ASSERT_TRUE(tok.ok());
  auto c = micro();
  c.vocab_size = tok->vocab_size();
  MMDiT m(c);
  std::vector<uint64_t> seeds{21, 22};
  GenerateConfig gc;
  gc.sampler.steps = 3;
  auto x = generate(m, *tok, FlowConfig{}, {caps[0], caps[1]}, seeds, gc);
  std::vector<Tensor> noise;
  for (auto sd : seeds) {
    auto g = at::detail::createCPUGenerator(sd);
    noise.push_back(torch::randn({1, c.channels, c.image_size, c.image_size}, g, torch::kFloat32));
  }
  EXPECT_TRUE(torch::allclose(x, torch::cat(noise, 0), 1e-5, 1e-6));
  EXPECT_GT(x.abs().max().item<float>(), 1.5f);
}

TEST(MMDiT, PatchifyRoundTrip) {
  auto x = torch::randn({2, 3, 16, 16});
  EXPECT_TRUE(torch::equal(unpatchify(patchify(x, 4), 4, 3, 16), x));
  EXPECT_EQ(patchify(x, 4).sizes(), (std::vector<int64_t>{2, 16, 48}));
}

TEST(MMDiT, AdaLNZeroInitMakesEveryBlockTheIdentity) {
  torch::manual_seed(1);
  using namespace mmdit_detail;
  DoubleBlock db(32, 2, 64);
  SingleBlock sb(32, 2, 64);
  auto img = torch::randn({2, 16, 32}), txt = torch::randn({2, 5, 32}), vec = torch::randn({2, 32});
  auto [cos, sin] = rope_2d(4, 16, 100.0);
  cos = torch::cat({torch::ones({5, 8}), cos});
  sin = torch::cat({torch::zeros({5, 8}), sin});
  auto km = attention_bias(torch::ones({2, 21}, torch::kBool));  // all attended: undefined
  auto [i2, t2] = db->forward(img, txt, vec, cos, sin, km);
  EXPECT_TRUE(torch::equal(i2, img));
  EXPECT_TRUE(torch::equal(t2, txt));
  auto h = torch::cat({txt, img}, 1);
  EXPECT_TRUE(torch::equal(sb->forward(h, vec, cos, sin, km), h));
  // ...and the whole model outputs exactly zero at init (final layer and refine head zeroed).
  MMDiT m(micro());
  auto y = m->forward(torch::randn({2, 3, 16, 16}), torch::rand({2}),
                      torch::zeros({2, 16}, torch::kInt64), torch::ones({2, 16}, torch::kBool));
  EXPECT_EQ(y.abs().max().item<float>(), 0.0f);
  // After a perturbation of the modulation the block is no longer the identity (test can fail).
  torch::NoGradGuard ng;
  db->img->mod->bias.normal_();
  auto [i3, t3] = db->forward(img, txt, vec, cos, sin, km);
  EXPECT_FALSE(torch::equal(i3, img));
}

TEST(MMDiT, RopeScoresDependOnlyOnRelativePosition) {
  torch::manual_seed(2);
  const int g = 6, hd = 16;
  auto [cos, sin] = rope_2d(g, hd, 100.0);
  auto q = torch::randn({hd}), k = torch::randn({hd});
  auto score = [&](int r1, int c1, int r2, int c2) {
    auto qq = q.view({1, 1, 1, hd}).expand({1, 1, g * g, hd}).contiguous();
    auto kk = k.view({1, 1, 1, hd}).expand({1, 1, g * g, hd}).contiguous();
    auto rq = apply_rope(qq, cos, sin), rk = apply_rope(kk, cos, sin);
    return (rq[0][0][r1 * g + c1] * rk[0][0][r2 * g + c2]).sum().item<double>();
  };
  double a = score(1, 2, 3, 1), b = score(2, 4, 4, 3), c = score(0, 0, 2, 5);
  EXPECT_NEAR(a, b, 1e-4);
  EXPECT_GT(std::abs(a - c), 1e-3);
  // Norm preserving.
  auto x = torch::randn({1, 1, g * g, hd});
  EXPECT_NEAR(apply_rope(x, cos, sin).norm().item<double>(), x.norm().item<double>(), 1e-4);
}

TEST(MMDiT, FusedQkNormRopeMatchesComposedOpsForwardAndBackward) {
  torch::manual_seed(8);
  const int threads = torch::get_num_threads();
  torch::set_num_threads(2);  // rows and the weight-gradient partial sums are split over threads
  const int64_t B = 3, H = 2, Ta = 5, Nb = 9, hd = 8;
  auto [ic, is] = rope_2d(3, hd, 100.0);  // 9 image positions
  auto cos = torch::cat({torch::ones({Ta, hd / 2}), ic}, 0),
       sin = torch::cat({torch::zeros({Ta, hd / 2}), is}, 0);
  // Strided views as split_heads makes them: [B,L,3,H,hd] permuted to [B,H,L,hd].
  auto ta = torch::randn({B, Ta, 3, H, hd}, torch::requires_grad()),
       tb = torch::randn({B, Nb, 3, H, hd}, torch::requires_grad());
  auto wa = (1 + 0.3 * torch::randn({hd})).requires_grad_(),
       wb = (1 + 0.3 * torch::randn({hd})).requires_grad_();
  auto xa = ta.permute({2, 0, 3, 1, 4})[1], xb = tb.permute({2, 0, 3, 1, 4})[1];
  ASSERT_FALSE(xa.is_contiguous());
  auto go = torch::randn({B, H, Ta + Nb, hd});
  auto out = qk_norm_rope(xa, wa, xb, wb, cos, sin);
  auto g = torch::autograd::grad({out}, {ta, wa, tb, wb}, {go});
  auto rms = [](const torch::Tensor& x, const torch::Tensor& w) {
    return x * torch::rsqrt(x.pow(2).mean(-1, true) + 1e-6) * w;
  };
  auto ref = apply_rope(torch::cat({rms(xa, wa), rms(xb, wb)}, 2), cos, sin);
  auto rg = torch::autograd::grad({ref}, {ta, wa, tb, wb}, {go});
  EXPECT_LT((out - ref).abs().max().item<float>(), 1e-5);
  for (int i = 0; i < 4; ++i) {
    EXPECT_LT((g[i] - rg[i]).abs().max().item<float>(),
              1e-4 * (1 + rg[i].abs().max().item<float>()))
        << i;
    EXPECT_GT(rg[i].abs().max().item<float>(), 1e-3) << i;
  }
  // One segment (single-stream blocks): the second is an empty view of the first.
  auto one = qk_norm_rope(xb, wb, xb.narrow(2, Nb, 0), wb, ic, is);
  EXPECT_LT((one - apply_rope(rms(xb, wb), ic, is)).abs().max().item<float>(), 1e-5);
  torch::set_num_threads(threads);
}

// bf16 q/k straight from a bf16 GEMM: the kernel reads them as float, so the result equals the
// float32 path on the same (bf16-representable) values; the input gradients come back bf16,
// within one bf16 rounding of the float32 ones.
TEST(MMDiT, FusedQkNormRopeReadsBf16Inputs) {
  torch::manual_seed(9);
  const int64_t B = 2, H = 2, Ta = 4, Nb = 9, hd = 8;
  auto [ic, is] = rope_2d(3, hd, 100.0);
  auto cos = torch::cat({torch::ones({Ta, hd / 2}), ic}, 0),
       sin = torch::cat({torch::zeros({Ta, hd / 2}), is}, 0);
  auto ta = torch::randn({B, Ta, 3, H, hd}).to(torch::kBFloat16).requires_grad_(),
       tb = torch::randn({B, Nb, 3, H, hd}).to(torch::kBFloat16).requires_grad_();
  auto fa = ta.detach().to(torch::kFloat32).requires_grad_(),
       fb = tb.detach().to(torch::kFloat32).requires_grad_();
  auto wa = (1 + 0.3 * torch::randn({hd})).requires_grad_(),
       wb = (1 + 0.3 * torch::randn({hd})).requires_grad_();
  auto view = [](const torch::Tensor& t) { return t.permute({2, 0, 3, 1, 4})[0]; };
  auto go = torch::randn({B, H, Ta + Nb, hd});
  auto out = qk_norm_rope(view(ta), wa, view(tb), wb, cos, sin);
  ASSERT_EQ(out.scalar_type(), torch::kFloat32);
  auto g = torch::autograd::grad({out}, {ta, wa, tb, wb}, {go});
  auto ref = qk_norm_rope(view(fa), wa, view(fb), wb, cos, sin);
  auto rg = torch::autograd::grad({ref}, {fa, wa, fb, wb}, {go});
  EXPECT_LT((out - ref).abs().max().item<float>(), 1e-6);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(g[i].scalar_type(), i % 2 == 0 ? torch::kBFloat16 : torch::kFloat32) << i;
    const float tol = i % 2 == 0 ? 1e-2f : 1e-6f;  // inputs: a bf16 rounding; weights: exact
    EXPECT_LT((g[i].to(torch::kFloat32) - rg[i].to(torch::kFloat32)).abs().max().item<float>(),
              tol * (1 + rg[i].abs().max().item<float>()))
        << i;
    EXPECT_GT(rg[i].abs().max().item<float>(), 1e-3) << i;
  }
  // Under Precision::kBF16 the output is bf16 (it feeds the bf16 attention without a cast pass):
  // the float32 result rounded once, and gradients within a bf16 rounding of the output
  // gradient (now read as bf16) for the inputs and the weights.
  set_compute_precision(Precision::kBF16);
  auto ob = qk_norm_rope(view(ta), wa, view(tb), wb, cos, sin);
  auto gb = torch::autograd::grad({ob}, {ta, wa, tb, wb}, {go.to(torch::kBFloat16)});
  set_compute_precision(Precision::kFP32);
  ASSERT_EQ(ob.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(ob, ref.detach().to(torch::kBFloat16)));
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(gb[i].scalar_type(), i % 2 == 0 ? torch::kBFloat16 : torch::kFloat32) << i;
    EXPECT_LT((gb[i].to(torch::kFloat32) - rg[i].to(torch::kFloat32)).abs().max().item<float>(),
              2e-2f * (1 + rg[i].abs().max().item<float>()))
        << i;
  }
}

// qkv_heads(): the same values and gradients as the views + qk_norm_rope() + cat it replaces,
// bit for bit (the same kernels; only where the gradients are written changes), for two streams
// and for one (an empty second), in float32 and in bf16.
TEST(MMDiT, QkvHeadsIsTheSplitNormRopeAndCatItReplaces) {
  torch::manual_seed(10);
  const int64_t B = 2, H = 2, hd = 8, D = H * hd;
  for (int64_t Ta : {4, 13}) {
    const int64_t Nb = Ta == 4 ? 9 : 0;
    auto [ic, is] = rope_2d(3, hd, 100.0);
    auto cos = Nb ? torch::cat({torch::ones({Ta, hd / 2}), ic}, 0)
                  : torch::cat({ic, ic}, 0).narrow(0, 0, Ta).contiguous();
    auto sin = Nb ? torch::cat({torch::zeros({Ta, hd / 2}), is}, 0)
                  : torch::cat({is, is}, 0).narrow(0, 0, Ta).contiguous();
    for (bool bf16 : {false, true}) {
      const auto dt = bf16 ? torch::kBFloat16 : torch::kFloat32;
      auto a = torch::randn({B, Ta, 3 * D}).to(dt).requires_grad_();
      auto full_b = torch::randn({B, Nb ? Nb : 1, 3 * D}).to(dt).requires_grad_();
      auto b = Nb ? full_b : full_b.narrow(1, 0, 0);
      std::vector<torch::Tensor> w;
      for (int i = 0; i < 4; ++i) w.push_back((1 + 0.3 * torch::randn({hd})).requires_grad_());
      if (bf16) set_compute_precision(Precision::kBF16);
      auto [q, k, v] = qkv_heads(a, w[0], w[1], b, w[2], w[3], cos, sin, H);
      auto [qa, ka, va] = mmdit_detail::split_heads(a, H);
      auto [qb, kb, vb] = mmdit_detail::split_heads(b, H);
      auto rq = qk_norm_rope(qa, w[0], qb, w[2], cos, sin),
           rk = qk_norm_rope(ka, w[1], kb, w[3], cos, sin), rv = torch::cat({va, vb}, 2);
      const auto odt = bf16 ? torch::kBFloat16 : torch::kFloat32;
      auto gq = torch::randn(q.sizes()).to(odt), gk = torch::randn(k.sizes()).to(odt),
           gv = torch::randn(v.sizes()).to(dt);
      std::vector<torch::Tensor> in{a, full_b, w[0], w[1], w[2], w[3]};
      auto g = torch::autograd::grad({q, k, v}, in, {gq, gk, gv}, true, false, true);
      auto r = torch::autograd::grad({rq, rk, rv}, in, {gq, gk, gv}, true, false, true);
      set_compute_precision(Precision::kFP32);
      EXPECT_TRUE(torch::equal(q, rq) && torch::equal(k, rk) && torch::equal(v, rv)) << Ta << bf16;
      EXPECT_TRUE(torch::equal(g[0], r[0])) << Ta << bf16;
      if (Nb) {
        EXPECT_TRUE(torch::equal(g[1], r[1])) << Ta << bf16;
      }
      for (int i = 2; i < (Nb ? 6 : 4); ++i) {
        EXPECT_TRUE(torch::equal(g[i], r[i])) << Ta << bf16 << i;
        EXPECT_GT(r[i].abs().max().item<float>(), 1e-3) << i;
      }
    }
  }
}

TEST(MMDiT, FusedGeluMatchesTorchForwardAndBackward) {
  // Wide range (tails clamp inside exp), odd length (vector remainder), gradients.
  auto x = torch::cat({torch::linspace(-30, 30, 2001), 3 * torch::randn({4099})}).requires_grad_();
  auto go = torch::randn({x.numel()});
  auto y = gelu_tanh(x);
  auto ref = torch::gelu(x, "tanh");
  EXPECT_LT((y - ref).abs().max().item<float>(), 2e-6);
  auto g = torch::autograd::grad({y}, {x}, {go})[0],
       rg = torch::autograd::grad({ref}, {x}, {go})[0];
  EXPECT_LT((g - rg).abs().max().item<float>(), 1e-5 * (1 + rg.abs().max().item<float>()));
  EXPECT_FALSE(torch::isnan(g).any().item<bool>());
  torch::NoGradGuard ng;  // the inference path
  EXPECT_LT((gelu_tanh(x.detach()) - ref.detach()).abs().max().item<float>(), 2e-6);
}

TEST(MMDiT, FusedGeluOnBf16MatchesFp32WithinBf16Rounding) {
  // The MLP's hidden activation under --precision bf16: bf16 in and out, computed in fp32.
  auto xf = torch::cat({torch::linspace(-30, 30, 2001), 3 * torch::randn({4099})});
  auto xb = xf.to(torch::kBFloat16).requires_grad_();
  auto go = torch::randn({xf.numel()}).to(torch::kBFloat16);
  auto y = gelu_tanh(xb);
  ASSERT_EQ(y.scalar_type(), torch::kBFloat16);
  auto xr = xb.detach().to(torch::kFloat32).requires_grad_();
  auto ref = torch::gelu(xr, "tanh");
  // One rounding to bf16 (8 significant bits): relative error <= 2^-8, plus the kernel's ~1e-7.
  auto err = (y.to(torch::kFloat32) - ref).abs() - (ref.abs() * 4.0e-3 + 1e-6);
  EXPECT_LE(err.max().item<float>(), 0.f);
  auto g = torch::autograd::grad({y}, {xb}, {go})[0];
  auto rg = torch::autograd::grad({ref}, {xr}, {go.to(torch::kFloat32)})[0];
  ASSERT_EQ(g.scalar_type(), torch::kBFloat16);
  // Two roundings (the stored derivative and the product); absolute slack where the derivative
  // crosses zero (x = -0.75), where it is a difference of terms of size ~0.3.
  auto gerr = (g.to(torch::kFloat32) - rg).abs() - (rg.abs() * 8.0e-3 + 1e-5);
  EXPECT_LE(gerr.max().item<float>(), 0.f);
  torch::NoGradGuard ng;  // the inference path gives the same values
  EXPECT_TRUE(torch::equal(gelu_tanh(xb.detach()), y.detach()));
}

TEST(MMDiT, FusedGeluPropagatesNanAndInfinity) {
  // The kernels are built with -ffinite-math-only (CMakeLists.txt): a NaN activation must still
  // come out NaN (so a diverged run is caught as a NaN loss), and +-inf must stay non-finite, in
  // fp32 and bf16, with and without the derivative, at every position of a vector (remainder).
  const float nan = std::numeric_limits<float>::quiet_NaN(),
              inf = std::numeric_limits<float>::infinity();
  for (auto dt : {torch::kFloat32, torch::kBFloat16})
    for (bool grad : {false, true})
      for (int64_t pos : {0, 5, 16, 36}) {
        auto x = torch::linspace(-2, 2, 37).to(dt);
        x[pos] = nan;
        x[(pos + 1) % 37] = inf;
        x[(pos + 2) % 37] = -inf;
        torch::Tensor y;
        if (grad) {
          auto xg = x.clone().requires_grad_();
          y = gelu_tanh(xg);
          auto g = torch::autograd::grad({y}, {xg}, {torch::ones_like(y)})[0].to(torch::kFloat32);
          EXPECT_TRUE(std::isnan(g[pos].item<float>())) << pos;
          y = y.detach();
        } else {
          torch::NoGradGuard ng;
          y = gelu_tanh(x);
        }
        auto yf = y.to(torch::kFloat32);
        EXPECT_TRUE(std::isnan(yf[pos].item<float>())) << pos << " grad " << grad;
        EXPECT_EQ(yf[(pos + 1) % 37].item<float>(), inf) << pos;
        // gelu(-inf) is -inf * 0 (NaN in torch); here -inf * sigmoid(-2u) with the exponent
        // clamped, i.e. -inf: not finite either way, so a blown-up activation stays visible.
        EXPECT_FALSE(std::isfinite(yf[(pos + 2) % 37].item<float>())) << pos;
        EXPECT_FALSE(torch::isnan(yf.narrow(0, (pos + 3) % 37, 1)).any().item<bool>());
      }
}

TEST(Train, FreshGradientsEqualZeroGradThenBackward) {
  torch::manual_seed(3);
  auto a = torch::randn({4, 3}, torch::requires_grad()),
       b = torch::randn({3}, torch::requires_grad()), c = torch::randn({2}, torch::requires_grad());
  auto x = torch::randn({5, 4});
  std::vector<Tensor> ps{a, b, c};
  auto loss1 = [&] { return (x.mm(a) + b).pow(2).sum(); };
  backward_with_fresh_grads(loss1(), ps);
  auto ga = a.grad().clone(), gb = b.grad().clone();
  backward_with_fresh_grads(loss1(), ps);  // not accumulated
  EXPECT_TRUE(torch::equal(a.grad(), ga));
  EXPECT_TRUE(torch::equal(b.grad(), gb));
  EXPECT_FALSE(c.grad().defined());  // never had one: stays undefined, as with zero_grad
  // A loss without b: b had a gradient, so it gets zeros (zero_grad's behaviour), not none.
  backward_with_fresh_grads(x.mm(a).sum(), ps);
  ASSERT_TRUE(b.grad().defined());
  EXPECT_EQ(b.grad().abs().sum().item<float>(), 0.f);
  EXPECT_TRUE(torch::allclose(a.grad(), x.sum(0).unsqueeze(1).expand({4, 3})));
}

TEST(Flow, EulerIntegratesAKnownLinearFieldExactly) {
  // Data = point mass at mu: v(x,t) = (x - mu) / t is linear in x; trajectories are straight
  // lines, so Euler with any step count lands exactly on mu.
  auto mu = torch::tensor({0.7f, -1.3f, 2.0f}).view({1, 3, 1, 1});
  VelocityFn v = [&](const Tensor& x, const Tensor& t) { return (x - mu) / t.view({-1, 1, 1, 1}); };
  auto noise = torch::randn({4, 3, 1, 1});
  for (int steps : {1, 3, 10}) {
    for (const char* method : {"euler", "heun", "ab2", "dpm2m"}) {
      SamplerConfig sc;
      sc.steps = steps;
      sc.method = *parse_sampler(method);
      sc.shift = 3.0;
      auto x = sample_flow(v, noise, sc);
      EXPECT_LT((x - mu).abs().max().item<float>(), 1e-5) << method << " " << steps;
    }
  }
  auto ts = sampling_schedule({SamplerMethod::kEuler, 4, 1.0});
  EXPECT_EQ(ts.front(), 1.0);
  EXPECT_EQ(ts.back(), 0.0);
}

TEST(Flow, ImageToImageStartsAtTheStrengthAndFollowsTheExactFlowMapFromThere) {
  // The schedule from start s: s, then the full schedule's times below s.
  SamplerConfig sc{SamplerMethod::kEuler, 10, 1.0};
  sc.start = 0.45;
  auto ts = sampling_schedule(sc);
  ASSERT_EQ(ts.size(), 6u);  // 0.45, 0.4, 0.3, 0.2, 0.1, 0
  EXPECT_DOUBLE_EQ(ts[0], 0.45);
  EXPECT_NEAR(ts[1], 0.4, 1e-12);
  EXPECT_EQ(ts.back(), 0.0);
  // Data N(mu, sd^2) with its exact velocity: the flow from t = s maps x_s to
  // mu + sd (x_s - (1 - s) mu) / sqrt((1 - s)^2 sd^2 + s^2) (the marginal at s is Gaussian).
  const double mu = 0.5, sd = 0.3, s = 0.45;
  VelocityFn v = [&](const Tensor& x, const Tensor& t) {
    auto tt = t.view({-1, 1, 1, 1}).to(torch::kFloat64);
    auto var = (1 - tt).pow(2) * sd * sd + tt * tt, d = x - (1 - tt) * mu;
    return tt / var * d - mu - (1 - tt) * sd * sd / var * d;
  };
  auto x0 = torch::linspace(-0.4, 1.4, 7, torch::kFloat64).view({7, 1, 1, 1});
  auto z = torch::linspace(-1.5, 1.5, 7, torch::kFloat64).view({7, 1, 1, 1});
  auto xs = (1 - s) * x0 + s * z;
  auto exact = mu + sd * (xs - (1 - s) * mu) / std::sqrt((1 - s) * (1 - s) * sd * sd + s * s);
  SamplerConfig dpm{SamplerMethod::kDpm2m, 40, 1.0};
  dpm.start = s;
  const double err40 = (sample_flow(v, xs, dpm) - exact).abs().max().item<double>();
  dpm.steps = 320;
  const double err320 = (sample_flow(v, xs, dpm) - exact).abs().max().item<double>();
  EXPECT_LT(err40, 0.02);
  EXPECT_LT(err320, 2e-3);  // converges to the exact map
  EXPECT_LT(err320, err40 / 4);
  // A small strength keeps the starting image (the velocity's pull over t <= s is small).
  dpm.start = 0.02;
  auto near = sample_flow(v, 0.98 * x0 + 0.02 * z, dpm);
  EXPECT_LT((near - x0).abs().max().item<double>(), 0.05);
}

TEST(Flow, MultistepSamplersBeatEulerOnAGaussianWithKnownFlowMap) {
  // Data N(mu, s^2): the exact velocity is affine in x and the flow map sends noise z to
  // mu + s z. Curved trajectories (s < 1) separate first- from second-order samplers.
  const double mu = 0.5, s = 0.3;
  VelocityFn v = [&](const Tensor& x, const Tensor& t) {
    auto tt = t.view({-1, 1, 1, 1}).to(torch::kFloat64);
    auto var = (1 - tt).pow(2) * s * s + tt * tt, d = x - (1 - tt) * mu;
    return tt / var * d - mu - (1 - tt) * s * s / var * d;
  };
  auto z = torch::linspace(-2, 2, 9, torch::kFloat64).view({9, 1, 1, 1});
  auto exact = mu + s * z;
  auto err = [&](const char* method, int steps) {
    return (sample_flow(v, z, {*parse_sampler(method), steps, 1.0}) - exact)
        .abs()
        .max()
        .item<double>();
  };
  EXPECT_GT(err("euler", 16), 0.05);
  // Same number of network calls, several times smaller error.
  EXPECT_LT(err("ab2", 8), err("euler", 8) / 3);
  EXPECT_LT(err("dpm2m", 12), err("euler", 12) / 4);
  // Doubling the steps: AB2's error falls ~4x (second order), Euler's ~2x (first order).
  EXPECT_LT(err("ab2", 32), err("ab2", 16) / 3.5);
  EXPECT_LT(err("ab2", 64), err("ab2", 32) / 3.5);
  EXPECT_GT(err("euler", 32), err("euler", 16) / 2.5);
}

TEST(Flow, DdimIsEulerAtEtaZeroAndAncestralAtEtaOneKeepsTheGaussian) {
  // Data N(mu, s^2) per dimension with its exact velocity (as above).
  const double mu = 0.5, s = 0.3;
  VelocityFn v = [&](const Tensor& x, const Tensor& t) {
    auto tt = t.view({-1, 1, 1, 1}).to(torch::kFloat64);
    auto var = (1 - tt).pow(2) * s * s + tt * tt, d = x - (1 - tt) * mu;
    return tt / var * d - mu - (1 - tt) * s * s / var * d;
  };
  auto gen = at::detail::createCPUGenerator(9);
  auto z = torch::randn({20000, 1, 1, 1}, gen, torch::kFloat64);
  SamplerConfig euler{SamplerMethod::kEuler, 10, 1.0}, ddim0{SamplerMethod::kDdim, 10, 1.0, 0.0};
  EXPECT_LT((sample_flow(v, z, euler) - sample_flow(v, z, ddim0)).abs().max().item<double>(), 1e-9);
  // eta = 1: the mean is right and the spread converges to the data's at first order (its
  // discretisation error shrinks the spread: 0.25 at 20 steps, 0.287 at 100, 0.293 at 200);
  // the noise comes from fresh_noise, and the path differs from the ODE's flow map.
  auto g2 = at::detail::createCPUGenerator(10);
  int calls = 0;
  NoiseFn fresh = [&]() {
    ++calls;
    return torch::randn({20000, 1, 1, 1}, g2, torch::kFloat64);
  };
  auto x50 = sample_flow(v, z, {SamplerMethod::kDdim, 50, 1.0, 1.0}, fresh);
  EXPECT_EQ(calls, 49);  // every step but the last (t1 = 0 adds no noise)
  auto x200 = sample_flow(v, z, {SamplerMethod::kDdim, 200, 1.0, 1.0}, fresh);
  EXPECT_NEAR(x200.mean().item<double>(), mu, 0.01);
  double e50 = s - x50.std().item<double>(), e200 = s - x200.std().item<double>();
  EXPECT_GT(e50, 0.01);
  EXPECT_LT(std::abs(e200), 0.012);
  EXPECT_LT(std::abs(e200), e50 / 2.5);
  EXPECT_GT((x200 - (mu + s * z)).abs().mean().item<double>(), 0.05);  // not the ODE's flow map
  // A network whose x0 estimate is shrunk towards the mean (under-fitted) loses spread under the
  // ODE, and more of it under the ancestral sampler: re-injected noise does not undo shrinkage.
  VelocityFn shrunk = [&](const Tensor& x, const Tensor& t) {
    auto tt = t.view({-1, 1, 1, 1}).to(torch::kFloat64);
    auto vt = v(x, t);
    auto x0s = mu + 0.7 * (x - tt * vt - mu);
    return (x - x0s) / tt;  // the velocity implied by the shrunk x0
  };
  double sd_ode =
      sample_flow(shrunk, z, {SamplerMethod::kDdim, 100, 1.0, 0.0}).std().item<double>();
  double sd_anc =
      sample_flow(shrunk, z, {SamplerMethod::kDdim, 100, 1.0, 1.0}, fresh).std().item<double>();
  EXPECT_LT(sd_ode, 0.8 * s);
  EXPECT_LT(sd_anc, sd_ode) << sd_anc << " vs " << sd_ode;
}

TEST(Flow, DiffusionBatchFollowsTheDdpmScheduleWithTheNoiseAsTarget) {
  FlowConfig fc;
  fc.objective = Objective::kDiffusion;
  auto abar = ddpm_alpha_bar(fc);
  ASSERT_EQ(abar.size(), 1001u);
  EXPECT_EQ(abar[0], 1.0);
  EXPECT_NEAR(abar[1], 1 - 1e-4, 1e-12);
  EXPECT_NEAR(abar[1000], 4.036e-5, 0.01e-5);  // DDPM's linear schedule: SNR ~ 4e-5 at the end
  // Training times are k / K with k in 1..K.
  auto gen = at::detail::createCPUGenerator(3);
  auto t = sample_timesteps(4000, fc, gen);
  auto k = t * 1000;
  EXPECT_LT((k - k.round()).abs().max().item<float>(), 1e-3);
  EXPECT_GE(k.min().item<float>(), 0.999f);
  EXPECT_LE(k.max().item<float>(), 1000.001f);
  EXPECT_NEAR(t.mean().item<float>(), 0.5, 0.02);  // uniform, not logit-normal
  auto x0 = torch::randn({3, 2, 4, 4}), noise = torch::randn({3, 2, 4, 4});
  auto tb = torch::tensor({0.001f, 0.5f, 1.0f});
  auto b = make_train_batch(x0, noise, tb, fc);
  for (int i = 0; i < 3; ++i) {
    int ki = std::lround(tb[i].item<float>() * 1000);
    auto want = std::sqrt(abar[ki]) * x0[i] + std::sqrt(1 - abar[ki]) * noise[i];
    EXPECT_LT((b.x_t[i] - want).abs().max().item<float>(), 1e-5) << ki;
  }
  EXPECT_TRUE(torch::equal(b.target, noise));
  EXPECT_LT(flow_loss_per_sample(noise, b, fc).abs().max().item<float>(), 1e-12);
  EXPECT_GT(flow_loss_per_sample(x0, b, fc).min().item<float>(), 0.1f);
  // The flow objective is unchanged: velocity target.
  FlowConfig ff;
  EXPECT_TRUE(torch::equal(make_train_batch(x0, noise, tb, ff).target, noise - x0));
  // JSON round trip keeps the objective; a checkpoint without the key is a flow model.
  EXPECT_EQ(FlowConfig::from_json(fc.to_json()).objective, Objective::kDiffusion);
  EXPECT_EQ(FlowConfig::from_json(nlohmann::json::object()).objective, Objective::kFlow);
  EXPECT_FALSE(parse_objective("ddpm").ok());
}

TEST(Flow, DiffusionNetworkSampledThroughTheFlowIsDdimAndReachesTheGaussian) {
  // Data N(mu, s^2) per dimension. The exact noise predictor of x_k = a x0 + sig eps is
  // E[eps | x_k] = sig (x_k - a mu) / (a^2 s^2 + sig^2).
  const double mu = 0.5, s = 0.3;
  FlowConfig fc;
  fc.objective = Objective::kDiffusion;
  auto abar = ddpm_alpha_bar(fc);
  const int K = 1000;
  double worst_k_offset = 0;
  NetFn eps_net = [&](const Tensor& x, const Tensor& t) {
    // Samplers query one time per call; DDIM's grid lands on whole DDPM steps.
    EXPECT_EQ((t - t[0]).abs().max().item<double>(), 0.0);
    double kf = t[0].item<double>() * K;
    int k = static_cast<int>(std::lround(kf));
    worst_k_offset = std::max(worst_k_offset, std::abs(kf - k));
    double a = std::sqrt(abar[k]), sig = std::sqrt(1 - abar[k]);
    return sig * (x - a * mu) / (a * a * s * s + sig * sig);
  };
  auto gen = at::detail::createCPUGenerator(9);
  auto z = torch::randn({20000, 1, 1, 1}, gen, torch::kFloat64);
  const double aK = std::sqrt(abar[K]), sK = std::sqrt(1 - abar[K]);
  VelocityFn v = [&](const Tensor& x, const Tensor& t) { return net_velocity(eps_net, x, t, fc); };
  auto run = [&](int S, SamplerMethod m, double eta, const NoiseFn& fresh) {
    SamplerConfig sc{m, S, 1.0, eta};
    sc.ts = ddpm_sampling_schedule(fc, S);
    // lesionflow starts from the same x_K = z, i.e. z / (a_K + s_K) in flow coordinates.
    return sample_flow(v, z / (aK + sK), sc, fresh);
  };
  // Reference DDIM (Song et al. 2021, eta 0) in the diffusion's own coordinates, from x_K = z.
  const int S = 50;
  Tensor xr = z.clone();
  for (int i = 0; i < S; ++i) {
    int k0 = K - i * K / S, k1 = K - (i + 1) * K / S;
    auto eps = eps_net(xr, torch::full({xr.size(0)}, double(k0) / K, torch::kFloat64));
    auto x0 = (xr - std::sqrt(1 - abar[k0]) * eps) / std::sqrt(abar[k0]);
    xr = std::sqrt(abar[k1]) * x0 + std::sqrt(1 - abar[k1]) * eps;
  }
  auto ts = ddpm_sampling_schedule(fc, S);
  ASSERT_EQ(ts.size(), static_cast<size_t>(S + 1));
  EXPECT_EQ(ts.back(), 0.0);
  EXPECT_NEAR(ts.front(), ddpm_flow_time(abar, K), 1e-12);
  // Euler on the flow path with the network queried through net_velocity is DDIM.
  auto xs = run(S, SamplerMethod::kEuler, 0.0, nullptr);
  EXPECT_LT(worst_k_offset, 1e-3);
  EXPECT_LT((xs - xr).abs().max().item<double>(), 1e-4);
  // DDIM with the exact predictor: the mean is right and the spread converges at first order
  // (0.271 at 50 steps: DDIM's own discretisation error, the reference shows the same).
  EXPECT_NEAR(xs.mean().item<double>(), mu, 0.01);
  double e50 = s - xs.std().item<double>();
  double e400 = s - run(400, SamplerMethod::kEuler, 0.0, nullptr).std().item<double>();
  EXPECT_GT(e50, 0.01);
  EXPECT_LT(std::abs(e400), e50 / 4) << e50 << " " << e400;
  // The ddim sampler with eta 1 (ancestral) also converges to the Gaussian.
  auto g2 = at::detail::createCPUGenerator(4);
  NoiseFn fresh = [&]() { return torch::randn({20000, 1, 1, 1}, g2, torch::kFloat64); };
  auto xa = run(400, SamplerMethod::kDdim, 1.0, fresh);
  EXPECT_NEAR(xa.mean().item<double>(), mu, 0.01);
  EXPECT_NEAR(xa.std().item<double>(), s, 0.015);
}

TEST(Flow, TwoGaussianToyReproducesMeanAndCovariance) {
  torch::manual_seed(3);
  // Mixture: 0.5 N((-2,0), 0.5^2) + 0.5 N((2,0.5), 0.5^2).
  auto draw = [](int64_t n) {
    auto comp = torch::randint(0, 2, {n, 1}).to(torch::kFloat32);
    auto mean = comp * torch::tensor({4.0f, 0.5f}) + torch::tensor({-2.0f, 0.0f});
    return mean + 0.5 * torch::randn({n, 2});
  };
  torch::nn::Sequential net(torch::nn::Linear(3, 128), torch::nn::SiLU(),
                            torch::nn::Linear(128, 128), torch::nn::SiLU(),
                            torch::nn::Linear(128, 2));
  torch::optim::Adam opt(net->parameters(), torch::optim::AdamOptions(2e-3));
  FlowConfig fc;
  auto gen = at::detail::createCPUGenerator(5);
  const int kSteps = 4000, kB = 512;
  for (int step = 0; step < kSteps; ++step) {
    static_cast<torch::optim::AdamOptions&>(opt.param_groups()[0].options())
        .lr(2e-3 * (0.02 + 0.98 * 0.5 * (1 + std::cos(M_PI * step / kSteps))));
    auto x0 = draw(kB).view({kB, 2, 1, 1});
    auto t = sample_timesteps(kB, fc, gen);
    auto fb = make_flow_batch(x0, torch::randn({kB, 2, 1, 1}), t);
    auto out =
        net->forward(torch::cat({fb.x_t.view({kB, 2}), t.view({kB, 1})}, 1)).view({kB, 2, 1, 1});
    auto loss = flow_loss_per_sample(out, fb, fc).mean();
    opt.zero_grad();
    loss.backward();
    opt.step();
  }
  VelocityFn v = [&](const Tensor& x, const Tensor& t) {
    return net->forward(torch::cat({x.view({-1, 2}), t.view({-1, 1})}, 1)).view({-1, 2, 1, 1});
  };
  auto s = sample_flow(v, torch::randn({20000, 2, 1, 1}), {SamplerMethod::kHeun, 60, 1.0})
               .view({20000, 2});
  auto ref = draw(200000);
  auto m = s.mean(0), mr = ref.mean(0);
  auto cov = [](const Tensor& x) {
    auto c = x - x.mean(0);
    return c.t().mm(c) / (x.size(0) - 1);
  };
  auto C = cov(s), Cr = cov(ref);
  double scale = std::sqrt(Cr.trace().item<double>());
  EXPECT_LT((m - mr).abs().max().item<double>(), 0.05 * scale) << m << mr;
  EXPECT_LT(((C - Cr).abs() / Cr.abs().max()).max().item<double>(), 0.05) << C << Cr;
}

TEST(Checkpoint, SaveLoadRoundTripIsBitExact) {
  auto caps = phantom_captions(100);
  auto tok = Tokenizer::train(caps, {128, "bpe", 0});
  ASSERT_TRUE(tok.ok());
  auto c = micro();
  c.vocab_size = tok->vocab_size();
  MMDiT m = random_model(c, 4, 1.0);
  std::string path = test::tmp_dir("ckpt") + "/g.safetensors";
  FlowConfig fc;
  fc.prediction = Prediction::kX;
  ASSERT_TRUE(save_generator(path, m, *tok, 7, fc, "raw").ok());
  auto g = load_generator(path);
  ASSERT_TRUE(g.ok()) << g.status().message();
  EXPECT_EQ(g->step, 7);
  EXPECT_EQ(g->flow.prediction, Prediction::kX);
  EXPECT_EQ(g->tok->hash(), tok->hash());
  auto a = m->named_parameters(), b = g->model->named_parameters();
  ASSERT_EQ(a.size(), b.size());
  for (const auto& p : a) EXPECT_TRUE(torch::equal(p.value(), b[p.key()])) << p.key();
  // Wrong shapes are refused with a message naming the tensor.
  auto st = load_safetensors(path);
  auto c2 = c;
  c2.dim = 64;
  MMDiT other(c2);
  auto s = load_module_tensors(*st, *other, path);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("has shape"), std::string::npos);
}

// The files of one checkpoint are replaced as a set: whatever moment a kill hits, recovery
// leaves all old files or all new ones (a mix would resume new weights with an old step).
TEST(Checkpoint, AKillMidCommitLeavesTheOldSetOrTheNewOneNeverAMix) {
  const std::string dir = test::tmp_dir("ckpt_commit"), a = dir + "/a.bin", b = dir + "/b.bin",
                    journal = dir + "/checkpoint.journal";
  auto put = [](const std::string& p, const std::string& v) {
    ASSERT_TRUE(write_file_atomic(p, v).ok());
  };
  auto get = [](const std::string& p) { return *read_file(p); };
  auto writer = [](const std::string& v) {
    return [v](const std::string& p) { return write_file_atomic(p, v); };
  };
  put(a, "old a");
  put(b, "old b");
  // Killed while writing the new files (no journal yet): the old set stays.
  put(a + ".next", "new a");
  ASSERT_TRUE(recover_checkpoint(journal, {a, b}).ok());
  EXPECT_EQ(get(a), "old a");
  EXPECT_EQ(get(b), "old b");
  EXPECT_FALSE(file_exists(a + ".next"));
  // Killed after the journal and the first rename: recovery finishes the new set.
  put(a, "new a");
  put(b + ".next", "new b");
  put(journal, a + "\n" + b + "\n");
  ASSERT_TRUE(recover_checkpoint(journal, {a, b}).ok());
  EXPECT_EQ(get(a), "new a");
  EXPECT_EQ(get(b), "new b");
  EXPECT_FALSE(file_exists(journal));
  // A writer that fails (a full disk): an error, the old set intact, no .next left.
  auto failing = [](const std::string&) { return Status::error("write failed (disk full?)"); };
  Status st = commit_checkpoint(journal, {{a, writer("newer a")}, {b, failing}});
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(get(a), "new a");
  EXPECT_FALSE(file_exists(a + ".next"));
  EXPECT_FALSE(file_exists(journal));
  // A commit that completes: the new set, no journal.
  ASSERT_TRUE(commit_checkpoint(journal, {{a, writer("v3 a")}, {b, writer("v3 b")}}).ok());
  EXPECT_EQ(get(a), "v3 a");
  EXPECT_EQ(get(b), "v3 b");
  EXPECT_FALSE(file_exists(journal));
  // Temporaries a killed writer left (PATH.tmp.PID.N of a dead PID) are removed by the next
  // atomic write of that path and by recovery; a live process's temporary is left alone.
  const std::string dead =
      std::to_string(std::atol(run_command_capture("sh -c 'echo $$'").c_str()));
  const std::string live = std::to_string(getpid());
  put(a + ".tmp." + dead + ".7", "torn");
  put(a + ".tmp." + live + ".8", "in flight");
  put(b + ".tmp." + dead + ".9", "torn");
  put(a, "v4 a");
  EXPECT_FALSE(file_exists(a + ".tmp." + dead + ".7"));
  EXPECT_TRUE(file_exists(a + ".tmp." + live + ".8"));
  ASSERT_TRUE(recover_checkpoint(journal, {a, b}).ok());
  EXPECT_FALSE(file_exists(b + ".tmp." + dead + ".9"));
}

TEST(Parity, MMDiTForwardMatchesIndependentPythonTorch) {
  std::string path = test::src_dir() + "/tests/parity/mmdit_tiny.safetensors";
  auto st = load_safetensors(path);
  ASSERT_TRUE(st.ok()) << st.status().message() << " (regenerate with scripts/mmdit_reference.py)";
  auto cfg = MMDiTConfig::from_json(nlohmann::json::parse(st->metadata["config"]));
  MMDiT m(cfg);
  ASSERT_TRUE(load_module_tensors(*st, *m, path).ok());
  auto get = [&](const char* k) { return *from_raw(st->tensors.at(k), k); };
  auto out = m->forward(get("input.x"), get("input.t"), get("input.ids"),
                        get("input.mask").to(torch::kBool));
  double diff = (out - get("expected.out")).abs().max().item<double>();
  EXPECT_LE(diff, 1e-4);
  EXPECT_GT(get("expected.out").abs().max().item<double>(), 0.1);  // not a trivial all-zero fixture
}

namespace {
struct ToyRun {
  PreparedSet ps;
  CaptionedImages imgs;
  std::shared_ptr<Tokenizer> tok;
};
ToyRun toy_data(int n, int size) {
  ToyRun r;
  auto ds = load_dataset("phantom:" + std::to_string(n), {}, 9);
  PrepareStats st;
  r.ps = *prepare(*ds, PrepareConfig{size, FitMode::kCrop, 2}, &st);
  r.imgs.size = size;
  std::vector<std::string> caps;
  for (int64_t i = 0; i < r.ps.count(); ++i) {
    r.imgs.pixels.push_back(r.ps.image(i));
    r.imgs.captions.push_back(compose_caption(facts_from_record(r.ps.records[i]), 0));
  }
  r.tok = std::make_shared<Tokenizer>(*Tokenizer::train(r.imgs.captions, {128, "bpe", 0}));
  return r;
}
// micro() sized for the toy data's tokenizer and captions.
MMDiTConfig toy_config(const ToyRun& d) {
  auto c = micro();
  c.vocab_size = d.tok->vocab_size();
  c.max_text_len = 64;
  return c;
}
}  // namespace

TEST(Train, ResumeEqualsUninterruptedTraining) {
  auto d = toy_data(48, 16);
  auto c = toy_config(d);
  GenTrainConfig tc = test::short_run("resume_a", 6, 8, 1e-3, 2);
  tc.log_every = 1;
  tc.seed = 5;
  tc.keep_every = 2;  // EMA snapshots at steps 2, 4 and 6, across the interruption below
  torch::manual_seed(0);
  MMDiT a(c);
  ASSERT_TRUE(train_generator(tc, a, *d.tok, d.imgs, nullptr).ok());
  const std::string dir_a = tc.out;
  torch::manual_seed(0);
  MMDiT b(c);
  tc.out = test::tmp_dir("resume_b");
  tc.stop_at_step = 3;
  auto r1 = train_generator(tc, b, *d.tok, d.imgs, nullptr);
  ASSERT_TRUE(r1.ok());
  EXPECT_EQ(r1->step, 3);
  torch::manual_seed(123);  // a fresh process would start from different weights
  MMDiT b2(c);
  tc.stop_at_step = -1;
  tc.resume = true;
  auto r2 = train_generator(tc, b2, *d.tok, d.imgs, nullptr);
  ASSERT_TRUE(r2.ok()) << r2.status().message();
  EXPECT_EQ(r2->step, 6);
  auto pa = a->named_parameters(), pb = b2->named_parameters();
  for (const auto& p : pa) ASSERT_TRUE(torch::equal(p.value(), pb[p.key()])) << p.key();
  // Same loss curve: losses logged by both runs agree step by step.
  auto losses = [](const std::string& dir) {
    std::vector<std::pair<int64_t, double>> v;
    std::istringstream in(*read_file(dir + "/metrics.jsonl"));
    std::string line;
    while (std::getline(in, line)) {
      auto j = nlohmann::json::parse(line);
      if (j.contains("loss")) v.emplace_back(j["step"].get<int64_t>(), j["loss"].get<double>());
    }
    return v;
  };
  auto la = losses(dir_a), lb = losses(tc.out);
  ASSERT_EQ(la.size(), 6u);
  EXPECT_EQ(la, lb);
  // --keep-every: the kept EMA snapshots are the run's EMA at those steps. The last one is the
  // final ema.safetensors, an earlier one differs from it, and the interrupted run kept the same
  // snapshots as the uninterrupted one.
  auto tensors = [](const std::string& path) {
    auto st = load_safetensors(path);
    EXPECT_TRUE(st.ok()) << path;
    std::map<std::string, Tensor> m;
    if (st.ok())
      for (const auto& [k, raw] : st->tensors) m[k] = *from_raw(raw, path);
    return m;
  };
  auto same = [](const std::map<std::string, Tensor>& x, const std::map<std::string, Tensor>& y) {
    if (x.size() != y.size() || x.empty()) return false;
    for (const auto& [k, t] : x)
      if (!y.count(k) || !torch::equal(t, y.at(k))) return false;
    return true;
  };
  auto snap = [](const std::string& dir, int s) {
    return dir + "/ema_step_00000" + std::to_string(s) + ".safetensors";
  };
  for (int s : {2, 4, 6})
    for (const auto& dir : {dir_a, tc.out})
      ASSERT_TRUE(file_exists(snap(dir, s))) << dir << " step " << s;
  EXPECT_FALSE(file_exists(snap(dir_a, 3)));
  const auto last = tensors(snap(dir_a, 6));
  EXPECT_TRUE(same(last, tensors(dir_a + "/ema.safetensors")));
  EXPECT_FALSE(same(tensors(snap(dir_a, 2)), last));
  for (int s : {2, 4, 6})
    EXPECT_TRUE(same(tensors(snap(dir_a, s)), tensors(snap(tc.out, s)))) << "step " << s;
}

// --batch-threads 2 (the default on a 2-core CPU from 16 rows): every batch runs as two shards
// on two threads. The run follows the one-thread run up to float rounding (the two halves'
// gradients are summed instead of the whole batch's), repeats itself bit for bit, and an
// interrupted run resumes to the uninterrupted one's weights exactly.
TEST(Train, TwoBatchShardsFollowOneAndResumeExactly) {
  auto d = toy_data(48, 16);
  auto c = toy_config(d);
  auto run = [&](const std::string& name, int threads, int64_t stop, bool resume,
                 const std::string& dir = "") {
    GenTrainConfig tc = test::short_run(name, 4, 16, 1e-3, 2);
    if (!dir.empty()) tc.out = dir;
    tc.log_every = 1;
    tc.seed = 7;
    tc.batch_threads = threads;
    tc.stop_at_step = stop;
    tc.resume = resume;
    torch::manual_seed(resume ? 99 : 0);
    MMDiT m(c);
    auto r = train_generator(tc, m, *d.tok, d.imgs, nullptr);
    EXPECT_TRUE(r.ok()) << r.status().message();
    std::map<std::string, Tensor> w;
    for (const auto& p : m->named_parameters()) w[p.key()] = p.value().detach().clone();
    return std::make_pair(tc.out, w);
  };
  auto [dir1, one] = run("shards_one", 1, -1, false);
  auto [dir2, two] = run("shards_two", 2, -1, false);
  auto [dir2b, again] = run("shards_two_again", 2, -1, false);
  auto [dir3, part] = run("shards_resumed", 2, 2, false);
  auto [dir3b, resumed] = run("", 2, -1, true, dir3);
  double max_diff = 0;
  for (const auto& [k, t] : one) {
    max_diff = std::max(max_diff, (two[k] - t).abs().max().item<double>());
    EXPECT_TRUE(torch::equal(again[k], two[k])) << k;
    EXPECT_TRUE(torch::equal(resumed[k], two[k])) << k;
  }
  EXPECT_GT(max_diff, 0.0);  // the shards really ran (the sums differ in the last bits)
  EXPECT_LT(max_diff, 1e-5);
  auto losses = [](const std::string& dir) {
    std::vector<double> v;
    std::istringstream in(*read_file(dir + "/metrics.jsonl"));
    for (std::string line; std::getline(in, line);)
      v.push_back(nlohmann::json::parse(line)["loss"].get<double>());
    return v;
  };
  const auto l1 = losses(dir1), l2 = losses(dir2);
  ASSERT_EQ(l1.size(), 4u);
  ASSERT_EQ(l2.size(), 4u);
  for (size_t i = 0; i < l1.size(); ++i) EXPECT_NEAR(l2[i], l1[i], 1e-5 * l1[i]) << i;
  EXPECT_EQ(losses(dir3b), l2);
  const auto opts = nlohmann::json::parse(*read_file(dir2 + "/options.json"));
  EXPECT_EQ(opts["train"]["batch_threads"], 2) << opts.dump();
}

TEST(Train, FrozenTextEncoderStaysFixedWhileTheRestTrains) {
  auto d = toy_data(24, 16);
  auto c = toy_config(d);
  torch::manual_seed(0);
  MMDiT m(c);
  std::map<std::string, torch::Tensor> before;
  TrainTarget target;  // what `lesionflow train --freeze-text` passes
  for (auto& p : m->named_parameters()) {
    before[p.key()] = p.value().detach().clone();
    if (p.key().rfind("text.", 0) == 0)
      p.value().set_requires_grad(false);
    else
      target.params.push_back(p.value());
  }
  GenTrainConfig tc = test::short_run("freeze_text", 4, 8, 1e-2, 1);
  ASSERT_TRUE(train_generator(tc, m, *d.tok, d.imgs, nullptr, &target).ok());
  int text = 0, moved = 0;
  for (auto& p : m->named_parameters()) {
    bool same = torch::equal(p.value(), before[p.key()]);
    if (p.key().rfind("text.", 0) == 0) {
      ++text;
      EXPECT_TRUE(same) << p.key();
    } else {
      moved += !same;
    }
  }
  EXPECT_GT(text, 0);
  EXPECT_GT(moved, 10);
  // The checkpoint written through the default save path is a full generator.
  EXPECT_TRUE(load_generator(tc.out + "/ema.safetensors").ok());
}

TEST(Train, DiffusionObjectiveLearnsSavesItsObjectiveAndSamples) {
  auto d = toy_data(32, 16);
  auto c = toy_config(d);
  GenTrainConfig tc = test::short_run("diffusion", 120, 16, 2e-3, 1);
  tc.log_every = 20;
  tc.flow.objective = Objective::kDiffusion;
  tc.grid.sampler.method = SamplerMethod::kDdim;
  torch::manual_seed(0);
  MMDiT m(c);
  auto r = train_generator(tc, m, *d.tok, d.imgs, nullptr);
  ASSERT_TRUE(r.ok()) << r.status().message();
  std::vector<double> losses;
  std::istringstream in(*read_file(tc.out + "/metrics.jsonl"));
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) losses.push_back(j["loss"].get<double>());
  }
  ASSERT_EQ(losses.size(), 6u);
  // The noise-prediction MSE starts near 1 (a zero output) and falls as the network learns.
  EXPECT_GT(losses.front(), 0.5);
  EXPECT_LT(losses.back(), 0.7 * losses.front()) << losses.front() << " -> " << losses.back();
  auto g = load_generator(tc.out + "/ema.safetensors");
  LF_ASSERT_OK(g);
  EXPECT_EQ(g->flow.objective, Objective::kDiffusion);
  GenerateConfig gc;
  gc.sampler.steps = 10;
  gc.cfg_scale = 2.0;
  auto x =
      generate(g->model, *g->tok, g->flow, {d.imgs.captions[0], d.imgs.captions[1]}, {1, 2}, gc);
  EXPECT_TRUE(torch::isfinite(x).all().item<bool>());
  EXPECT_EQ(x.sizes(), (std::vector<int64_t>{2, 3, 16, 16}));
  EXPECT_GT(x.std().item<double>(), 0.05);
  auto x2 = generate(g->model, *g->tok, g->flow, {d.imgs.captions[0]}, {1}, gc);
  // Seed-exact and batch-independent up to float rounding of the output's scale (the DDIM
  // output of this toy run reaches |x| ~ 150, where one float ulp is 1.5e-5).
  const double scale = x[0].abs().max().item<double>();
  EXPECT_LE((x[0] - x2[0]).abs().max().item<double>(), 1e-5 + 1e-6 * scale) << "scale " << scale;
}

TEST(Train, NanLossStopsWithAMessage) {
  auto d = toy_data(16, 16);
  auto c = toy_config(d);
  MMDiT m(c);
  GenTrainConfig tc = test::short_run("nan", 3, 4, 1e30, 1);  // lr explodes
  tc.grad_clip = 1e30;
  {
    torch::NoGradGuard ng;
    for (auto& p : m->parameters()) p.fill_(std::numeric_limits<float>::quiet_NaN());
  }
  auto r = train_generator(tc, m, *d.tok, d.imgs, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("loss is nan"), std::string::npos) << r.status().message();
}

TEST(Distill, TargetIsTheGuidedTeacherStepAndTheStudentLearnsIt) {
  auto d = toy_data(24, 16);
  auto c = toy_config(d);
  MMDiT teacher = random_model(c, 21, 0.05), student = random_model(c, 21, 0.05);
  FlowConfig fc;
  auto x0 = images_to_tensor(d.imgs.pixels, 16);
  auto [ids, mask] = tokenize_batch(*d.tok, d.imgs.captions, 64);
  std::tie(ids, mask) = trim_padding(ids, mask);
  auto gen = at::detail::createCPUGenerator(3);
  auto t = torch::rand({x0.size(0)}, gen, torch::kFloat32) * 0.9 + 0.1;
  auto fb = make_flow_batch(x0, torch::randn(x0.sizes(), gen, torch::kFloat32), t);
  // Independent composition: padded empty caption, guided velocity, M explicit Euler substeps.
  auto [eids, emask] = tokenize_batch(*d.tok, std::vector<std::string>(x0.size(0), ""), 64);
  auto guided = [&](const Tensor& x, const Tensor& tt, double w) {
    torch::NoGradGuard ng;
    auto vc = teacher->forward(x, tt, ids, mask), vu = teacher->forward(x, tt, eids, emask);
    return vu + w * (vc - vu);
  };
  {  // one substep: the guided velocity itself
    TrainTarget tg;
    add_distillation(tg, teacher, *d.tok, fc, DistillConfig{3.0, 2, 1, 0.5});
    auto got = tg.target_velocity(fb.x_t, t, ids, mask);
    EXPECT_LT((got - guided(fb.x_t, t, 3.0)).abs().max().item<float>(), 1e-4);
  }
  DistillConfig dc{3.0, 2, 3, 0.5};  // two student steps, three teacher steps each
  TrainTarget tg;
  tg.params = student->parameters();
  add_distillation(tg, teacher, *d.tok, fc, dc);
  {
    auto t_end = (t - 0.5).clamp_min(0.0);
    auto h = (t - t_end) / 3;
    Tensor x = fb.x_t, tt = t;
    for (int m = 0; m < 3; ++m) {
      x = x - h.view({-1, 1, 1, 1}) * guided(x, tt, 3.0);
      tt = tt - h;
    }
    auto expect = (fb.x_t - x) / (t - t_end).view({-1, 1, 1, 1});
    auto got = tg.target_velocity(fb.x_t, t, ids, mask);
    EXPECT_LT((got - expect).abs().max().item<float>(), 1e-4);
    // The target is not the teacher's own conditional velocity (guidance and the jump matter).
    torch::NoGradGuard ng;
    EXPECT_GT((got - teacher->forward(fb.x_t, t, ids, mask)).pow(2).mean().item<float>(), 1e-4);
  }
  // Half the training timesteps sit on the student's grid {0.5, 1}.
  auto ts = tg.timesteps(2000, gen);
  double on_grid = ((ts == 0.5).logical_or(ts == 1.0)).to(torch::kFloat64).mean().item<double>();
  EXPECT_NEAR(on_grid, 0.5, 0.05);
  // Training the student through train_generator reduces its error against the target.
  auto err = [&] {
    torch::NoGradGuard ng;
    return (student->forward(fb.x_t, t, ids, mask) - tg.target_velocity(fb.x_t, t, ids, mask))
        .pow(2)
        .mean()
        .item<double>();
  };
  const double before = err();
  GenTrainConfig tc = test::short_run("distill", 60, 8, 2e-3, 5);
  tc.caption_dropout = 0;
  tc.augment = false;
  ASSERT_TRUE(train_generator(tc, student, *d.tok, d.imgs, nullptr, &tg).ok());
  const double after = err();
  EXPECT_LT(after, 0.5 * before) << "before " << before << " after " << after;
  // The teacher is untouched, and a checkpoint carries the student's sampling settings.
  MMDiT fresh = random_model(c, 21, 0.05);
  for (auto& p : teacher->named_parameters())
    ASSERT_TRUE(torch::equal(p.value(), fresh->named_parameters()[p.key()])) << p.key();
  GenerateConfig sc;
  sc.sampler.steps = 2;
  sc.cfg_scale = 1.0;
  sc.cfg_t_lo = 0.3;
  ASSERT_TRUE(save_generator(tc.out + "/student.safetensors", student, *d.tok, 60, fc, "raw",
                             {{"sampling", sampling_metadata(sc).dump()}})
                  .ok());
  auto loaded = load_generator(tc.out + "/student.safetensors");
  LF_ASSERT_OK(loaded);
  auto rec = recommended_sampling(loaded->metadata);
  EXPECT_EQ(rec.sampler.steps, 2);
  EXPECT_EQ(rec.cfg_scale, 1.0);
  EXPECT_EQ(rec.cfg_t_lo, 0.3);
  EXPECT_EQ(recommended_sampling({}).sampler.steps, 20);  // an ordinary checkpoint: the defaults
  // A recommendation written before the interval was recorded guided every step.
  auto old_rec = nlohmann::json::parse(loaded->metadata.at("sampling"));
  old_rec.erase("cfg_interval");
  EXPECT_EQ(recommended_sampling({{"sampling", old_rec.dump()}}).cfg_t_lo, 0.0);
  // Flags given on the command line win; the others take the recommendation.
  GenerateConfig cli;
  use_default_sampling(cli);  // as `sample` does before parsing: CFG 1.25 while t >= 0.6
  EXPECT_EQ(cli.cfg_t_lo, 0.6);
  cli.sampler.steps = 9;
  SamplerFlags given;
  given.steps = true;
  apply_recommended_sampling(loaded->metadata, given, cli);
  EXPECT_EQ(cli.sampler.steps, 9);
  EXPECT_EQ(cli.cfg_scale, 1.0);
  EXPECT_EQ(cli.cfg_t_lo, 0.3);  // the recommended guidance comes with its interval
  GenerateConfig own = cli;
  own.cfg_t_lo = 0.8;
  given.interval = true;  // ... unless --cfg-interval was given
  apply_recommended_sampling(loaded->metadata, given, own);
  EXPECT_EQ(own.cfg_t_lo, 0.8);
  GenerateConfig plain = cli;
  apply_recommended_sampling({}, SamplerFlags{}, plain);  // no recommendation: unchanged
  EXPECT_EQ(plain.sampler.steps, 9);
}

TEST(TrainSlow, OverfitsABatchOfEightPhantoms) {
  auto d = toy_data(8, 16);
  auto c = toy_config(d);
  c.prediction = Prediction::kX;
  torch::manual_seed(0);
  MMDiT m(c);
  FlowConfig fc;
  fc.prediction = Prediction::kX;
  auto x0 = images_to_tensor(d.imgs.pixels, 16);
  auto [ids, mask] = tokenize_batch(*d.tok, d.imgs.captions, 64);
  std::tie(ids, mask) = trim_padding(ids, mask);
  torch::optim::AdamW opt(m->parameters(), torch::optim::AdamWOptions(2e-3).weight_decay(0));
  auto gen = at::detail::createCPUGenerator(1);
  double first = 0, last = 0;
  const int kSteps = 600;
  for (int step = 0; step < kSteps; ++step) {
    auto t = sample_timesteps(8, fc, gen);
    auto fb = make_flow_batch(x0, torch::randn(x0.sizes(), gen, torch::kFloat32), t);
    // x-prediction error (the quantity that can reach zero when each caption names one image)
    auto out = m->forward(fb.x_t, t, ids, mask);
    auto loss = (out - x0).pow(2).mean();
    opt.zero_grad();
    loss.backward();
    opt.step();
    if (step < 10) first += loss.item<double>() / 10;
    if (step >= kSteps - 10) last += loss.item<double>() / 10;
  }
  // Pixel MSE on [-1,1] images: < 0.015 is an RMS error under 0.06 (about 8 grey levels).
  EXPECT_LT(last, 0.015) << "first " << first << " last " << last;
  EXPECT_LT(last, 0.1 * first) << "first " << first << " last " << last;
}

}  // namespace lf
