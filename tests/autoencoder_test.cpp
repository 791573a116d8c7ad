// Autoencoder, latent generator and bf16 precision tests.
#include "models/autoencoder.h"

#include <fstream>
#include <opencv2/imgproc.hpp>

#include "core/bf16_shadow.h"
#include "data/images_torch.h"
#include "lesionflow/captions.h"
#include "lesionflow/io.h"
#include "lesionflow/jsonl.h"
#include "lesionflow/runtime.h"
#include "models/checkpoint.h"
#include "pipeline/ae_runs.h"
#include "synth/synth.h"
#include "test_util.h"
#include "train/autoencoder.h"
#include "train/common.h"
#include "train/generator.h"
#include "train_util.h"

namespace lf {
using torch::Tensor;

namespace {
struct Phantoms {
  PreparedSet ps;
  std::vector<const uint8_t*> px;
  std::vector<std::string> captions;
};
Phantoms phantoms(int n, int size, uint64_t seed) {
  Phantoms p;
  auto ds = load_dataset("phantom:" + std::to_string(n), {}, seed);
  PrepareStats st;
  p.ps = *prepare(*ds, PrepareConfig{size, FitMode::kCrop, 2}, &st);
  for (int64_t i = 0; i < p.ps.count(); ++i) {
    p.px.push_back(p.ps.image(i));
    p.captions.push_back(compose_caption(facts_from_record(p.ps.records[i]), 0));
  }
  return p;
}
AEConfig small_ae(int size) {
  AEConfig c;
  c.image_size = size;
  c.widths = {16, 32, 64};
  c.latent_channels = 4;
  return c;
}
// A short GAN-free training run without validation or intermediate checkpoints.
AETrainConfig quick_ae_training(int64_t steps, int batch, int64_t warmup, const std::string& out) {
  AETrainConfig tc;
  tc.steps = steps;
  tc.batch = batch;
  tc.lr = 1e-3;
  tc.warmup = warmup;
  tc.gan_weight = 0;
  tc.val_every = 0;
  tc.ckpt_every = 0;
  tc.out = out;
  return tc;
}
// A small autoencoder trained for 150 steps on the phantoms, saved as DIR/ae.safetensors (the init
// of the decoder-only tests).
Autoencoder base_autoencoder(const std::string& dir, const Phantoms& p, uint64_t torch_seed) {
  torch::manual_seed(torch_seed);
  Autoencoder ae(small_ae(32));
  EXPECT_TRUE(
      train_autoencoder(quick_ae_training(150, 16, 10, dir + "/base"), ae, p.px, p.px, 32).ok());
  EXPECT_TRUE(save_autoencoder(dir + "/ae.safetensors", ae, 150).ok());
  return ae;
}
struct PrecisionGuard {  // restores fp32 after a test that switches to bf16
  ~PrecisionGuard() { set_compute_precision(Precision::kFP32); }
};
}  // namespace

TEST(Autoencoder, ShapesNormalisationAndDihedralLatents) {
  torch::manual_seed(0);
  Autoencoder ae(small_ae(32));
  EXPECT_EQ(ae->config().factor(), 4);
  EXPECT_EQ(ae->config().latent_size(), 8);
  auto x = torch::rand({3, 3, 32, 32}) * 2 - 1;
  auto [m, lv] = ae->encode_posterior(x);
  EXPECT_EQ(m.sizes(), (std::vector<int64_t>{3, 4, 8, 8}));
  EXPECT_EQ(ae->decode_raw(m).sizes(), x.sizes());
  // encode/decode apply the stored shift and scale exactly inversely.
  ae->config().latent_shift = 0.3;
  ae->config().latent_scale = 2.0;
  torch::NoGradGuard ng;
  auto z = ae->encode(x);
  EXPECT_TRUE(torch::allclose(z, (m - 0.3) * 2.0, 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(ae->decode(z), ae->decode_raw(m).clamp(-1, 1), 1e-4, 1e-4));
  // The dihedral group: 8 distinct transforms, identity at k = 0.
  auto img = torch::arange(16, torch::kFloat32).view({1, 1, 4, 4});
  EXPECT_TRUE(torch::equal(dihedral(img, 0), img));
  for (int a = 0; a < 8; ++a)
    for (int b = a + 1; b < 8; ++b)
      EXPECT_FALSE(torch::equal(dihedral(img, a), dihedral(img, b))) << a << " " << b;
  // Cached latents are the encodings of the transformed images.
  auto p = phantoms(4, 32, 1);
  auto lat = encode_dihedral_latents(ae, p.px, 32);
  EXPECT_EQ(lat.sizes(), (std::vector<int64_t>{4, 8, 4, 8, 8}));
  EXPECT_EQ(lat.scalar_type(), torch::kFloat16);
  auto xs = images_to_tensor(p.px, 32);
  auto want = ae->encode(dihedral(xs, 5));
  EXPECT_TRUE(torch::allclose(lat.select(1, 5).to(torch::kFloat32), want, 1e-2, 1e-2));
}

TEST(Autoencoder, PsnrAndSsimKnownAnswers) {
  auto a = torch::zeros({2, 3, 16, 16});
  EXPECT_NEAR(ssim(a, a), 1.0, 1e-6);
  // A uniform offset of 0.1 on [-1,1] is 0.05 on [0,1]: MSE 0.0025 -> 26.02 dB.
  EXPECT_NEAR(psnr(a + 0.1, a), 26.0206, 1e-3);
  EXPECT_LT(ssim(torch::rand({2, 3, 16, 16}) * 2 - 1, a), 0.1);
}

TEST(AutoencoderSlow, RoundTripOnPhantomsAfterShortTraining) {
  auto train = phantoms(192, 32, 3), held = phantoms(32, 32, 77);
  torch::manual_seed(0);
  Autoencoder ae(small_ae(32));
  const double before = evaluate_autoencoder(ae, held.px, 32).psnr;
  AETrainConfig tc = quick_ae_training(500, 16, 20, test::tmp_dir("ae_roundtrip"));
  auto r = train_autoencoder(tc, ae, train.px, held.px, 32);
  ASSERT_TRUE(r.ok()) << r.status().message();
  // Held-out phantoms (other seeds) after 500 steps: measured 25.1 dB, SSIM 0.67 (untrained:
  // 12.1 dB); the bounds leave about 1 dB / 0.07 for thread-count and library differences.
  std::printf("phantom AE: PSNR %.2f dB (before %.2f), SSIM %.3f\n", r->val_psnr, before,
              r->val_ssim);
  EXPECT_GT(r->val_psnr, 24.0) << "before " << before;
  EXPECT_GT(r->val_ssim, 0.6);
  EXPECT_LT(before, 15.0);
  // The checkpoint reloads with its measured latent normalisation: unit-variance latents.
  auto la = load_autoencoder(tc.out + "/ae.safetensors");
  ASSERT_TRUE(la.ok()) << la.status().message();
  torch::NoGradGuard ng;
  auto z = la->model->encode(images_to_tensor(train.px, 32));
  EXPECT_NEAR(z.std().item<double>(), 1.0, 0.1);
  EXPECT_NEAR(z.mean().item<double>(), 0.0, 0.1);
  EXPECT_NEAR(evaluate_autoencoder(la->model, held.px, 32).psnr, r->val_psnr, 1e-3);
}

TEST(Autoencoder, LatentGeneratorRefusesAnotherAutoencoder) {
  auto dir = test::tmp_dir("ae_refuse");
  auto p = phantoms(8, 32, 2);
  auto tok = std::make_shared<Tokenizer>(*Tokenizer::train(p.captions, {128, "bpe", 0}));
  torch::manual_seed(1);
  Autoencoder ae1(small_ae(32));
  torch::manual_seed(2);
  Autoencoder ae2(small_ae(32));
  ASSERT_TRUE(save_autoencoder(dir + "/ae.safetensors", ae1, 0).ok());
  ASSERT_TRUE(save_autoencoder(dir + "/other_ae.safetensors", ae2, 0).ok());
  auto h1 = *hash_file(dir + "/ae.safetensors");
  MMDiT m(test::latent_micro(tok->vocab_size()));
  FlowConfig fc;
  ASSERT_TRUE(save_generator(dir + "/gen.safetensors", m, *tok, 0, fc, "ema",
                             {{"ae", ae_metadata(h1, "ae.safetensors")}})
                  .ok());
  // Found by name beside the checkpoint, hash checked.
  auto ok = load_generator(dir + "/gen.safetensors");
  ASSERT_TRUE(ok.ok()) << ok.status().message();
  EXPECT_TRUE(ok->latent());
  auto imgs = generate_images(*ok, {p.captions[0]}, {7},
                              GenerateConfig{SamplerConfig{SamplerMethod::kEuler, 2, 1.0}, 1.0});
  EXPECT_EQ(imgs.sizes(), (std::vector<int64_t>{1, 3, 32, 32}));  // decoded to pixels
  // Another autoencoder: refused with both hashes named.
  auto bad = load_generator(dir + "/gen.safetensors", dir + "/other_ae.safetensors");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("wrong autoencoder"), std::string::npos)
      << bad.status().message();
  EXPECT_NE(bad.status().message().find(h1), std::string::npos);
  // Missing: the error says which file and how to pass one.
  std::filesystem::remove(dir + "/ae.safetensors");
  auto missing = load_generator(dir + "/gen.safetensors");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("--ae"), std::string::npos)
      << missing.status().message();
}

