// LoRA adapters: identity at B = 0, only adapter tensors train, merge == runtime, small files,
// mismatched bases refused.
#include "adapters/lora.h"

#include <filesystem>

#include "lesionflow/captions.h"
#include "lesionflow/io.h"
#include "lesionflow/jsonl.h"
#include "models/checkpoint.h"
#include "pipeline/generator_runs.h"
#include "synth/synth.h"
#include "test_util.h"
#include "train/generator.h"
#include "train_util.h"

using namespace lf;

namespace {
struct Fixture {
  PreparedSet ps;
  CaptionedImages imgs;
  std::shared_ptr<Tokenizer> tok;
  MMDiT model{nullptr};
  std::string base_path, base_hash;
};

Fixture make_fixture(const std::string& name) {
  Fixture f;
  auto ds = load_dataset("phantom:24", {}, 5);
  PrepareStats st;
  f.ps = *prepare(*ds, PrepareConfig{16, FitMode::kCrop, 2}, &st);
  f.imgs.size = 16;
  for (int64_t i = 0; i < f.ps.count(); ++i) {
    f.imgs.pixels.push_back(f.ps.image(i));
    f.imgs.captions.push_back(compose_caption(facts_from_record(f.ps.records[i]), 0));
  }
  f.tok = std::make_shared<Tokenizer>(*Tokenizer::train(f.imgs.captions, {96, "bpe", 0}));
  MMDiTConfig mc = MMDiTConfig::preset("tiny");
  mc.image_size = 16;
  mc.patch = 4;
  mc.vocab_size = f.tok->vocab_size();
  torch::manual_seed(1);
  f.model = MMDiT(mc);
  {
    // Stand-in for a trained base: adaLN-Zero starts with zero gates and a zero output layer,
    // which would hide every change to the blocks.
    torch::NoGradGuard ng;
    for (auto& p : f.model->parameters()) p.add_(torch::randn(p.sizes()) * 0.05);
  }
  f.base_path = test::tmp_dir(name) + "/base.safetensors";
  EXPECT_TRUE(save_generator(f.base_path, f.model, *f.tok, 0, FlowConfig{}, "raw").ok());
  f.base_hash = *hash_file(f.base_path);
  return f;
}

torch::Tensor forward_fixed(MMDiT& m, const Tokenizer& tok, int size) {
  torch::NoGradGuard ng;
  auto gen = at::detail::createCPUGenerator(77);
  auto x = torch::randn({2, 3, size, size}, gen, torch::kFloat32);
  auto t = torch::tensor({0.3f, 0.8f});
  auto [ids, mask] =
      tokenize_batch(tok, {"dermoscopic image of a melanoma", "a nevus"}, m->config().max_text_len);
  return m->forward(x, t, ids, mask);
}

void randomize_up(LoraAdapter& a, uint64_t seed) {
  torch::NoGradGuard ng;
  auto gen = at::detail::createCPUGenerator(seed);
  for (auto& m : a.modules())
    const_cast<torch::Tensor&>(m.up).copy_(torch::randn(m.up.sizes(), gen) * 0.05);
}
}  // namespace

TEST(Lora, ZeroUpIsExactlyTheBaseModel) {
  auto f = make_fixture("lora_identity");
  auto before = forward_fixed(f.model, *f.tok, 16);
  auto a = LoraAdapter::create(f.model, LoraSpec{{"attn", "mlp", "mod"}, 4, 4});
  ASSERT_TRUE(a.ok()) << a.status().message();
  EXPECT_GT((*a)->modules().size(), 8u);
  LoraRuntime rt(f.model);
  ASSERT_TRUE(rt.add(*a, 1.0).ok());
  rt.apply();
  EXPECT_TRUE(torch::equal(forward_fixed(f.model, *f.tok, 16), before));
  // Non-zero B changes the output; removing the adapter restores the base exactly.
  randomize_up(**a, 3);
  rt.apply();
  EXPECT_GT((forward_fixed(f.model, *f.tok, 16) - before).abs().max().item<double>(), 1e-4);
  rt.remove();
  EXPECT_TRUE(torch::equal(forward_fixed(f.model, *f.tok, 16), before));
  EXPECT_FALSE(LoraAdapter::create(f.model, LoraSpec{{"bogus"}}).ok());
}

