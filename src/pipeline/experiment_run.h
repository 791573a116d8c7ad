// The real-vs-synthetic experiment as one library call: generator (given, or trained in-process
// and resumably) -> planned synthetic set -> classifiers over arms x real sizes x seeds x
// architectures -> audit. Every stage is cached in the output directory, so a rerun skips
// finished work. The config format is documented in docs/experiment.md.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "lesionflow/status.h"
#include "pipeline/generator_runs.h"

namespace lf {

struct ExperimentOptions {
  nlohmann::json config;                   // parsed experiment JSON
  std::string config_name = "experiment";  // for messages (the file it came from)
  std::string out;                         // overrides config["out"]
  std::vector<std::string> test_datasets;  // added to config["test_datasets"]
  double budget_minutes = 0;               // overrides config["budget_minutes"]
  uint64_t seed = 0;
  std::string command_line;  // recorded in config.json / summary.json
};
// Reads and parses an experiment JSON file (error names the file).
Result<nlohmann::json> read_experiment_config(const std::string& path);

// The generator training options of an experiment config's "generator" section: "train" (an
// object with TrainRunOptions field names: preset, steps, batch, lr, ...) and/or "train_args"
// (`lesionflow train` flags, e.g. ["--preset", "tiny", "--steps", "300"]).
Result<TrainRunOptions> experiment_train_options(const nlohmann::json& generator_section);

// Runs (or resumes) the experiment; returns summary.json's content (also written to OUT/).
Result<nlohmann::json> run_experiment(const ExperimentOptions& o);

}  // namespace lf
