// Shared CLI plumbing: global options, the selected command's runner, status -> exit code.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <sys/resource.h>
#include <unistd.h>

#include "lesionflow/status.h"

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
void add_report(CLI::App& app, GlobalOptions& g, Runner* run);
void add_classify(CLI::App& app, GlobalOptions& g, Runner* run);  // classify, synth, experiment
void add_bench(CLI::App& app, GlobalOptions& g, Runner* run);
void add_ae(CLI::App& app, GlobalOptions& g, Runner* run);
void add_audit(CLI::App& app, GlobalOptions& g, Runner* run);
void add_export(CLI::App& app, GlobalOptions& g, Runner* run);  // weights for shipping  // audit in the reference feature space  // ae train | encode | eval

// This binary's own path, for running a stage in a child process (a shell would resolve
// /proc/self/exe to itself).
inline std::string self_exe() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string("lesionflow");
}

// Peak resident memory of this process so far, MB.
inline long peak_rss_mb() {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024;
}

// Print a JSON value (for --json) or nothing.
inline void emit_json(const GlobalOptions& g, const nlohmann::json& j) {
  if (g.json) std::cout << j.dump(2) << std::endl;
}

}  // namespace lf::cli