TEST(Autoencoder, DecoderOnlyFineTuneKeepsTheLatentSpaceAndServesItsGenerator) {
  auto dir = test::tmp_dir("ae_decoder_only");
  auto p = phantoms(64, 32, 5);
  torch::manual_seed(4);
  Autoencoder ae0(small_ae(32));
  ae0->config().latent_shift = 0.25;
  ae0->config().latent_scale = 1.5;
  ASSERT_TRUE(save_autoencoder(dir + "/ae.safetensors", ae0, 0).ok());
  const std::string h0 = *hash_file(dir + "/ae.safetensors");
  auto init = load_autoencoder(dir + "/ae.safetensors");
  ASSERT_TRUE(init.ok());
  AETrainConfig tc = quick_ae_training(40, 8, 4, dir + "/ft");
  tc.decoder_only = true;
  // Without the init's latent hash the run refuses to start.
  EXPECT_FALSE(train_autoencoder(tc, init->model, p.px, p.px, 32).ok());
  tc.latent_hash = init->latent_hash;
  const double before = evaluate_autoencoder(init->model, p.px, 32).psnr;
  auto r = train_autoencoder(tc, init->model, p.px, p.px, 32);
  ASSERT_TRUE(r.ok()) << r.status().message();
  auto ft = load_autoencoder(tc.out + "/ae.safetensors");
  ASSERT_TRUE(ft.ok()) << ft.status().message();
  EXPECT_NE(ft->hash, h0);
  EXPECT_EQ(ft->latent_hash, h0);
  EXPECT_EQ(ft->model->config().latent_shift, 0.25);  // not re-measured
  EXPECT_EQ(ft->model->config().latent_scale, 1.5);
  auto p0 = ae0->named_parameters(), p1 = ft->model->named_parameters();
  int changed_dec = 0;
  for (const auto& kv : p0) {
    const bool same = torch::equal(kv.value(), p1[kv.key()]);
    if (kv.key().rfind("encoder.", 0) == 0) {
      EXPECT_TRUE(same) << kv.key();
    } else {
      changed_dec += !same;
    }
  }
  EXPECT_GT(changed_dec, 0);
  EXPECT_GT(evaluate_autoencoder(ft->model, p.px, 32).psnr, before + 1.0);  // the decoder learned
  // A latent generator of the init decodes with the fine-tuned file; an unrelated AE is refused.
  auto tok = std::make_shared<Tokenizer>(*Tokenizer::train(p.captions, {128, "bpe", 0}));
  MMDiT m(test::latent_micro(tok->vocab_size()));
  ASSERT_TRUE(save_generator(dir + "/gen.safetensors", m, *tok, 0, FlowConfig{}, "ema",
                             {{"ae", ae_metadata(h0, "ae.safetensors")}})
                  .ok());
  auto g = load_generator(dir + "/gen.safetensors", tc.out + "/ae.safetensors");
  ASSERT_TRUE(g.ok()) << g.status().message();
  EXPECT_EQ(g->ae_hash, h0);
}