TEST(Lora, RankDropoutDropsWholeRankComponentsPerStepAndAveragesToTheAdapter) {
  auto f = make_fixture("lora_dropout");
  auto a = *LoraAdapter::create(f.model, LoraSpec{{"attn"}, 8, 8});
  randomize_up(*a, 5);
  const auto& m0 = a->modules().front();
  auto* lin = f.model->named_modules()[m0.name]->as<torch::nn::LinearImpl>();
  ASSERT_NE(lin, nullptr);
  auto weight = [&] { return lin->weight.detach().clone(); };
  LoraRuntime rt(f.model);
  ASSERT_TRUE(rt.add(a, 1.0).ok());
  rt.freeze_base();
  rt.apply();
  auto full = weight();
  rt.remove();
  auto base = weight();
  auto delta = full - base;  // scale * B A
  ASSERT_GT(delta.abs().max().item<double>(), 1e-4);
  rt.set_rank_dropout(0.5, 11);
  rt.apply(3);
  auto d3 = weight() - base;
  rt.apply(3);
  EXPECT_TRUE(torch::equal(weight() - base, d3));  // the mask depends only on (seed, step)
  rt.apply(4);
  EXPECT_FALSE(torch::allclose(weight() - base, d3));
  // d3 = scale * B diag(keep) A / (1 - p) with keep in {0,1}^r: solve for keep from each column of
  // B.
  auto BA = [&](const torch::Tensor& keep) {
    return (m0.scale() / 0.5) * (m0.up * keep.unsqueeze(0)).mm(m0.down);
  };
  double best = 1e9;
  for (int bits = 0; bits < (1 << m0.rank()); ++bits) {
    auto keep = torch::zeros({m0.rank()});
    for (int r = 0; r < m0.rank(); ++r) keep[r] = (bits >> r) & 1;
    best = std::min(best, (BA(keep) - d3).abs().max().item<double>());
  }
  EXPECT_LT(best, 1e-6) << "the dropped delta is not B diag(mask) A / (1 - p)";
  // Without grad (sampling, validation) or without a step: the whole adapter.
  {
    torch::NoGradGuard ng;
    rt.apply(3);
    EXPECT_TRUE(torch::allclose(weight() - base, delta, 1e-6, 1e-6));
  }
  rt.apply();
  EXPECT_TRUE(torch::allclose(weight() - base, delta, 1e-6, 1e-6));
  // Over many steps the dropped deltas average to the adapter (unbiased).
  auto mean = torch::zeros_like(delta);
  const int n = 400;
  for (int s = 0; s < n; ++s) {
    rt.apply(s);
    mean += (weight() - base) / n;
  }
  EXPECT_LT((mean - delta).abs().max().item<double>(), 0.15 * delta.abs().max().item<double>());
}

TEST(Lora, TrainingChangesOnlyTheAdapterAndMergeEqualsRuntime) {
  auto f = make_fixture("lora_train");
  std::vector<torch::Tensor> base_copy;
  for (auto& p : f.model->parameters()) base_copy.push_back(p.detach().clone());
  auto a = *LoraAdapter::create(f.model, LoraSpec{{"attn", "mlp"}, 4, 8});
  LoraRuntime rt(f.model);
  ASSERT_TRUE(rt.add(a, 1.0).ok());
  rt.freeze_base();
  GenTrainConfig tc = test::short_run("lora_train_run", 6, 8, 1e-2, 1);
  TrainTarget target;
  target.params = a->parameters();
  target.before_forward = [&rt](int64_t step) { rt.apply(step); };
  target.save = [&](const std::string& p, int64_t step, const std::string&) {
    return a->save(p, f.base_hash, step);
  };
  target.load = [](const std::string&) { return Status::ok_status(); };
  auto r = train_generator(tc, f.model, *f.tok, f.imgs, nullptr, &target);
  ASSERT_TRUE(r.ok()) << r.status().message();
  auto params = f.model->parameters();
  for (size_t i = 0; i < params.size(); ++i)
    ASSERT_TRUE(torch::equal(params[i], base_copy[i])) << "base tensor " << i << " changed";
  double up_norm = 0;
  for (auto& m : a->modules()) up_norm += m.up.abs().sum().item<double>();
  EXPECT_GT(up_norm, 0) << "LoRA B stayed zero: nothing was trained";
  // The run's adapter file holds only LoRA tensors.
  auto st = *load_safetensors(tc.out + "/checkpoint.safetensors");
  for (auto& [k, t] : st.tensors)
    EXPECT_TRUE(k.find(".lora_down.weight") != std::string::npos ||
                k.find(".lora_up.weight") != std::string::npos ||
                k.find(".alpha") != std::string::npos)
        << k;
  // Two adapters at run time (strengths 1 and 0.5) == both merged into a checkpoint.
  std::string dir = test::tmp_dir("lora_merge");
  ASSERT_TRUE(a->save(dir + "/a.safetensors", f.base_hash, 6).ok());
  auto b = *LoraAdapter::create(f.model, LoraSpec{{"mod"}, 2, 2, {}, 9});
  randomize_up(*b, 4);
  ASSERT_TRUE(b->save(dir + "/b.safetensors", f.base_hash, 0).ok());
  LoraRuntime rt2(f.model);
  ASSERT_TRUE(rt2.add(*LoraAdapter::load(dir + "/a.safetensors", f.model, f.base_hash), 1.0).ok());
  ASSERT_TRUE(rt2.add(*LoraAdapter::load(dir + "/b.safetensors", f.model, f.base_hash), 0.5).ok());
  {
    torch::NoGradGuard ng;
    rt2.apply();
  }
  auto runtime_out = forward_fixed(f.model, *f.tok, 16);
  rt2.remove();
  ASSERT_TRUE(merge_lora(f.base_path,
                         {{dir + "/a.safetensors", 1.0}, {dir + "/b.safetensors", 0.5}},
                         dir + "/merged.safetensors")
                  .ok());
  auto merged = load_generator(dir + "/merged.safetensors");
  ASSERT_TRUE(merged.ok()) << merged.status().message();
  auto merged_out = forward_fixed(merged->model, *merged->tok, 16);
  EXPECT_LE((merged_out - runtime_out).abs().max().item<double>(), 1e-5);
  EXPECT_GT((merged_out - forward_fixed(f.model, *f.tok, 16)).abs().max().item<double>(),
            1e-4);  // not the base
}

