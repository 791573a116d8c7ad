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
class Dist;
bool is_main_rank(const std::shared_ptr<Dist>& d);  // train/dist.h
struct GenerateConfig;
struct SamplerFlags;
}  // namespace lf

namespace lf::cli {

struct GlobalOptions {
  uint64_t seed = 0;
  int threads = 0;  // 0: all cores
  bool json = false;
  std::string device = "cpu";
  bool device_aware = false;       // the chosen command carries --device (set when it is parsed)
  std::string precision = "fp32";  // fp32 | bf16 | auto (GEMMs of the models in bfloat16)
  bool verbose = false, quiet = false;
  std::string command_line;
  // Data-parallel training: flags (or torchrun's environment), and the process group main()
  // connects before a command that takes it (dist_aware) runs.
  std::string dist_init;
  int dist_rank = -1, world_size = -1;
  double dist_timeout = 900;
  bool dist_aware = false;
  std::shared_ptr<Dist> dist;
};

using Runner = std::function<Status()>;

// Range checks for numeric flags with a readable message ("must be > 0, got 0"; CLI11's own
// PositiveNumber says "Value 0 not in range 0.000000 to 1.797e+308"). Every numeric flag of every
// subcommand uses these or CLI::Range, so the ranges show in --help as POSITIVE / NON-NEGATIVE.
inline CLI::Validator number_check(bool allow_zero) {
  return CLI::Validator(
      [allow_zero](std::string& v) -> std::string {
        double x = 0;
        size_t used = 0;
        try {
          x = std::stod(v, &used);
        } catch (const std::exception&) {
          used = 0;
        }
        if (used != v.size() || v.empty()) return "'" + v + "' is not a number";
        if (allow_zero ? x >= 0 : x > 0) return "";
        return std::string(allow_zero ? "must be >= 0" : "must be > 0") + ", got " + v;
      },
      allow_zero ? "NON-NEGATIVE" : "POSITIVE");
}
inline const CLI::Validator kPositive = number_check(false);
inline const CLI::Validator kNonNegative = number_check(true);

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

// Runs `fn(options)` with the global seed, threads and device (for options that have them),
// printing the JSON (--json) or `print(json)`.
template <class Opt, class Fn, class Print>
void bind(CLI::App* s, Opt& o, GlobalOptions& g, Runner* run, Fn fn, Print print) {
  s->callback([&o, &g, run, fn, print]() {
    // --device reaches the commands whose options carry a device; main() refuses a device other
    // than the CPU for every other command.
    g.device_aware = requires { o.device; }
    || requires { o.loop.device; };
    g.dist_aware = requires { o.dist; }
    || requires { o.loop.dist; };
    *run = [&o, &g, fn, print]() -> Status {
      if constexpr (requires { o.seed; }) o.seed = g.seed;
      if constexpr (requires { o.threads; })
        if (g.threads > 0) o.threads = g.threads;  // else the command's own default
      if constexpr (requires { o.device; })
        o.device = g.device;
      else if constexpr (requires { o.loop.device; })
        o.loop.device = g.device;
      if constexpr (requires { o.dist; })
        o.dist = g.dist;
      else if constexpr (requires { o.loop.dist; })
        o.loop.dist = g.dist;
      LF_ASSIGN_OR_RETURN(nlohmann::json j, fn(o));
      if (!is_main_rank(g.dist)) return Status::ok_status();  // the results are rank 0's to print
      if (g.json)
        emit_json(g, j);
      else
        print(j);
      return Status::ok_status();
    };
  });
}

}  // namespace lf::cli