// --latent-noise: a decoder fine-tuned on noised latents maps noised latents closer to the clean
// image than one fine-tuned on exact latents (same init, data and steps).
// Pooled over two base autoencoders: with one, the outcome rests on a single training trajectory,
// which float rounding in the optimizer can move (see GeneratorLatentsPullTheirDecodesTowards...).
// Evaluated at the noise the decoder trained on (1.0). Until the twenty-sixth sitting it was 0.6,
// where the margin was ~5%: on an AVX-512 machine the pooled ratio was 0.9507 against the 0.95
// threshold (at 1.0: 0.88; at 0.3 the noise-trained decoder is 3% worse, as it should be allowed
// to be).
TEST(Autoencoder, LatentNoiseTeachesTheDecoderToCorrectNoisedLatents) {
  auto dir = test::tmp_dir("ae_latent_noise");
  auto p = phantoms(48, 32, 6);
  auto x = images_to_tensor(p.px, 32);
  auto noised_error = [&](double noise) {
    auto init = load_autoencoder(dir + "/ae.safetensors");
    EXPECT_TRUE(init.ok());
    AETrainConfig tc = quick_ae_training(80, 16, 4, dir + "/n" + std::to_string(noise));
    tc.decoder_only = true;
    tc.latent_hash = init->latent_hash;
    tc.latent_noise = noise;
    auto r = train_autoencoder(tc, init->model, p.px, p.px, 32);
    EXPECT_TRUE(r.ok()) << r.status().message();
    torch::NoGradGuard ng;
    init->model->eval();
    auto z = init->model->encode(x);
    auto gen = at::detail::createCPUGenerator(11);
    auto zn = z + 1.0 * torch::randn(z.sizes(), gen, torch::kFloat32);
    return (init->model->decode(zn) - x).abs().mean().item<double>();
  };
  double exact = 0, noised = 0;
  for (uint64_t seed : {5, 6}) {
    base_autoencoder(dir, p, seed);
    exact += noised_error(0.0);
    noised += noised_error(1.0);
  }
  RecordProperty("l1_exact_trained", std::to_string(exact / 2));
  RecordProperty("l1_noise_trained", std::to_string(noised / 2));
  EXPECT_LT(noised, 0.95 * exact) << "L1 on noised latents (mean of 2 bases): exact-trained "
                                  << exact / 2 << ", noise-trained " << noised / 2;
}