TEST(Lora, AdapterIsSmallAndAMismatchedBaseIsRefused) {
  // Rank 8 on attention + MLP of the small preset: adapter file <= 5% of the base checkpoint.
  auto corpus =
      std::vector<std::string>{"dermoscopic image of a melanoma", "a benign nevus on the back"};
  auto tok = *Tokenizer::train(corpus, {64, "bpe", 0});
  MMDiTConfig mc = MMDiTConfig::preset("small");
  mc.vocab_size = tok.vocab_size();
  MMDiT small(mc);
  std::string dir = test::tmp_dir("lora_size");
  ASSERT_TRUE(save_generator(dir + "/base.safetensors", small, tok, 0, FlowConfig{}, "raw").ok());
  auto a = *LoraAdapter::create(small, LoraSpec{{"attn", "mlp"}, 8, 8});
  ASSERT_TRUE(a->save(dir + "/a.safetensors", *hash_file(dir + "/base.safetensors"), 0).ok());
  double ratio = static_cast<double>(std::filesystem::file_size(dir + "/a.safetensors")) /
                 std::filesystem::file_size(dir + "/base.safetensors");
  EXPECT_LE(ratio, 0.05) << "adapter/base size ratio " << ratio;
  EXPECT_GT(ratio, 0.001);
  // Wrong base hash -> refused with a message naming both hashes.
  auto wrong = LoraAdapter::load(dir + "/a.safetensors", small, "0000000000000000");
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.status().message().find("refusing"), std::string::npos)
      << wrong.status().message();
  // Right hash but another architecture (tiny) -> shapes or modules do not fit.
  auto f = make_fixture("lora_size_tiny");
  auto shapes = LoraAdapter::load(dir + "/a.safetensors", f.model, "");
  ASSERT_FALSE(shapes.ok());
  EXPECT_TRUE(shapes.status().message().find("do not fit") != std::string::npos ||
              shapes.status().message().find("does not exist") != std::string::npos)
      << shapes.status().message();
  // merge refuses too.
  EXPECT_FALSE(
      merge_lora(f.base_path, {{dir + "/a.safetensors", 1.0}}, dir + "/m.safetensors").ok());
}

