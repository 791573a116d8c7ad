// Data-parallel training (train/dist.h) with 2 local ranks over Gloo, through the real CLI and
// scripts/launch_local.sh: the same global batch gives the same parameters as one process, a
// 2-rank checkpoint resumes on 1 process along the same loss curve, and a rank that dies or
// hangs makes the other stop with a message, leaving the last checkpoint usable.
#include "train/dist.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "lesionflow/io.h"
#include "lesionflow/jsonl.h"
#include "test_util.h"

namespace lf {
namespace {

using test::CliRun;
using test::run_cli;

std::string lf_bin() { return std::string(LF_BINARY_DIR) + "/lesionflow"; }
std::string launch(int n) {
  return test::src_dir() + "/scripts/launch_local.sh " + std::to_string(n);
}

std::string read_text(const std::string& p) {
  std::ifstream in(p);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Largest |a - b| over every F32 tensor of two checkpoints (same names and shapes asserted).
double max_abs_diff(const std::string& a, const std::string& b) {
  auto A = load_safetensors(a);
  auto B = load_safetensors(b);
  EXPECT_TRUE(A.ok() && B.ok()) << a << " / " << b;
  if (!A.ok() || !B.ok()) return 1e9;
  EXPECT_EQ(A->tensors.size(), B->tensors.size());
  double m = 0;
  for (const auto& [name, ta] : A->tensors) {
    auto it = B->tensors.find(name);
    EXPECT_NE(it, B->tensors.end()) << name;
    if (it == B->tensors.end() || ta.dtype != DType::kF32) continue;
    EXPECT_EQ(ta.shape, it->second.shape) << name;
    const float* x = reinterpret_cast<const float*>(ta.data.data());
    const float* y = reinterpret_cast<const float*>(it->second.data.data());
    for (int64_t i = 0; i < ta.numel(); ++i) m = std::max(m, std::fabs(double(x[i]) - y[i]));
  }
  return m;
}

// {step: loss} of a run's metrics.jsonl.
std::map<int64_t, double> losses(const std::string& run) {
  std::map<int64_t, double> out;
  std::ifstream in(run + "/metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_object() && j.contains("loss")) out[j["step"].get<int64_t>()] = j["loss"];
  }
  return out;
}

const std::string& phantom_cache() {
  static const std::string dir = [] {
    // One directory per test process: ctest -j runs the Dist tests side by side, and tmp_dir
    // empties the directory it returns.
    std::string d = test::tmp_dir("dist_data_" + std::to_string(::getpid()));
    CliRun r = run_cli("--threads 1 data prepare --dataset phantom:48 --size 16 --out " + d +
                       "/ph --quiet");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return d + "/ph";
  }();
  return dir;
}

std::string train_args(const std::string& out, int steps, const std::string& extra = "",
                       int ckpt_every = 1000) {
  return "--threads 1 train --data " + phantom_cache() + " --preset tiny --steps " +
         std::to_string(steps) +
         " --batch 8 --sample-every 0 --val-every 0 --log-every 1 --ckpt-every " +
         std::to_string(ckpt_every) + " --out " + out + " " + extra;
}

}  // namespace

TEST(Dist, BatchShardsAreEqualAndCoverTheGlobalBatch) {
  auto a = batch_shard(32, 0, 2), b = batch_shard(32, 1, 2);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a, std::make_pair(int64_t{0}, int64_t{16}));
  EXPECT_EQ(*b, std::make_pair(int64_t{16}, int64_t{32}));
  auto bad = batch_shard(30, 0, 4);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("not divisible by the world size 4"), std::string::npos);
}

