// Shared CLI plumbing: global options, the selected command's runner, status -> exit code.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "lesionflow/status.h"

namespace lf::cli {

struct GlobalOptions {
  uint64_t seed = 0;
  int threads = 0;  // 0: all cores
  bool json = false;
  std::string device = "cpu";
  bool verbose = false, quiet = false;
  std::string command_line;
};

using Runner = std::function<Status()>;

// Each subcommand file registers itself; the selected runner is stored in *run.
void add_doctor(CLI::App& app, GlobalOptions& g, Runner* run);
void add_data(CLI::App& app, GlobalOptions& g, Runner* run);
void add_caption(CLI::App& app, GlobalOptions& g, Runner* run);
void add_generator(CLI::App& app, GlobalOptions& g, Runner* run);  // text, train, sample
void add_report(CLI::App& app, GlobalOptions& g, Runner* run);
void add_classify(CLI::App& app, GlobalOptions& g, Runner* run);  // classify, synth, experiment
void add_bench(CLI::App& app, GlobalOptions& g, Runner* run);

// Print a JSON value (for --json) or nothing.
inline void emit_json(const GlobalOptions& g, const nlohmann::json& j) {
  if (g.json) std::cout << j.dump(2) << std::endl;
}

}  // namespace lf::cli