TEST(Lora, PerDiagnosisAdapterMakesThatDiagnosisAsTheMergedGeneratorAndTheRestAsTheBase) {
  auto f = make_fixture("lora_dx");
  std::string dir = test::tmp_dir("lora_dx_files");
  auto a = *LoraAdapter::create(f.model, LoraSpec{{"attn", "mlp"}, 4, 4});
  randomize_up(*a, 3);
  ASSERT_TRUE(a->save(dir + "/a.safetensors", f.base_hash, 0).ok());
  ASSERT_TRUE(
      merge_lora(f.base_path, {{dir + "/a.safetensors", 1.0}}, dir + "/merged.safetensors").ok());
  auto base = load_generator(f.base_path);
  auto merged = load_generator(dir + "/merged.safetensors");
  ASSERT_TRUE(base.ok() && merged.ok());
  SynthPlanConfig pc;
  pc.total = 10;
  pc.balance = "dx";
  auto plan = plan_synthetic(f.ps.records, {}, pc, nullptr);
  LF_ASSERT_OK(plan);
  std::map<std::string, int> per_dx;
  for (const auto& it : *plan) per_dx[it.dx]++;
  ASSERT_GE(per_dx.size(), 2u);
  const std::string dx = per_dx.begin()->first;  // the diagnosis that gets the adapter
  const auto before = forward_fixed(base->model, *base->tok, 16);
  auto run = [&](LoadedGenerator& g, const std::map<std::string, std::string>& adapters,
                 const std::string& name) -> Result<std::string> {
    SynthGenConfig sc;
    sc.gen.sampler.steps = 4;
    sc.gen.batch = 3;  // batches of the plan's order would mix the diagnoses
    sc.gen.cfg_scale = 2.0;
    sc.out = test::tmp_dir(name);
    LF_ASSIGN_OR_RETURN(auto by_dx, use_dx_adapters(g, adapters, *plan, sc));
    if (!adapters.empty()) {
      EXPECT_EQ(by_dx[dx]["hash"], a->hash);
      EXPECT_EQ(by_dx[dx]["file"], dir + "/a.safetensors");
    }
    LF_ASSIGN_OR_RETURN(int64_t made, generate_synthetic(g, *plan, sc, nlohmann::json::object()));
    EXPECT_EQ(made, pc.total);
    return sc.out;
  };
  auto with = run(*base, {{dx, dir + "/a.safetensors"}}, "lora_dx_with");
  LF_ASSERT_OK(with);
  // The base is restored after the set: the same forward as before it.
  EXPECT_TRUE(torch::equal(forward_fixed(base->model, *base->tok, 16), before));
  auto plain = run(*base, {}, "lora_dx_plain");
  auto all_merged = run(*merged, {}, "lora_dx_merged");
  LF_ASSERT_OK(plain);
  LF_ASSERT_OK(all_merged);
  auto pixels = [](const std::string& file) {
    auto m = read_image(file);
    EXPECT_TRUE(m.ok()) << file;
    cv::Mat d;
    m->convertTo(d, CV_64F);
    return d;
  };
  auto max_diff = [&](const std::string& x, const std::string& y) {
    double mx = 0;
    cv::minMaxLoc(cv::abs(pixels(x) - pixels(y)), nullptr, &mx);
    return mx;
  };
  auto recs = *read_jsonl(*with + "/manifest.jsonl");
  ASSERT_EQ(recs.size(), static_cast<size_t>(pc.total));
  int variant = 0;
  double moved = 0;
  for (const auto& j : recs) {
    const std::string file = j["file"];
    if (j["dx"] == dx) {
      ++variant;
      EXPECT_EQ(j["adapter_hash"], a->hash + ":" + std::to_string(1.0)) << file;
      // As the merged generator makes it (up to 8-bit rounding of float noise), not as the base.
      EXPECT_LE(max_diff(*with + "/" + file, *all_merged + "/" + file), 1.0) << file;
      moved += max_diff(*with + "/" + file, *plain + "/" + file);
    } else {
      EXPECT_EQ(j["adapter_hash"], "") << file;
      EXPECT_LE(max_diff(*with + "/" + file, *plain + "/" + file), 1.0) << file;
    }
  }
  EXPECT_EQ(variant, per_dx[dx]);
  EXPECT_GT(moved / variant, 8.0) << "the adapter did not change its diagnosis' images";
  // Resume: a lost variant image is remade with the adapter, identically; resuming without the
  // adapter is refused, and the set is left as it was.
  std::string lost;
  for (const auto& j : recs)
    if (j["dx"] == dx) lost = j["file"];
  const auto kept = *read_file(*with + "/" + lost);
  std::filesystem::remove(*with + "/" + lost);
  SynthGenConfig sc;
  sc.gen.sampler.steps = 4;
  sc.gen.batch = 3;
  sc.gen.cfg_scale = 2.0;
  sc.out = *with;
  const auto manifest = *read_file(*with + "/manifest.jsonl");
  auto refused = generate_synthetic(*base, *plan, sc, nlohmann::json::object());
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("refusing to mix two generators"), std::string::npos)
      << refused.status().message();
  EXPECT_EQ(*read_file(*with + "/manifest.jsonl"), manifest);
  LF_ASSERT_OK(use_dx_adapters(*base, {{dx, dir + "/a.safetensors"}}, *plan, sc));
  auto again = generate_synthetic(*base, *plan, sc, nlohmann::json::object());
  LF_ASSERT_OK(again);
  EXPECT_EQ(*again, 1);
  EXPECT_EQ(*read_file(*with + "/" + lost), kept);
  // A diagnosis the plan has no image of, an adapter of another base, malformed flags: errors.
  SynthGenConfig other;
  auto typo = use_dx_adapters(*base, {{"DX_TYPO", dir + "/a.safetensors"}}, *plan, other);
  ASSERT_FALSE(typo.ok());
  EXPECT_NE(typo.status().message().find("DX_TYPO"), std::string::npos);
  EXPECT_NE(typo.status().message().find(dx), std::string::npos) << typo.status().message();
  LoadedGenerator renamed = *load_generator(dir + "/merged.safetensors");
  auto foreign = use_dx_adapters(renamed, {{dx, dir + "/a.safetensors"}}, *plan, other);
  ASSERT_FALSE(foreign.ok());
  EXPECT_NE(foreign.status().message().find("refusing"), std::string::npos)
      << foreign.status().message();
  auto flags = parse_dx_adapter_flags({"df=x.safetensors:0.5", "vasc=y.safetensors"});
  LF_ASSERT_OK(flags);
  EXPECT_EQ(flags->at("df"), "x.safetensors:0.5");
  EXPECT_FALSE(parse_dx_adapter_flags({"x.safetensors"}).ok());
  EXPECT_FALSE(parse_dx_adapter_flags({"df=a", "df=b"}).ok());
}