// synth --save-latents writes each image's latent (which decodes to that image), ae train
// --gen-latents reads them back, refuses another latent space, and feeds them to the PatchGAN.
TEST(Autoencoder, SavedGeneratorLatentsDecodeToTheirImagesAndTrainTheDecoder) {
  auto dir = test::tmp_dir("ae_gen_latents");
  auto p = phantoms(24, 32, 7);
  torch::manual_seed(6);
  Autoencoder ae0(small_ae(32));
  calibrate_latents(ae0, p.px, 32);
  ASSERT_TRUE(save_autoencoder(dir + "/ae.safetensors", ae0, 0).ok());
  const std::string h0 = *hash_file(dir + "/ae.safetensors");
  auto tok = std::make_shared<Tokenizer>(*Tokenizer::train(p.captions, {128, "bpe", 0}));
  MMDiT m(test::latent_micro(tok->vocab_size()));
  ASSERT_TRUE(save_generator(dir + "/gen.safetensors", m, *tok, 0, FlowConfig{}, "ema",
                             {{"ae", ae_metadata(h0, "ae.safetensors")}})
                  .ok());
  auto g = load_generator(dir + "/gen.safetensors");
  ASSERT_TRUE(g.ok()) << g.status().message();
  SynthPlanConfig pc;
  pc.total = 5;
  nlohmann::json summary;
  auto plan = plan_synthetic(p.ps.records, {}, pc, &summary);
  LF_ASSERT_OK(plan);
  SynthGenConfig sc;
  sc.gen.sampler.steps = 3;
  sc.gen.batch = 2;
  sc.save_latents = true;
  sc.out = dir + "/synth";
  auto made = generate_synthetic(*g, *plan, sc, summary);
  LF_ASSERT_OK(made);
  ASSERT_EQ(*made, 5);
  for (const auto& j : *read_jsonl(sc.out + "/manifest.jsonl")) {
    auto st = load_safetensors(sc.out + "/latents/" + j["id"].get<std::string>() + ".safetensors");
    LF_ASSERT_OK(st);
    EXPECT_EQ(st->metadata["latent_hash"], h0);
    auto z = from_raw(st->tensors.at("latent"), "latent");
    LF_ASSERT_OK(z);
    ASSERT_EQ(z->sizes(), (std::vector<int64_t>{4, 8, 8}));
    torch::NoGradGuard ng;
    auto decoded = tensor_to_images(g->ae->decode(z->unsqueeze(0)));
    auto png = read_image(sc.out + "/" + j["file"].get<std::string>());
    LF_ASSERT_OK(png);
    cv::Mat rgb;
    cv::cvtColor(*png, rgb, cv::COLOR_BGR2RGB);
    int worst = 0;
    for (size_t i = 0; i < decoded.size(); ++i)
      worst = std::max(worst, std::abs(int(decoded[i]) - int(rgb.data[i])));
    EXPECT_LE(worst, 1) << j["id"];  // the saved latent is the image's, up to rounding
  }
  auto zs = load_saved_latents(sc.out, h0);
  LF_ASSERT_OK(zs);
  EXPECT_EQ(zs->size(0), 5);
  auto wrong = load_saved_latents(sc.out, "another");
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.status().message().find(".safetensors: a latent of the latent space " + h0),
            std::string::npos)
      << wrong.status().message();
  EXPECT_FALSE(load_saved_latents(dir, h0).ok());  // no latents there
  // A pixel-space generator has no latents to save.
  LoadedGenerator pixel = *g;
  pixel.ae = Autoencoder{nullptr};
  sc.out = dir + "/pixel";
  auto px = generate_synthetic(pixel, *plan, sc, summary);
  ASSERT_FALSE(px.ok());
  EXPECT_NE(px.status().message().find("--save-latents"), std::string::npos);
  // Training: refused unless decoder-only; then the discriminator sees their decodes.
  AETrainConfig tc = quick_ae_training(30, 8, 3, dir + "/ft");
  tc.gan_weight = 0.1;
  tc.gan_start = 0;
  tc.gen_latents = *zs;
  tc.gen_latents_source = sc.out;
  auto init = load_autoencoder(dir + "/ae.safetensors");
  LF_ASSERT_OK(init);
  tc.latent_hash = init->latent_hash;
  EXPECT_FALSE(train_autoencoder(tc, init->model, p.px, p.px, 32).ok());
  tc.decoder_only = true;
  auto r = train_autoencoder(tc, init->model, p.px, p.px, 32);
  ASSERT_TRUE(r.ok()) << r.status().message();
  std::ifstream in(tc.out + "/metrics.jsonl");
  std::string line;
  int logged = 0;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    if (!j.contains("gan_gen")) continue;
    EXPECT_GT(j["gan_gen"].get<double>(), 0.0);
    ++logged;
  }
  EXPECT_GT(logged, 0);
}

