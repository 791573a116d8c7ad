// lesionflow bench: speed of the pipeline's stages in ONE run, against the machine's sgemm and
// against the same models in python3-torch, interleaved so drift hits every variant alike.
// Prints a table and writes OUT/DATE.json.
#pragma once
#include <chrono>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "lesionflow/status.h"

namespace lf {

// Timing helpers of the bench files (bench.cpp, bench_dist.cpp).
namespace bench_util {
using Clock = std::chrono::steady_clock;
inline double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}
double median(std::vector<double> v);  // NaN for an empty list
}  // namespace bench_util

struct BenchOptions {
  int reps = 5;
  std::string preset = "small";
  // pixel: the preset on 64 px images (8x8 patches); latent: the preset on the f=4, 4-channel
  // latents the HAM generator trains on (16x16x4, 2x2 patches, velocity prediction).
  std::string space = "pixel";
  int batch = 32, text_tokens = 40, sample_steps = 20, distilled_steps = 4;
  double cfg = 4.0;
  std::string data = "../shared/data/ham10000";
  std::string python = "/usr/bin/python3";
  std::string out = "bench/results";
  bool no_python = false;
  std::string child_memory;  // internal: "lora" | "full" -> print fine-tune memory as JSON
  std::string profile;       // write a chrome trace of two generator training steps and stop
  int op_times = 0;          // > 0: time the top-level ops of this many training steps and stop
  int batch_threads = 0;     // shards of the generator training step (0 = auto, as train)
  std::string only;          // regex: run only the variants whose name matches (sgemm always runs)
  std::string child_dist;    // internal: "STEPS:RANK:WORLD:INIT" -> one data-parallel rank
};

// Wall time of `steps` calls of f, and the inclusive time and count of every top-level op that
// the calling thread runs in them, and the shard threads it hands work to (ATen ops and autograd
// nodes, through a thread-local RecordFunction callback that ShardThreads carries over: ~1 us an
// op, where the legacy profiler of --profile inflated the bf16 training step 2.7x). With two
// shards the ops' times of both threads add up: thread-milliseconds, up to twice the wall time.
// JSON: wall_ms_per_step, ops_ms_per_step, and ops [{name, ms_per_step, calls_per_step}] sorted by
// time.
nlohmann::json time_top_level_ops(const std::function<void()>& f, int steps);
// Runs the benchmark (or, with child_memory set, one fine-tune memory probe printed as JSON).
Result<nlohmann::json> run_bench(const BenchOptions& o);
// The data-parallel rows (bench_dist.cpp): 1 rank x all threads vs ranks x 1 thread, the
// all-reduce cost and a ring all-reduce estimate for N machines; and one rank of them.
Result<nlohmann::json> bench_data_parallel(const BenchOptions& o);
Status run_child_dist(const BenchOptions& o);

}  // namespace lf