TEST(Lora, ShippedDiagnosisAdaptersFitTheShippedGeneratorAndMoveOnlyWhatTheyAreAppliedTo) {
  const std::string base = test::src_dir() + "/models/lesionflow_ham64.safetensors";
  auto g = load_generator(base);
  ASSERT_TRUE(g.ok()) << g.status().message();
  GenerateConfig gc;
  gc.sampler.method = SamplerMethod::kDpm2m;
  gc.sampler.steps = 8;
  gc.cfg_scale = 1.0;
  const std::vector<uint64_t> seeds = {3, 4};
  struct Shipped {
    std::string dx;
    std::vector<std::string> prompts;
  };
  const std::vector<Shipped> shipped = {
      {"df",
       {"dermoscopy of a benign dermatofibroma on the lower extremity of a 45-year-old woman; "
        "small lesion, symmetric, smooth sharp border, two colours: light brown and white",
        "dermoscopy of a benign dermatofibroma on the back of a 60-year-old man; medium-sized "
        "lesion, symmetric, smooth sharp border, one colour: light brown"}},
      {"bcc",
       {"dermoscopy of a malignant basal cell carcinoma on the back of a 70-year-old man; "
        "medium-sized lesion, asymmetric in one axis, two colours: red and blue-gray",
        "dermoscopic image of a malignant basal cell carcinoma on the face of a 65-year-old "
        "woman; small lesion, symmetric, smooth sharp border, one colour: light brown"}},
  };
  for (const auto& s : shipped) {
    SCOPED_TRACE(s.dx);
    const std::string adapter =
        test::src_dir() + "/models/lesionflow_ham64_lora_" + s.dx + ".safetensors";
    auto a = LoraAdapter::load(adapter, g->model, g->hash);
    ASSERT_TRUE(a.ok()) << a.status().message();  // made for this base, shapes fit
    EXPECT_EQ((*a)->modules().size(), 53u);       // attention, MLP and modulation
    auto plain = generate_images(*g, s.prompts, seeds, gc);
    {
      LoraRuntime rt(g->model);
      ASSERT_TRUE(rt.add(*a, 1.0).ok());
      torch::NoGradGuard ng;
      rt.apply();
      auto adapted = generate_images(*g, s.prompts, seeds, gc);
      // Images in [-1, 1]: the adapter moves them (on the 625 images of its diagnosis in the HAM
      // set, by 5.7 of 255 grey levels for df and 2.5 for bcc) without changing what is drawn.
      const double moved = (adapted - plain).abs().mean().item<double>() * 127.5;
      EXPECT_GT(moved, 1.0);
      EXPECT_LT(moved, 30.0);
    }
    // Out of scope, the base is back: the same images as before.
    EXPECT_TRUE(torch::allclose(generate_images(*g, s.prompts, seeds, gc), plain, 0, 1e-6));
  }
}