// The point of --gen-latents: latents with a systematic error (here an offset, as a generator's
// bias would be) decode to images the discriminator learns to reject, and the decoder learns to
// make them look like the real images; without them it does not.
// Pooled over two base autoencoders (torch seeds 9 and 10): the effect's size depends on the
// base's training trajectory. Measured (seventeenth sitting, fused AdamW step) per base: plain
// 0.49 / 0.79, with --gen-latents 0.42 / 0.28 (ratios 0.86 / 0.35; libtorch's unfused step gave
// 0.41 / 0.40, and bases 11 and 12 0.35-0.37 with either step).
TEST(Autoencoder, GeneratorLatentsPullTheirDecodesTowardsRealImages) {
  auto dir = test::tmp_dir("ae_gen_pull");
  auto p = phantoms(48, 32, 8);
  auto x = images_to_tensor(p.px, 32);
  Tensor biased;
  auto colour_gap = [&](bool with_gen) {
    auto init = load_autoencoder(dir + "/ae.safetensors");
    EXPECT_TRUE(init.ok());
    AETrainConfig tc = quick_ae_training(200, 16, 10, dir + (with_gen ? "/gen" : "/plain"));
    tc.lr = 5e-4;
    tc.decoder_only = true;
    tc.latent_hash = init->latent_hash;
    tc.gan_weight = 0.1;
    tc.gan_start = 0;
    if (with_gen) {
      tc.gen_latents = biased;
      tc.gen_weight = 1.0;
    }
    auto r = train_autoencoder(tc, init->model, p.px, p.px, 32);
    EXPECT_TRUE(r.ok()) << r.status().message();
    torch::NoGradGuard ng;
    init->model->eval();
    auto y = init->model->decode(biased);
    // per-channel mean colour of the set, decoded biased latents vs real
    return (y.mean({0, 2, 3}) - x.mean({0, 2, 3})).abs().sum().item<double>();
  };
  double plain = 0, pulled = 0;
  for (uint64_t seed : {9, 10}) {
    Autoencoder ae0 = base_autoencoder(dir, p, seed);
    {
      torch::NoGradGuard ng;
      ae0->eval();
      biased = ae0->encode(x) + 0.75;
    }
    plain += colour_gap(false);
    pulled += colour_gap(true);
  }
  RecordProperty("colour_gap_plain", std::to_string(plain / 2));
  RecordProperty("colour_gap_with_gen_latents", std::to_string(pulled / 2));
  EXPECT_LT(pulled, 0.85 * plain) << "mean-colour gap of the biased latents' decodes (mean of 2 "
                                  << "bases): plain " << plain / 2 << ", with --gen-latents "
                                  << pulled / 2;
}

