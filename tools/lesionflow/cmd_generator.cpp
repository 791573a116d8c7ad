// lesionflow text train-tokenizer | train | sample: flags -> options structs of
// pipeline/generator_runs.h -> printed summaries.
#include "gen_flags.h"

namespace lf::cli {

void add_sampler_flags(CLI::App* s, GenerateConfig& gc, SamplerFlags& given) {
  s->add_option_function<std::string>(
       "--sampler",
       [&gc, &given](const std::string& v) {
         gc.sampler.method = *parse_sampler(v);  // checked below
         given.sampler = true;
       },
       "euler | heun | ab2 | dpm2m | ddim (default: the checkpoint's recommendation, else dpm2m)")
      ->check(CLI::IsMember({"euler", "heun", "ab2", "dpm2m", "ddim"}));
  s->add_option("--steps", gc.sampler.steps,
                "sampler steps (default: the checkpoint's recommendation, else this)")
      ->capture_default_str()
      ->check(kPositive)
      ->each([&given](const std::string&) { given.steps = true; });
  s->add_option("--cfg", gc.cfg_scale,
                "classifier-free guidance scale, 1 = off (default: the checkpoint's, else this)")
      ->capture_default_str()
      ->check(kNonNegative)
      ->each([&given](const std::string&) { given.cfg = true; });
  s->add_option_function<std::vector<double>>(
       "--cfg-interval",
       [&gc, &given](const std::vector<double>& v) {
         gc.cfg_t_lo = v[0];
         gc.cfg_t_hi = v[1];
         given.interval = true;
       },
       "guide only while LO <= t <= HI (t = 1 is noise; default 0.6 1: on the shipped model "
       "guidance below t = 0.6 changes nothing measurable and costs 28% of the forwards; "
       "0 1 guides every step)")
      ->expected(2)
      ->check(CLI::Range(0.0, 1.0));
  s->add_option("--guide", gc.guide,
                "autoguidance: guide with this weaker generator on the same prompt instead of "
                "the empty caption (--cfg is then its weight; same tokenizer and latents)")
      ->check(CLI::ExistingFile);
  s->add_option("--shift", gc.sampler.shift,
                "timestep shift of the schedule (default: the checkpoint's, else this)")
      ->capture_default_str()
      ->check(kPositive)
      ->each([&given](const std::string&) { given.shift = true; });
  s->add_option("--batch-threads", gc.batch_threads,
                "threads that each sample a share of every batch, the intra-op threads split "
                "among them (0 = auto: 2 on a CPU with >= 2 threads and >= 8 images a batch; 1 = "
                "off)")
      ->capture_default_str()
      ->check(CLI::Range(0, 2));
  s->add_option("--eta", gc.sampler.eta,
                "ddim stochasticity: 0 = deterministic (= euler), 1 = ancestral (default: the "
                "checkpoint's, else this)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0))
      ->each([&given](const std::string&) { given.eta = true; });
}

void add_generator(CLI::App& app, GlobalOptions& g, Runner* run) {
  auto* text = app.add_subcommand("text", "tokenizer tools");
  text->require_subcommand(1);
  static TokenizerRunOptions tk;
  auto* tt = text->add_subcommand("train-tokenizer", "train a sentencepiece model on the captions");
  data_flags(tt, tk.data);
  tt->add_option("--vocab", tk.vocab, "vocabulary size (upper bound)")
      ->capture_default_str()
      ->check(kPositive);
  tt->add_option("--out", tk.out, "output .model file")->required();
  bind(tt, tk, g, run, run_tokenizer_training, [](const nlohmann::json& j) {
    std::printf("tokenizer: vocab %d, longest caption %d tokens, %d of %zu over 64 -> %s\n",
                j["vocab"].get<int>(), j["longest_caption_tokens"].get<int>(),
                j["over_64"].get<int>(), j["captions"].get<size_t>(),
                j["out"].get<std::string>().c_str());
  });

  static TrainRunOptions tr;
  auto* t = app.add_subcommand("train", "train the text-to-image rectified-flow generator");
  data_flags(t, tr.data);
  t->add_option("--vocab", tr.vocab, "tokenizer vocabulary size (upper bound)")
      ->capture_default_str()
      ->check(kPositive);
  t->add_option("--tokenizer", tr.tokenizer,
                "sentencepiece model (default: train one on the captions)");
  t->add_option("--preset", tr.preset, "tiny | small | medium | base")
      ->capture_default_str()
      ->check(CLI::IsMember({"tiny", "small", "medium", "base"}));
  t->add_option(
       "--objective", tr.objective,
       "flow (rectified flow, default) | diffusion (DDPM epsilon prediction, linear betas, "
       "sampled with DDIM: the baseline)")
      ->check(CLI::IsMember({"flow", "diffusion"}));
  t->add_option("--prediction", tr.prediction, "velocity | x (default: the preset's)")
      ->check(CLI::IsMember({"velocity", "x"}));
  t->add_option(
      "--ae", tr.ae,
      "autoencoder .safetensors: train a latent generator on its cached latents (ae encode)");
  t->add_option("--patch", tr.patch, "patch side (default: the preset's; 2 on latents)")
      ->check(CLI::Range(1, 32));
  t->add_option("--init", tr.init,
                "start from this generator (e.g. models/lesionflow_ham64.safetensors): its "
                "architecture, tokenizer, flow settings, weights and autoencoder, with a fresh "
                "optimizer and schedule (--preset, --vocab and --ae are not needed)");
  t->add_option("--add-single", tr.add_single,
                "with --init: append N single-stream blocks (zero-gated, so the grown model starts "
                "as the init) to add depth to a trained generator")
      ->check(CLI::NonNegativeNumber);
  t->add_flag("--freeze-text", tr.freeze_text,
              "keep the text encoder at its initial (or --resume) weights");
  loop_flags(t, tr.loop);
  t->add_option("--out", tr.out, "run directory")->required();
  bind(t, tr, g, run, run_generator_training,
       [](const nlohmann::json& j) { print_trained("trained", j); });

  static SampleRunOptions sa;
  auto* s = app.add_subcommand("sample", "generate images from prompts with a trained generator");
  s->add_option("--checkpoint", sa.checkpoint,
                std::string("generator .safetensors (default: the shipped models/") +
                    kShippedGenerator + ")");
  s->add_option("--prompt", sa.prompts, "prompt (repeatable)");
  s->add_option("--prompts-file", sa.prompts_file, "one prompt per line");
  s->add_option("--n", sa.n, "images per prompt")->capture_default_str()->check(kPositive);
  // Unset sampler flags take the checkpoint's recommendation (a distilled student's), else the
  // defaults of use_default_sampling().
  use_default_sampling(sa.gen);
  add_sampler_flags(s, sa.gen, sa.given);
  s->add_option(
      "--ae", sa.ae,
      "autoencoder of a latent generator (default: the file its checkpoint names, beside it)");
  s->add_option("--lora", sa.lora, "LoRA adapter FILE[:STRENGTH] applied at run time (repeatable)");
  s->add_option("--out", sa.out, "output directory")->required();
  bind(s, sa, g, run, run_sampling, [](const nlohmann::json& j) {
    std::printf("wrote %zu images, grid.png and samples.jsonl to %s\n", j["images"].get<size_t>(),
                j["out"].get<std::string>().c_str());
  });

  static DenoiseProfileRunOptions dp;
  auto* d = app.add_subcommand(
      "denoise-profile",
      "where a generator loses its images: denoising error and spread by noise level on held-out "
      "images");
  data_flags(d, dp.data);
  d->add_option("--checkpoint", dp.checkpoint, "generator .safetensors (default: the shipped one)");
  d->add_option("--ae", dp.ae,
                "autoencoder of a latent generator (default: beside the checkpoint)");
  d->add_option("--n", dp.n, "held-out images")
      ->capture_default_str()
      ->check(CLI::Range(2, 100000));
  d->add_option("--steps", dp.steps, "Euler steps of a round trip from t = 1")
      ->capture_default_str()
      ->check(kPositive);
  d->add_option("--cfg", dp.cfg, "guidance of the round trips")
      ->capture_default_str()
      ->check(kNonNegative);
  d->add_option("--out", dp.out, "JSON file");
  bind(d, dp, g, run, run_denoise_profile, [](const nlohmann::json& j) {
    std::printf("%5s %8s %8s %8s %9s %10s %9s %9s %9s\n", "t", "v_mse", "v_uncond", "x0_mse",
                "x0_spread", "trip_sprd", "trip_mse", "x0_px_sp", "trip_px_sp");
    for (const auto& r : j["rows"])
      std::printf("%5.2f %8.4f %8.4f %8.4f %9.3f %10.3f %9.4f %9.3f %9.3f\n", r["t"].get<double>(),
                  r["v_mse"].get<double>(), r["v_mse_uncond"].get<double>(),
                  r["x0_mse"].get<double>(), r["x0_spread"].get<double>(),
                  r["roundtrip_spread"].get<double>(), r["roundtrip_mse"].get<double>(),
                  r["x0_pixel_spread"].get<double>(), r["roundtrip_pixel_spread"].get<double>());
  });
}

}  // namespace lf::cli