TEST(Dist, OptionsComeFromTorchrunsEnvironmentAndBadOnesAreNamed) {
  DistOptions o;
  o.world_size = 2;
  o.rank = 1;
  ::unsetenv("MASTER_ADDR");
  auto r = resolve_dist_options(o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("MASTER_ADDR"), std::string::npos);
  ::setenv("MASTER_ADDR", "10.0.0.7", 1);
  ::setenv("MASTER_PORT", "29500", 1);
  r = resolve_dist_options(o);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->init, "tcp://10.0.0.7:29500");
  ::unsetenv("MASTER_ADDR");
  ::unsetenv("MASTER_PORT");
  o.rank = 2;
  EXPECT_FALSE(resolve_dist_options(o).ok());  // rank not below the world size
  DistOptions none;
  auto one = resolve_dist_options(none);
  ASSERT_TRUE(one.ok());
  EXPECT_FALSE(dist_requested(*one));  // no flags, no environment: one process
  // A command that does not run data-parallel refuses a world of 2.
  CliRun c = run_cli("--world-size 2 --dist-rank 0 --dist-init file:///tmp/x doctor");
  EXPECT_EQ(c.exit_code, 2) << c.output;
  EXPECT_NE(c.output.find("does not run data-parallel"), std::string::npos) << c.output;
}

// Parameters after 4 steps on 2 ranks (4 images each) equal one process with the same global
// batch of 8 within 1e-6 (float summation order only: the mean of two half-batch means vs one
// mean; measured 4e-8 after 8 steps, while each step moves a weight by up to lr = 3e-4). The 2-rank
// checkpoint then resumes on one process and continues the single-process loss curve.
TEST(Dist, TwoRanksEqualOneProcessAndTheirCheckpointResumesOnOne) {
  const std::string dir = test::tmp_dir("dist_parity");
  CliRun one = run_cli(train_args(dir + "/one", 8, "--stop-at-step 4"));
  ASSERT_EQ(one.exit_code, 0) << one.output;
  const std::string two_cmd = launch(2) + " \"" + lf_bin() + "\" " +
                              train_args(dir + "/two", 8, "--stop-at-step 4") + " 2>&1";
  std::string two = run_command_capture(two_cmd + "; echo \"@exit=$?\"");
  ASSERT_NE(two.find("@exit=0"), std::string::npos) << two;
  EXPECT_NE(two.find("rank 0 of 2 connected"), std::string::npos) << two;
  EXPECT_LT(max_abs_diff(dir + "/one/checkpoint.safetensors", dir + "/two/checkpoint.safetensors"),
            1e-6);
  EXPECT_LT(max_abs_diff(dir + "/one/ema.safetensors", dir + "/two/ema.safetensors"), 1e-6);
  const auto l1 = losses(dir + "/one"), l2 = losses(dir + "/two");
  ASSERT_EQ(l1.size(), 4u);
  ASSERT_EQ(l2.size(), 4u);
  for (auto& [s, v] : l1) EXPECT_NEAR(l2.at(s), v, 1e-4 * std::max(1.0, v)) << "step " << s;
  const auto opts = nlohmann::json::parse(read_text(dir + "/two/options.json"));
  EXPECT_EQ(opts["train"]["world_size"], 2);
  // Both continue to step 8 on one process: the 2-rank checkpoint resumes where it stopped.
  CliRun r1 = run_cli(train_args(dir + "/one", 8, "--resume"));
  CliRun r2 = run_cli(train_args(dir + "/two", 8, "--resume"));
  ASSERT_EQ(r1.exit_code, 0) << r1.output;
  ASSERT_EQ(r2.exit_code, 0) << r2.output;
  EXPECT_NE(r2.output.find("at step 4"), std::string::npos) << r2.output;
  const auto c1 = losses(dir + "/one"), c2 = losses(dir + "/two");
  ASSERT_EQ(c2.size(), 8u);
  for (auto& [s, v] : c1) EXPECT_NEAR(c2.at(s), v, 1e-4 * std::max(1.0, v)) << "step " << s;
  EXPECT_LT(max_abs_diff(dir + "/one/checkpoint.safetensors", dir + "/two/checkpoint.safetensors"),
            1e-6);
}

