// lesionflow text train-tokenizer | train | sample | finetune | distill | lora merge: flags ->
// options structs of pipeline/generator_runs.h -> printed summaries.
#include "adapters/lora.h"
#include "cli.h"
#include "pipeline/generator_runs.h"

namespace lf::cli {
namespace {

void data_flags(CLI::App* s, GenDataSpec& d) {
  s->add_option("--data", d.data, "prepared cache directory (lesionflow data prepare)");
  s->add_option("--captions", d.captions,
                "captions.jsonl (id, caption); default: composed from metadata");
  s->add_option("--splits", d.splits, "splits CSV: train on 'train', validate on 'val'");
}

void loop_flags(CLI::App* s, LoopOptions& l) {
  s->add_option("--steps", l.steps, "total optimisation steps")->capture_default_str();
  s->add_option("--batch", l.batch, "batch size")->capture_default_str();
  s->add_option("--lr", l.lr, "peak learning rate")->capture_default_str();
  s->add_option("--max-minutes", l.max_minutes,
                "wall-clock budget; checkpoint and stop (0 = none)");
  s->add_option("--ckpt-every", l.ckpt_every, "checkpoint every N steps")->capture_default_str();
  s->add_option("--sample-every", l.sample_every, "validation grid every N steps")
      ->capture_default_str();
  s->add_option("--log-every", l.log_every, "metrics every N steps")->capture_default_str();
  s->add_option("--val-every", l.val_every, "validation loss (EMA weights) every N steps")
      ->capture_default_str();
  s->add_flag("--resume", l.resume, "continue the run in --out exactly where it stopped");
}

void print_trained(const char* what, const nlohmann::json& j) {
  std::printf("%s to step %lld (%.1f img/s, last loss %.4f) -> %s\n", what,
              (long long)j["step"].get<int64_t>(), j["images_per_second"].get<double>(),
              j["last_loss"].get<double>(), j["checkpoint"].get<std::string>().c_str());
}

// Runs `fn(options)` with the global seed, printing the JSON (--json) or `print(json)`.
template <class Opt, class Fn, class Print>
void bind(CLI::App* s, Opt& o, GlobalOptions& g, Runner* run, Fn fn, Print print) {
  s->callback([&o, &g, run, fn, print]() {
    *run = [&o, &g, fn, print]() -> Status {
      o.seed = g.seed;
      LF_ASSIGN_OR_RETURN(nlohmann::json j, fn(o));
      if (g.json)
        emit_json(g, j);
      else
        print(j);
      return Status::ok_status();
    };
  });
}

struct MergeOptions {
  std::string base, out;
  std::vector<std::string> adapters;
};

}  // namespace

void add_sampler_flags(CLI::App* s, GenerateConfig& gc, SamplerFlags& given) {
  s->add_option_function<std::string>(
       "--sampler",
       [&gc, &given](const std::string& v) {
         gc.sampler.method = *parse_sampler(v);  // checked below
         given.sampler = true;
       },
       "euler | heun | ab2 | dpm2m (default: the checkpoint's recommendation, else euler)")
      ->check(CLI::IsMember({"euler", "heun", "ab2", "dpm2m"}));
  s->add_option("--steps", gc.sampler.steps,
                "sampler steps (default: the checkpoint's recommendation, else this)")
      ->capture_default_str()
      ->each([&given](const std::string&) { given.steps = true; });
  s->add_option("--cfg", gc.cfg_scale,
                "classifier-free guidance scale, 1 = off (default: the checkpoint's, else this)")
      ->capture_default_str()
      ->each([&given](const std::string&) { given.cfg = true; });
  s->add_option_function<std::vector<double>>(
       "--cfg-interval",
       [&gc](const std::vector<double>& v) {
         gc.cfg_t_lo = v[0];
         gc.cfg_t_hi = v[1];
       },
       "guide only while LO <= t <= HI (t = 1 is noise; default 0 1)")
      ->expected(2)
      ->check(CLI::Range(0.0, 1.0));
  s->add_option("--shift", gc.sampler.shift,
                "timestep shift of the schedule (default: the checkpoint's, else this)")
      ->capture_default_str()
      ->each([&given](const std::string&) { given.shift = true; });
}

void add_generator(CLI::App& app, GlobalOptions& g, Runner* run) {
  auto* text = app.add_subcommand("text", "tokenizer tools");
  text->require_subcommand(1);
  static TokenizerRunOptions tk;
  auto* tt = text->add_subcommand("train-tokenizer", "train a sentencepiece model on the captions");
  data_flags(tt, tk.data);
  tt->add_option("--vocab", tk.vocab, "vocabulary size (upper bound)")->capture_default_str();
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
      ->capture_default_str();
  t->add_option("--tokenizer", tr.tokenizer,
                "sentencepiece model (default: train one on the captions)");
  t->add_option("--preset", tr.preset, "tiny | small | base")->capture_default_str();
  t->add_option("--prediction", tr.prediction, "velocity | x (default: the preset's)")
      ->check(CLI::IsMember({"velocity", "x"}));
  t->add_option(
      "--ae", tr.ae,
      "autoencoder .safetensors: train a latent generator on its cached latents (ae encode)");
  t->add_option("--patch", tr.patch, "patch side (default: the preset's; 2 on latents)")
      ->check(CLI::Range(1, 32));
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
  s->add_option("--n", sa.n, "images per prompt")->capture_default_str();
  // Unset sampler flags take the checkpoint's recommendation (a distilled student's), else these
  // defaults.
  sa.gen.sampler.steps = 20;
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

  static FinetuneRunOptions ft;
  auto* f =
      app.add_subcommand("finetune", "adapt a trained generator to a subset with LoRA (or --full)");
  data_flags(f, ft.data);
  f->add_option("--base", ft.base, "base generator checkpoint")->required();
  f->add_option("--ae", ft.ae,
                "autoencoder of a latent base (default: the file its checkpoint names, beside it)");
  f->add_option("--filter", ft.filter,
                "train on images with dx=, site=, sex= or age=VALUE (repeatable, all must match)");
  f->add_option("--limit", ft.limit, "at most N training images (seeded choice)")
      ->capture_default_str();
  f->add_option("--rank", ft.rank, "LoRA rank")->capture_default_str();
  f->add_option("--alpha", ft.alpha, "LoRA alpha (scale alpha/rank)")->capture_default_str();
  f->add_option("--targets", ft.targets, "attn,mlp,mod,io,text or re:REGEX")->capture_default_str();
  f->add_option("--rank-for", ft.rank_for, "per-group rank, e.g. mod=4 (repeatable)");
  f->add_option(
       "--lora-dropout", ft.lora_dropout,
       "rank dropout on the LoRA path: each step drops each rank component with probability P")
      ->check(CLI::Range(0.0, 0.95))
      ->capture_default_str();
  f->add_flag("--full", ft.full, "full fine-tune of every weight (for comparison)");
  loop_flags(f, ft.loop);
  f->add_option("--out", ft.out,
                "run directory (adapter: ema.safetensors / checkpoint.safetensors)")
      ->required();
  bind(f, ft, g, run, run_finetune, [](const nlohmann::json& j) {
    std::printf(
        "%s fine-tune: %lld trainable parameters, %lld steps, %.2f img/s, peak RSS %ld MB\n",
        j["mode"].get<std::string>().c_str(), (long long)j["trainable_parameters"].get<int64_t>(),
        (long long)j["steps"].get<int64_t>(), j["images_per_second"].get<double>(),
        j["peak_rss_mb"].get<long>());
  });

  static DistillRunOptions di;
  auto* d = app.add_subcommand("distill",
                               "distil a generator into a few-step student that needs no guidance");
  data_flags(d, di.data);
  d->add_option("--teacher", di.teacher,
                "teacher generator checkpoint (the student starts as a copy)")
      ->required();
  d->add_option(
      "--ae", di.ae,
      "autoencoder of a latent teacher (default: the file its checkpoint names, beside it)");
  d->add_option("--guidance", di.distill.guidance, "teacher CFG scale baked into the student")
      ->capture_default_str();
  d->add_option("--student-steps", di.distill.student_steps, "Euler steps the student samples with")
      ->capture_default_str();
  d->add_option("--substeps", di.distill.substeps,
                "teacher Euler steps per student step (1 = guidance distillation only)")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  d->add_option("--grid-fraction", di.distill.grid_fraction,
                "share of training timesteps on the student's step grid")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  loop_flags(d, di.loop);
  d->add_option("--out", di.out, "run directory (student: ema.safetensors)")->required();
  bind(d, di, g, run, run_distill, [](const nlohmann::json& j) { print_trained("distilled", j); });

  static MergeOptions mo;
  auto* lo = app.add_subcommand("lora", "LoRA adapter tools");
  lo->require_subcommand(1);
  auto* mg = lo->add_subcommand("merge", "merge adapters into a new full generator checkpoint");
  mg->add_option("--base", mo.base, "base generator checkpoint")->required();
  mg->add_option("--adapter", mo.adapters, "adapter FILE[:STRENGTH] (repeatable)")->required();
  mg->add_option("--out", mo.out, "merged checkpoint")->required();
  mg->callback([&g, run]() {
    *run = [&g]() -> Status {
      std::vector<std::pair<std::string, double>> ads;
      for (auto& s : mo.adapters) ads.push_back(split_strength(s));
      LF_RETURN_IF_ERROR(merge_lora(mo.base, ads, mo.out));
      if (!g.json) std::printf("merged %zu adapter(s) into %s\n", ads.size(), mo.out.c_str());
      return Status::ok_status();
    };
  });
}

}  // namespace lf::cli