TEST(AutoencoderSlow, LatentTrainingOverfitsASmallBatch) {
  auto p = phantoms(8, 32, 4);
  auto tok = std::make_shared<Tokenizer>(*Tokenizer::train(p.captions, {128, "bpe", 0}));
  torch::manual_seed(3);
  Autoencoder ae(small_ae(32));
  calibrate_latents(ae, p.px, 32);
  CaptionedImages data;
  data.size = 32;
  data.pixels = p.px;
  data.captions = p.captions;
  data.latents = encode_dihedral_latents(ae, p.px, 32);
  auto c = test::latent_micro(tok->vocab_size());
  torch::manual_seed(0);
  MMDiT m(c);
  GenTrainConfig tc = test::short_run("latent_overfit", 400, 8, 3e-3, 20);
  tc.caption_dropout = 0;
  tc.augment = false;
  tc.log_every = 20;
  tc.ae = ae;
  tc.ae_hash = "test";
  tc.ae_file = "ae.safetensors";
  auto r = train_generator(tc, m, *tok, data, nullptr);
  ASSERT_TRUE(r.ok()) << r.status().message();
  std::ifstream in(tc.out + "/metrics.jsonl");
  std::string line;
  std::vector<double> losses;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) losses.push_back(j["loss"].get<double>());
  }
  ASSERT_GE(losses.size(), 10u);
  // Each caption names one latent: the velocity becomes predictable and the loss falls far.
  EXPECT_LT(losses.back(), 0.35 * losses.front()) << losses.front() << " -> " << losses.back();
  auto g = load_generator(tc.out + "/ema.safetensors", "");
  EXPECT_FALSE(g.ok());  // "test" hash: the autoencoder beside it is not there
}

TEST(Precision, ParsesAndDetects) {
  EXPECT_EQ(*parse_precision("fp32"), Precision::kFP32);
  EXPECT_EQ(*parse_precision("bf16"), Precision::kBF16);
  EXPECT_EQ(*parse_precision("auto"), cpu_has_bf16() ? Precision::kBF16 : Precision::kFP32);
  EXPECT_FALSE(parse_precision("fp8").ok());
}

TEST(Precision, Bf16ForwardWithinToleranceOfFp32) {
  PrecisionGuard guard;
  auto c = MMDiTConfig::preset("tiny");
  c.vocab_size = 64;
  torch::manual_seed(0);
  MMDiT m(c);
  {
    torch::NoGradGuard ng;
    for (auto& p : m->parameters()) p.normal_(0, 0.05);
  }
  m->eval();
  auto x = torch::randn({4, 3, 32, 32});
  auto t = torch::rand({4});
  auto ids = torch::randint(1, 64, {4, 12}, torch::kInt64);
  auto mask = torch::ones({4, 12}, torch::kBool);
  torch::NoGradGuard ng;
  set_compute_precision(Precision::kFP32);
  auto a = m->forward(x, t, ids, mask);
  set_compute_precision(Precision::kBF16);
  auto b = m->forward(x, t, ids, mask);
  EXPECT_EQ(b.scalar_type(), torch::kFloat32);
  // bf16 keeps 8 mantissa bits: relative error of the whole network's output below 3%.
  double rel = ((a - b).norm() / a.norm()).item<double>();
  EXPECT_LT(rel, 0.03);
  EXPECT_GT(rel, 0.0);  // the bf16 path really ran
}

// The kept bf16 copies of the weights (core/bf16_shadow.h) are always the current weights
// rounded: after the fused optimizer step (which writes them), after libtorch's step and after
// an in-place op; reused, not recast, where nothing changed; dropped with their weight.
TEST(Precision, Bf16WeightCopiesFollowEveryUpdate) {
  PrecisionGuard guard;
  set_compute_precision(Precision::kBF16);
  auto c = MMDiTConfig::preset("tiny");
  c.vocab_size = 64;
  torch::manual_seed(0);
  MMDiT m(c);
  auto params = m->parameters();
  auto x = torch::randn({2, 3, 32, 32});
  auto t = torch::rand({2});
  auto ids = torch::randint(1, 64, {2, 12}, torch::kInt64);
  auto mask = torch::ones({2, 12}, torch::kBool);
  auto all_current = [&] {  // every kept copy is its weight rounded, bit for bit
    torch::NoGradGuard ng;
    int checked = 0;
    for (auto& p : params)
      if (p.dim() == 2 || p.dim() == 1) {
        if (!torch::equal(bf16_weight(p), p.to(torch::kBFloat16))) return -1;
        ++checked;
      }
    return checked;
  };
  auto step = [&](torch::optim::AdamW& opt, bool fused) {
    auto loss = m->forward(x, t, ids, mask).pow(2).mean();
    backward_with_fresh_grads(loss, params);
    if (fused)
      clip_adamw_ema_step(opt, params, 1.0);
    else
      opt.step();
  };
  torch::optim::AdamW opt(params, torch::optim::AdamWOptions(1e-2));
  const auto s0 = bf16_shadow_stats();
  step(opt, true);
  EXPECT_GT(bf16_shadow_stats().casts, s0.casts);  // the first forward made the GEMMs' copies
  EXPECT_GT(bf16_shadow_stats().kept, 20u);
  EXPECT_GT(all_current(), 20);  // (and this, those of the other weights)
  const auto s1 = bf16_shadow_stats();
  step(opt, true);  // the fused step writes every copy: no cast in the forward or the check
  EXPECT_GT(all_current(), 20);
  EXPECT_EQ(bf16_shadow_stats().casts, s1.casts);
  step(opt, false);  // libtorch's own step: in-place ops bump the versions, copies recast
  EXPECT_GT(all_current(), 20);
  EXPECT_GT(bf16_shadow_stats().casts, s1.casts);
  {  // an in-place op on one weight: its copy follows
    torch::NoGradGuard ng;
    params[0].add_(1.0);
  }
  EXPECT_GT(all_current(), 20);
  // The gradient through a kept copy is that of the cast it replaces.
  auto w = (torch::randn({8, 5}) * 3).requires_grad_();
  auto r = torch::randn({8, 5}).to(torch::kBFloat16);
  auto g1 = torch::autograd::grad({(bf16_weight(w) * r).sum()}, {w})[0];
  auto g2 = torch::autograd::grad({(w.to(torch::kBFloat16) * r).sum()}, {w})[0];
  EXPECT_EQ(g1.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(g1, g2));
  const size_t kept = bf16_shadow_stats().kept;
  w = torch::Tensor();  // the weight is gone: so is its copy
  EXPECT_EQ(bf16_shadow_stats().kept, kept - 1);
}