// LoRA fine-tuning and distillation run through the same loop: on 2 ranks their loss curves
// follow one process's (the adapters and the student are broadcast from rank 0 at the start).
TEST(Dist, LoraFinetuneAndDistillOnTwoRanksFollowOneProcess) {
  const std::string dir = test::tmp_dir("dist_adapt");
  CliRun base = run_cli(train_args(dir + "/base", 2));
  ASSERT_EQ(base.exit_code, 0) << base.output;
  for (const std::string& cmd : {"finetune --base " + dir + "/base/ema.safetensors",
                                 "distill --teacher " + dir + "/base/ema.safetensors"}) {
    const std::string args = "--threads 1 " + cmd + " --data " + phantom_cache() +
                             " --steps 4 --batch 8 --sample-every 0 --val-every 0 --log-every 1";
    const std::string name = cmd.substr(0, cmd.find(' '));
    CliRun one = run_cli(args + " --out " + dir + "/" + name + "1");
    ASSERT_EQ(one.exit_code, 0) << one.output;
    std::string two = run_command_capture(launch(2) + " \"" + lf_bin() + "\" " + args + " --out " +
                                          dir + "/" + name + "2 2>&1; echo \"@exit=$?\"");
    ASSERT_NE(two.find("@exit=0"), std::string::npos) << two;
    const auto l1 = losses(dir + "/" + name + "1"), l2 = losses(dir + "/" + name + "2");
    ASSERT_EQ(l1.size(), 4u) << name;
    ASSERT_EQ(l2.size(), 4u) << name << two;
    for (auto& [s, v] : l1)
      EXPECT_NEAR(l2.at(s), v, 1e-4 * std::max(1.0, v)) << name << " step " << s;
  }
}

// SIGTERM to the launcher reaches every rank: they stop before the same step (the wish rides in
// the step's all-reduce), rank 0 checkpoints it, the launcher exits 143, and the run resumes.
TEST(Dist, SigtermToTheLauncherStopsEveryRankAtTheSameStep) {
  const std::string dir = test::tmp_dir("dist_sigterm");
  const std::string script =
      launch(2) + " \"" + lf_bin() + "\" " + train_args(dir + "/run", 100000) + " > " + dir +
      "/log.txt 2>&1 & pid=$!; for i in $(seq 1200); do [ \"$(wc -l < " + dir +
      "/run/metrics.jsonl 2>/dev/null || echo 0)\" -ge 5 ] && break; sleep 0.05; done; "
      "kill -TERM $pid; wait $pid; echo \"@exit=$?\"";
  const std::string out = run_command_capture(script);
  const std::string log = read_text(dir + "/log.txt");
  EXPECT_NE(out.find("@exit=143"), std::string::npos) << out << log;
  // Both ranks name the same step; rank 1's line is prefixed by the launcher.
  const std::string key = "SIGTERM received: checkpointing step ";
  std::map<bool, int> step_of;  // rank 1's line?
  std::stringstream lines(log);
  for (std::string line; std::getline(lines, line);) {
    auto k = line.find(key);
    if (k != std::string::npos)
      step_of[line.rfind("[rank 1]", 0) == 0] = std::atoi(line.c_str() + k + key.size());
  }
  ASSERT_EQ(step_of.size(), 2u) << log;
  const int s0 = step_of[false];
  EXPECT_EQ(s0, step_of[true]) << log;
  EXPECT_GE(s0, 5) << log;
  CliRun res = run_cli(train_args(dir + "/run", s0 + 2, "--resume"));
  EXPECT_EQ(res.exit_code, 0) << res.output;
  EXPECT_NE(res.output.find("at step " + std::to_string(s0)), std::string::npos) << res.output;
}

