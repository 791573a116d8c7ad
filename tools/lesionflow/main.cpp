// lesionflow CLI: parse flags, call the library, turn Status into an exit code + hint.
#include <cstdlib>

#include "cli.h"
#include "lesionflow/log.h"
#include "lesionflow/runtime.h"
#include "lesionflow/stop.h"
#include "train/dist.h"

int main(int argc, char** argv) {
  using namespace lf;
  CLI::App app{
      "lesionflow: synthesise dermoscopy images from clinical descriptions and "
      "train better skin-lesion classifiers"};
  app.set_version_flag("--version", std::string("lesionflow ") + LESIONFLOW_VERSION);
  app.require_subcommand(1);
  app.set_config("--config", "", "read flags from a TOML/INI file (keys = long flag names)");
  app.allow_config_extras(CLI::config_extras_mode::error);  // a misspelt key is an error
  cli::GlobalOptions g;
  for (int i = 0; i < argc; ++i) g.command_line += (i ? " " : "") + std::string(argv[i]);
  app.add_option("--seed", g.seed, "seed for every random choice")->capture_default_str();
  app.add_option("--threads", g.threads, "intra-op threads (0 = all cores)")
      ->capture_default_str()
      ->check(cli::kNonNegative);
  app.add_flag("--json", g.json, "machine-readable JSON on stdout");
  app.add_option("--device", g.device, "cpu or cuda[:N]")->capture_default_str();
  app.add_option(
         "--precision", g.precision,
         "fp32 | bf16 | auto: matrix products of the models in bfloat16 (fp32 master weights); "
         "auto = bf16 where the CPU has AVX512_BF16 or AMX")
      ->capture_default_str()
      ->check(CLI::IsMember({"fp32", "bf16", "auto"}));
  auto* dg = "Distributed (data-parallel train, finetune, distill, classify train)";
  app.add_option("--dist-init", g.dist_init,
                 "rendezvous: env:// (torchrun's MASTER_ADDR/MASTER_PORT), tcp://HOST:PORT or "
                 "file://PATH")
      ->group(dg);
  app.add_option("--dist-rank", g.dist_rank, "this process's rank (default: $RANK)")
      ->check(cli::kNonNegative)
      ->group(dg);
  app.add_option("--world-size", g.world_size, "number of ranks (default: $WORLD_SIZE, else 1)")
      ->check(cli::kPositive)
      ->group(dg);
  app.add_option("--dist-timeout", g.dist_timeout,
                 "seconds a collective waits for the other ranks before failing")
      ->capture_default_str()
      ->check(cli::kPositive)
      ->group(dg);
  app.add_flag("--verbose", g.verbose, "debug logging");
  app.add_flag("--quiet", g.quiet, "warnings and errors only");
  cli::Runner run;
  cli::add_doctor(app, g, &run);
  cli::add_data(app, g, &run);
  cli::add_caption(app, g, &run);
  cli::add_ae(app, g, &run);
  cli::add_audit(app, g, &run);
  cli::add_export(app, g, &run);
  cli::add_generator(app, g, &run);
  cli::add_adapt(app, g, &run);
  cli::add_report(app, g, &run);
  cli::add_classify(app, g, &run);
  cli::add_synth(app, g, &run);
  cli::add_bench(app, g, &run);
  cli::add_serve(app, g, &run);
  // Global flags (--json, --seed, ...) may also follow the subcommand.
  std::function<void(CLI::App*)> fall = [&](CLI::App* a) {
    for (auto* s : a->get_subcommands({})) {
      s->fallthrough();
      fall(s);
    }
  };
  fall(&app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (g.quiet) set_log_level(LogLevel::kWarn);
  if (g.verbose) set_log_level(LogLevel::kDebug);
  tune_allocator();
  set_threads(g.threads);
  auto prec = parse_precision(g.precision);
  if (!prec.ok()) {
    log_error(prec.status().message());
    return 2;
  }
  set_compute_precision(*prec);
  if (g.precision != "fp32")
    log_info(std::string("compute precision: ") + precision_name(*prec) + " (--precision " +
             g.precision + ")");
  if (*prec == Precision::kBF16 && !cpu_has_bf16())
    log_warn(
        "--precision bf16 on a CPU without AVX512_BF16/AMX: bfloat16 GEMMs are emulated and slower "
        "than fp32");
  Status dev = check_device(g.device);
  if (dev.ok() && g.device != "cpu" && !g.device_aware)
    dev = Status::error("--device " + g.device +
                        ": this command runs on the CPU only (train, sample, finetune, distill "
                        "and classify train|eval take a device)");
  if (!dev.ok()) {
    log_error(dev.message());
    return 2;
  }
  if (!run) {
    std::cerr << app.help();
    return 2;
  }
  {
    DistOptions dopt{g.dist_init, g.dist_rank, g.world_size, g.dist_timeout};
    auto resolved = resolve_dist_options(dopt);
    Status ds = resolved.ok() ? Status::ok_status() : resolved.status();
    if (ds.ok() && dist_requested(*resolved)) {
      if (!g.dist_aware) {
        ds = Status::error("a world of " + std::to_string(resolved->world_size) +
                           " ranks was requested, but this command does not run data-parallel "
                           "(train, finetune, distill and classify train do)");
      } else {
        if (resolved->rank != 0 && !g.verbose)
          set_log_level(LogLevel::kWarn);  // rank 0 reports progress and results
        auto d = Dist::connect(*resolved);
        if (d.ok())
          g.dist = *d;
        else
          ds = d.status();
      }
    }
    if (!ds.ok()) {
      log_error(ds.message());
      return 2;
    }
  }
  Status st;
  try {
    st = run();
  } catch (const std::exception& e) {
    st = Status::error(std::string("unexpected exception: ") + e.what());
  }
  if (stop_requested()) {  // a training loop checkpointed and returned early
    if (!st.ok()) log_error(st.message());
    log_warn(
        std::string("stopped by ") + stop_signal_name() +
        "; the work so far is saved: rerun the same command (training: with --resume) to continue");
    return 128 + stop_signal();
  }
  if (!st.ok()) {
    log_error(st.message());
    std::cerr << "hint: run '" << argv[0] << " <command> --help' for the flags; "
              << "files named above are the ones to check" << std::endl;
    return 1;
  }
  return 0;
}