TEST(PrecisionSlow, Bf16TrainingTracksFp32AndResumesAcrossPrecisions) {
  PrecisionGuard guard;
  auto p = phantoms(64, 16, 5);
  auto tok = std::make_shared<Tokenizer>(*Tokenizer::train(p.captions, {128, "bpe", 0}));
  CaptionedImages data;
  data.size = 16;
  data.pixels = p.px;
  data.captions = p.captions;
  MMDiTConfig c = MMDiTConfig::preset("tiny");
  c.image_size = 16;
  c.patch = 4;
  c.dim = 64;
  c.heads = 2;
  c.vocab_size = tok->vocab_size();
  c.max_text_len = 64;
  auto run = [&](Precision prec, const std::string& name, int64_t stop, bool resume) {
    set_compute_precision(prec);
    GenTrainConfig tc = test::short_run(resume ? name + "_unused" : name, 60, 16, 1e-3, 5);
    if (resume)
      tc.out = std::filesystem::temp_directory_path().string() + "/lesionflow_test_" + name;
    tc.log_every = 10;
    tc.ckpt_every = 30;
    tc.stop_at_step = stop;
    tc.resume = resume;
    torch::manual_seed(0);
    MMDiT m(c);
    auto r = train_generator(tc, m, *tok, data, nullptr);
    EXPECT_TRUE(r.ok()) << r.status().message();
    std::vector<double> losses;
    std::ifstream in(tc.out + "/metrics.jsonl");
    std::string line;
    while (std::getline(in, line)) {
      auto j = nlohmann::json::parse(line);
      if (j.contains("loss")) losses.push_back(j["loss"].get<double>());
    }
    return losses;
  };
  auto f = run(Precision::kFP32, "prec_fp32", -1, false);
  auto b = run(Precision::kBF16, "prec_bf16", -1, false);
  ASSERT_EQ(f.size(), 6u);
  ASSERT_EQ(b.size(), 6u);
  for (size_t i = 0; i < f.size(); ++i) EXPECT_NEAR(b[i], f[i], 0.05 * f[i] + 0.01) << "log " << i;
  EXPECT_LT(b.back(), 0.7 * b.front());
  // fp32 to step 30, then bf16 from the checkpoint: continues at step 30 and tracks the fp32 run.
  run(Precision::kFP32, "prec_mixed", 30, false);
  auto mixed = run(Precision::kBF16, "prec_mixed", -1, true);
  ASSERT_EQ(mixed.size(), 6u);
  for (size_t i = 0; i < 3; ++i) EXPECT_DOUBLE_EQ(mixed[i], f[i]);  // the fp32 half, kept
  for (size_t i = 3; i < 6; ++i) EXPECT_NEAR(mixed[i], f[i], 0.05 * f[i] + 0.01) << "log " << i;
}

}  // namespace lf

#include "pipeline/export.h"