// A rank killed mid-run: the other stops within the timeout with a message naming the failed
// collective; a rank that hangs (SIGSTOP): the other stops once the timeout passes. Either way
// the last checkpoint resumes.
TEST(Dist, ADeadOrHungRankStopsTheOtherWithAMessageAndTheCheckpointSurvives) {
  const std::string dir = test::tmp_dir("dist_kill");
  for (const std::string how : {"KILL", "STOP"}) {
    const std::string run = dir + "/" + how;
    const int timeout = how == "KILL" ? 60 : 8;
    auto rank = [&](int r) {
      return "WORLD_SIZE=2 RANK=" + std::to_string(r) + " \"" + lf_bin() +
             "\" --dist-init file://" + run + ".rdv --dist-timeout " + std::to_string(timeout) +
             " " + train_args(run, 100000, "", 3) + " > " + run + ".r" + std::to_string(r) +
             ".log 2>&1";
    };
    std::filesystem::remove(run + ".rdv");
    const std::string script =
        "(" + rank(0) + "; echo $? > " + run + ".rc0) & " + rank(1) + " & p1=$!; " +
        "for i in $(seq 1200); do [ \"$(wc -l < " + run +
        "/metrics.jsonl 2>/dev/null || echo 0)\" -ge 7 ] && break; sleep 0.05; done; " +
        "t0=$(date +%s.%N); kill -" + how + " $p1; " + "for i in $(seq 1200); do [ -f " + run +
        ".rc0 ] && break; sleep 0.05; done; t1=$(date +%s.%N); kill -KILL $p1 2>/dev/null; "
        "wait; echo \"@rc=$(cat " +
        run + ".rc0) @waited=$(echo \"$t1 $t0\" | awk '{print $1 - $2}')\"";
    const std::string out = run_command_capture(script);
    const std::string log0 = read_text(run + ".r0.log");
    auto k = out.find("@rc=");
    ASSERT_NE(k, std::string::npos) << out << log0;
    EXPECT_NE(std::atoi(out.c_str() + k + 4), 0) << how << "\n" << log0;
    const double waited = std::atof(out.c_str() + out.find("@waited=") + 8);
    EXPECT_LT(waited, timeout + 10.0) << how << "\n" << log0;
    EXPECT_NE(log0.find("failed on rank 0 of 2"), std::string::npos) << how << "\n" << log0;
    EXPECT_NE(log0.find("restart every rank with --resume"), std::string::npos) << log0;
    // The checkpoint written before the failure resumes on one process.
    ASSERT_TRUE(std::filesystem::exists(run + "/state.bin")) << log0;
    CliRun res = run_cli(train_args(run, 20, "--resume") + " --stop-at-step 12");
    EXPECT_EQ(res.exit_code, 0) << res.output;
    EXPECT_NE(res.output.find("resumed " + run + " at step "), std::string::npos) << res.output;
  }
}

// The classifier on 2 ranks: rank 0 alone writes the run, the weights stay in sync (checked
// every epoch), and it learns the phantom task.
TEST(Dist, ClassifierTrainsOnTwoRanks) {
  const std::string dir = test::tmp_dir("dist_cls");
  CliRun prep = run_cli("--threads 1 data prepare --dataset phantom:160 --size 16 --out " + dir +
                        "/ph --quiet");
  ASSERT_EQ(prep.exit_code, 0) << prep.output;
  CliRun split = run_cli("data split --dataset phantom:160 --out " + dir + "/splits.csv");
  ASSERT_EQ(split.exit_code, 0) << split.output;
  const std::string cmd = launch(2) + " \"" + lf_bin() + "\" --threads 1 classify train --data " +
                          dir + "/ph --splits " + dir + "/splits.csv --epochs 4 --batch 16 --out " +
                          dir + "/cls 2>&1";
  std::string out = run_command_capture(cmd + "; echo \"@exit=$?\"");
  ASSERT_NE(out.find("@exit=0"), std::string::npos) << out;
  auto res = nlohmann::json::parse(read_text(dir + "/cls/result.json"), nullptr, false);
  ASSERT_TRUE(res.is_object()) << out;
  EXPECT_EQ(res["train"]["world_size"], 2);
  EXPECT_GT(res["val_auc"].get<double>(), 0.6) << out;
  EXPECT_EQ(read_text(dir + "/cls/history.jsonl").find("\"epoch\":4") != std::string::npos, true);
}

}  // namespace lf
