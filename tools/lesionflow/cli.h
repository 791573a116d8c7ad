// Shared CLI plumbing: global options, the selected command's runner, status -> exit code.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "lesionflow/runtime.h"
#include "lesionflow/status.h"

namespace lf {
struct GenerateConfig;
struct SamplerFlags;
}  // namespace lf

namespace lf::cli {

struct GlobalOptions {
  uint64_t seed = 0;
  int threads = 0;  // 0: all cores
  bool json = false;
  std::string device = "cpu";
  std::string precision = "fp32";  // fp32 | bf16 | auto (GEMMs of the models in bfloat16)
  bool verbose = false, quiet = false;
  std::string command_line;
};

using Runner = std::function<Status()>;

// Each subcommand file registers itself; the selected runner is stored in *run.
void add_doctor(CLI::App& app, GlobalOptions& g, Runner* run);
void add_data(CLI::App& app, GlobalOptions& g, Runner* run);
void add_caption(CLI::App& app, GlobalOptions& g, Runner* run);
void add_generator(CLI::App& app, GlobalOptions& g, Runner* run);  // text, train, sample
void add_adapt(CLI::App& app, GlobalOptions& g, Runner* run);      // finetune, distill, lora merge
void add_report(CLI::App& app, GlobalOptions& g, Runner* run);
void add_classify(CLI::App& app, GlobalOptions& g, Runner* run);  // classify train | eval
void add_synth(CLI::App& app, GlobalOptions& g, Runner* run);     // fd, synth, experiment
void add_bench(CLI::App& app, GlobalOptions& g, Runner* run);
void add_ae(CLI::App& app, GlobalOptions& g, Runner* run);
void add_audit(CLI::App& app, GlobalOptions& g, Runner* run);
void add_export(CLI::App& app, GlobalOptions& g, Runner* run);  // weights for shipping
void add_serve(CLI::App& app, GlobalOptions& g, Runner* run);   // JSON API

// --sampler, --steps, --cfg, --cfg-interval, --shift into `gc` (its values are the defaults);
// `given` records which were given (the others may take a checkpoint's recommendation).
void add_sampler_flags(CLI::App* s, GenerateConfig& gc, SamplerFlags& given);

// Print a JSON value (for --json) or nothing.
inline void emit_json(const GlobalOptions& g, const nlohmann::json& j) {
  if (g.json) std::cout << j.dump(2) << std::endl;
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

}  // namespace lf::cli
