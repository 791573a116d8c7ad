// lesionflow serve: flags -> ServeOptions of pipeline/serve.h (docs/api.md).
#include "cli.h"
#include "pipeline/serve.h"

namespace lf::cli {

void add_serve(CLI::App& app, GlobalOptions& g, Runner* run) {
  static ServeOptions o;
  auto* s = app.add_subcommand(
      "serve",
      "JSON API: generate lesion images from a caption or concept fields, compose "
      "captions, measure an uploaded image (docs/api.md)");
  s->add_option("--checkpoint", o.checkpoint, "generator (default: the shipped model)");
  s->add_option("--lora", o.lora, "LoRA adapter FILE[:STRENGTH] applied at load (repeatable)");
  s->add_option("--host", o.host, "address to listen on (loopback by default)")
      ->capture_default_str();
  s->add_option("--port", o.port, "TCP port (0 = any free port)")
      ->capture_default_str()
      ->check(CLI::Range(0, 65535));
  s->add_option("--max-n", o.max_n, "images per generate request")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  s->add_option("--max-steps", o.max_steps, "sampler steps per request")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  s->add_option("--queue", o.queue, "generate jobs queued or running before 503")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  s->callback([&g, run]() { *run = [&g]() -> Status { return run_server(o); }; });
}

}  // namespace lf::cli