namespace lf {
TEST(Autoencoder, Fp16ExportOfALatentGeneratorLoadsAndMatches) {
  auto dir = test::tmp_dir("ae_export");
  auto p = phantoms(8, 32, 6);
  auto tok = std::make_shared<Tokenizer>(*Tokenizer::train(p.captions, {128, "bpe", 0}));
  torch::manual_seed(4);
  Autoencoder ae(small_ae(32));
  ASSERT_TRUE(save_autoencoder(dir + "/ae.safetensors", ae, 0).ok());
  torch::manual_seed(5);
  MMDiT m(test::latent_micro(tok->vocab_size()));
  {
    torch::NoGradGuard ng;
    for (auto& t : m->parameters()) t.normal_(0, 0.05);
  }
  FlowConfig fc;
  ASSERT_TRUE(
      save_generator(dir + "/gen.safetensors", m, *tok, 0, fc, "ema",
                     {{"ae", ae_metadata(*hash_file(dir + "/ae.safetensors"), "ae.safetensors")}})
          .ok());
  ASSERT_TRUE(
      export_generator(dir + "/gen.safetensors", dir + "/out/shipped.safetensors", "fp16").ok());
  ASSERT_TRUE(file_exists(dir + "/out/shipped_ae.safetensors"));
  auto a = load_generator(dir + "/gen.safetensors");
  auto b = load_generator(dir + "/out/shipped.safetensors");
  ASSERT_TRUE(a.ok() && b.ok()) << b.status().message();
  auto st = load_safetensors(dir + "/out/shipped.safetensors");
  EXPECT_EQ(st->tensors.begin()->second.dtype, DType::kF16);
  GenerateConfig gc{SamplerConfig{SamplerMethod::kEuler, 4, 1.0}, 2.0};
  auto ia = generate_images(*a, {p.captions[0], p.captions[1]}, {1, 2}, gc);
  auto ib = generate_images(*b, {p.captions[0], p.captions[1]}, {1, 2}, gc);
  EXPECT_LT((ia - ib).abs().max().item<double>(), 0.05);  // fp16 rounding of the weights only
  EXPECT_GT((ia - ib).abs().max().item<double>(), 0.0);
}

// The generator shipped in models/: `sample` uses it by default; it must exist, load with its
// autoencoder, be seed-exact and make skin-coloured (HAM-like) images.
TEST(ShippedModel, LoadsAndSamplesSeedExactHamLikeImages) {
  const std::string path = shipped_model_path(kShippedGenerator);
  ASSERT_FALSE(path.empty()) << "models/" << kShippedGenerator << " is missing";
  auto g = load_generator(path);
  ASSERT_TRUE(g.ok()) << g.status().message();
  ASSERT_TRUE(g->latent());
  const std::string prompt =
      "dermoscopic image of a malignant melanoma on the back of a 65-year-old man; asymmetric, "
      "irregular border, "
      "blue-gray and black";
  GenerateConfig gc;
  gc.sampler.steps = 8;
  auto a = generate_images(*g, {prompt, prompt}, {11, 12}, gc);
  auto b = generate_images(*g, {prompt}, {11}, gc);
  EXPECT_EQ(a.sizes(), (std::vector<int64_t>{2, 3, 64, 64}));
  auto again = generate_images(*g, {prompt, prompt}, {11, 12}, gc);
  EXPECT_TRUE(torch::equal(a, again));  // same seeds, same call: bit-identical
  // The noise of an image depends on its seed only: the same image in a batch of one (GEMM
  // blocking differs with the batch size, so equal up to float rounding).
  EXPECT_LT((a[0] - b[0]).abs().max().item<double>(), 2e-3);
  EXPECT_FALSE(torch::equal(a[0], a[1]));  // different seeds, different lesions
  // Neither black nor white images.
  auto mean = ((a + 1) / 2).mean({0, 2, 3});
  EXPECT_GT(mean.mean().item<double>(), 0.25);
  EXPECT_LT(mean.mean().item<double>(), 0.9);
  // Dermoscopy colours: a plain nevus is red above blue (pink skin, brown lesion); the
  // melanoma prompt above asks for blue-gray and black, and its images are bluer than the nevus'.
  const std::string nevus =
      "dermoscopic image of a benign melanocytic nevus on the back of a 40-year-old woman; "
      "symmetric, regular border, one colour: light brown";
  auto nv = generate_images(*g, {nevus, nevus}, {11, 12}, gc);
  auto nmean = ((nv + 1) / 2).mean({0, 2, 3});
  EXPECT_GT(nmean[0].item<double>(), nmean[2].item<double>());
  EXPECT_GT((mean[2] / mean[0]).item<double>(), (nmean[2] / nmean[0]).item<double>());
}
}  // namespace lf
