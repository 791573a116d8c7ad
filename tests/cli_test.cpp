// The real CLI on bad flags and empty inputs: a non-zero exit, a message naming the flag (or
// the input) and the problem, and no output written under the final name.
#include <filesystem>
#include <fstream>

#include "lesionflow/io.h"
#include "test_util.h"

namespace lf {
namespace {

using test::CliRun;
using test::run_cli;

struct BadCase {
  std::string args, must_say;
};

}  // namespace

TEST(Cli, BadFlagsFailWithAMessageNamingTheFlag) {
  const std::string dir = test::tmp_dir("cli_bad_flags"), out = dir + "/out";
  const std::vector<BadCase> cases = {
      {"sample --prompt x --n -3 --out " + out, "--n"},
      {"sample --prompt x --n 0 --out " + out, "--n"},
      {"sample --prompt x --steps 0 --out " + out, "--steps"},
      {"sample --prompt x --cfg -1 --out " + out, "--cfg"},
      {"sample --prompt x --shift 0 --out " + out, "--shift"},
      {"sample --prompt x --sampler rk4 --out " + out, "--sampler"},
      {"sample --prompt x --cfg-interval 0.8 0.2 --steps 2 --out " + out, "--cfg-interval"},
      {"train --data x --steps 0 --out " + out, "--steps"},
      {"train --data x --lr -0.1 --out " + out, "--lr"},
      {"train --data x --batch 0 --out " + out, "--batch"},
      {"train --data x --prediction eps --out " + out, "--prediction"},
      {"train --data x --objective ddpm --out " + out, "--objective"},
      {"train --data x --preset medum --out " + out, "--preset"},
      {"--world-size 2 --dist-rank 0 --dist-init tcp://127.0.0.1:1 doctor", "data-parallel"},
      {"--world-size 2 --dist-rank 5 train --data x --out " + out, "rank 5"},
      {"train --data x --objective diffusion --prediction x --out " + out, "--prediction"},
      {"classify train --data x --splits y --epochs 0 --out " + out, "--epochs"},
      {"classify train --data x --splits y --arch resnet --out " + out, "--arch"},
      {"classify train --data x --splits y --arm both --out " + out, "--arm"},
      {"classify train --data x --splits y --real-size -5 --out " + out, "--real-size"},
      {"synth --data x --splits y --total 0 --out " + out, "--total"},
      {"synth --data x --splits y --flatten 2 --out " + out, "--flatten"},
      {"data split --dataset phantom:50 --train 1.5 --out " + out + ".csv", "--train"},
      {"data prepare --dataset phantom:50 --size 0 --out " + out, "--size"},
      {"data prepare --dataset phantom:50 --fit stretch --out " + out, "--fit"},
      {"finetune --base x --rank 0 --out " + out, "--rank"},
      {"distill --teacher x --student-steps 0 --out " + out, "--student-steps"},
      {"ae train --data x --steps 0 --out " + out, "--steps"},
      {"bench --reps 0", "--reps"},
      {"--threads -2 doctor", "--threads"},
  };
  for (const auto& c : cases) {
    CliRun r = run_cli(c.args);
    EXPECT_NE(r.exit_code, 0) << c.args << "\n" << r.output;
    EXPECT_NE(r.output.find(c.must_say), std::string::npos) << c.args << "\n" << r.output;
    EXPECT_EQ(r.output.find("unexpected exception"), std::string::npos) << c.args << "\n"
                                                                        << r.output;
    EXPECT_EQ(r.output.find("1797693134862315"), std::string::npos)  // a readable range
        << c.args << "\n"
        << r.output;
  }
  EXPECT_FALSE(std::filesystem::exists(out)) << "a failed command left output behind";
}

TEST(Cli, ConceptsMeasureOnAFolderWithoutReadableImagesIsAnError) {
  const std::string dir = test::tmp_dir("cli_measure_empty");
  CliRun empty = run_cli("concepts measure --images " + dir);
  EXPECT_NE(empty.exit_code, 0);
  EXPECT_NE(empty.output.find("no images to measure"), std::string::npos) << empty.output;
  std::ofstream(dir + "/broken.png") << "not a png";
  CliRun broken = run_cli("concepts measure --images " + dir);
  EXPECT_NE(broken.exit_code, 0);
  EXPECT_NE(broken.output.find("could be read"), std::string::npos) << broken.output;
  EXPECT_FALSE(std::filesystem::exists(dir + "/concepts.jsonl"));
}

// SIGTERM in the middle of training: the step reached is checkpointed (not the last periodic
// checkpoint), the command exits with 143 and says so, and --resume continues from that step.
TEST(Cli, SigtermCheckpointsTheCurrentStepAndResumeContinuesFromIt) {
  const std::string dir = test::tmp_dir("cli_sigterm"),
                    lf = std::string(LF_BINARY_DIR) + "/lesionflow";
  ASSERT_EQ(run_cli("--threads 1 data prepare --dataset phantom:40 --size 16 --out " + dir +
                    "/ph --quiet")
                .exit_code,
            0);
  const std::string train = "\"" + lf + "\" --threads 1 train --data " + dir +
                            "/ph --preset tiny --steps 100000 --batch 4 --sample-every 0 "
                            "--val-every 0 --ckpt-every 100000 --log-every 1 --out " +
                            dir + "/run";
  // Start, wait for a few logged steps, SIGTERM, wait for the exit code.
  std::string out =
      run_command_capture(train + " > " + dir +
                          "/log.txt 2>&1 & pid=$!; for i in $(seq 600); do "
                          "[ \"$(wc -l < " +
                          dir +
                          "/run/metrics.jsonl 2>/dev/null || echo 0)\" -ge 5 ] && break; "
                          "sleep 0.05; done; kill -TERM $pid; wait $pid; echo \"@exit=$?\"");
  const std::string log = [&] {
    std::ifstream in(dir + "/log.txt");
    return std::string(std::istreambuf_iterator<char>(in), {});
  }();
  EXPECT_NE(out.find("@exit=143"), std::string::npos) << out << log;
  auto k = log.find("SIGTERM received: checkpointing step ");
  ASSERT_NE(k, std::string::npos) << log;
  const int step = std::atoi(log.c_str() + k + 37);
  EXPECT_GE(step, 5) << log;
  EXPECT_NE(log.find("(training: with --resume)"), std::string::npos) << log;
  ASSERT_TRUE(std::filesystem::exists(dir + "/run/state.bin"));
  // Resume for 3 more steps: it starts exactly where the signal stopped it.
  CliRun resumed = run_cli(
      "--threads 1 train --data " + dir + "/ph --preset tiny --steps " + std::to_string(step + 3) +
      " --batch 4 --sample-every 0 --val-every 0 --out " + dir + "/run --resume");
  EXPECT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("resumed " + dir + "/run at step " + std::to_string(step)),
            std::string::npos)
      << resumed.output;
}

// train --init: a run starts from a trained generator (its architecture, tokenizer and weights,
// a fresh optimizer), so on the same first batch and noise its loss is below a fresh model's; its
// checkpoints record the init; flags that contradict the init are refused.
TEST(Cli, TrainInitContinuesFromATrainedGenerator) {
  const std::string dir = test::tmp_dir("cli_train_init");
  ASSERT_EQ(run_cli("--threads 1 data prepare --dataset phantom:48 --size 16 --out " + dir +
                    "/ph --quiet")
                .exit_code,
            0);
  const std::string common = "--threads 1 train --data " + dir +
                             "/ph --batch 8 --sample-every 0 --val-every 0 --log-every 1 ";
  CliRun base = run_cli(common + "--preset tiny --steps 80 --lr 2e-3 --out " + dir + "/base");
  ASSERT_EQ(base.exit_code, 0) << base.output;
  CliRun fresh = run_cli(common + "--preset tiny --steps 2 --out " + dir + "/fresh");
  ASSERT_EQ(fresh.exit_code, 0) << fresh.output;
  CliRun init =
      run_cli(common + "--steps 2 --init " + dir + "/base/ema.safetensors --out " + dir + "/init");
  ASSERT_EQ(init.exit_code, 0) << init.output;
  EXPECT_NE(init.output.find("starting from"), std::string::npos) << init.output;
  auto first_loss = [](const std::string& metrics) {
    std::ifstream in(metrics);
    std::string line;
    std::getline(in, line);
    return nlohmann::json::parse(line)["loss"].get<double>();
  };
  const double l_fresh = first_loss(dir + "/fresh/metrics.jsonl"),
               l_init = first_loss(dir + "/init/metrics.jsonl");
  EXPECT_LT(l_init, 0.8 * l_fresh) << "fresh " << l_fresh << ", from the trained one " << l_init;
  auto st = load_safetensors(dir + "/init/ema.safetensors");
  ASSERT_TRUE(st.ok()) << st.status().message();
  auto rec = nlohmann::json::parse(st->metadata["init"]);
  EXPECT_EQ(rec["hash"].get<std::string>(), *hash_file(dir + "/base/ema.safetensors"));
  EXPECT_EQ(rec["step"].get<int64_t>(), 80);
  // Every checkpoint records the structure phrases of its training captions (synth compares its
  // prompts with them): plain phantoms have no structures, so every share is 0.
  auto profile = nlohmann::json::parse(st->metadata["caption_profile"]);
  ASSERT_EQ(profile.size(), 5u) << profile.dump();
  for (auto& [phrase, share] : profile.items()) EXPECT_EQ(share.get<double>(), 0.0) << phrase;
  // --add-single: two zero-gated single-stream blocks appended; the grown model computes what
  // the init computes, so the first loss (same batch and noise) is the same, and the checkpoint
  // records the deeper architecture.
  CliRun grown = run_cli(common + "--steps 2 --add-single 2 --init " + dir +
                         "/base/ema.safetensors --out " + dir + "/grown");
  ASSERT_EQ(grown.exit_code, 0) << grown.output;
  EXPECT_NE(grown.output.find("single-stream blocks"), std::string::npos) << grown.output;
  const double l_grown = first_loss(dir + "/grown/metrics.jsonl");
  EXPECT_NEAR(l_grown, l_init, 1e-5 * l_init) << "init " << l_init << ", grown " << l_grown;
  auto gst = load_safetensors(dir + "/grown/ema.safetensors");
  ASSERT_TRUE(gst.ok()) << gst.status().message();
  auto base_cfg =
      nlohmann::json::parse(load_safetensors(dir + "/base/ema.safetensors")->metadata["config"]);
  auto grown_cfg = nlohmann::json::parse(gst->metadata["config"]);
  EXPECT_EQ(grown_cfg["single_blocks"].get<int>(), base_cfg["single_blocks"].get<int>() + 2);
  CliRun no_init = run_cli(common + "--preset tiny --steps 2 --add-single 1 --out " + dir + "/ni");
  EXPECT_NE(no_init.exit_code, 0);
  EXPECT_NE(no_init.output.find("--add-single grows the generator of --init"), std::string::npos)
      << no_init.output;
  CliRun bad = run_cli(common + "--steps 2 --patch 2 --init " + dir +
                       "/base/ema.safetensors --out " + dir + "/bad");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("--patch 2 differs"), std::string::npos) << bad.output;
}

// caption is resumable: SIGTERM mid-run exits 143 and keeps the finished images in its journal;
// the same command continues from them and writes exactly what an uninterrupted run writes.
TEST(Cli, CaptionStoppedBySigtermResumesToTheUninterruptedResult) {
  const std::string dir = test::tmp_dir("cli_caption_resume"),
                    lf = std::string(LF_BINARY_DIR) + "/lesionflow";
  const std::string args = " --threads 1 caption --dataset phantom:400 --quiet --out ";
  std::string out =
      run_command_capture("\"" + lf + "\"" + args + dir + "/b.jsonl > " + dir +
                          "/log.txt 2>&1 & pid=$!; for i in $(seq 600); do "
                          "[ \"$(wc -l < " +
                          dir +
                          "/b.jsonl.partial.jsonl 2>/dev/null || echo 0)\" -ge 40 ] && "
                          "break; sleep 0.02; done; kill -TERM $pid; wait $pid; echo \"@exit=$?\"");
  EXPECT_NE(out.find("@exit=143"), std::string::npos) << out;
  EXPECT_FALSE(std::filesystem::exists(dir + "/b.jsonl"));
  ASSERT_TRUE(std::filesystem::exists(dir + "/b.jsonl.partial.jsonl"));
  CliRun resumed = run_cli("--json" + args + dir + "/b.jsonl");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  auto k = resumed.output.find("\"resumed\": ");
  ASSERT_NE(k, std::string::npos) << resumed.output;
  const int n_resumed = std::atoi(resumed.output.c_str() + k + 11);
  EXPECT_GE(n_resumed, 39) << resumed.output;
  EXPECT_LT(n_resumed, 700);
  EXPECT_FALSE(std::filesystem::exists(dir + "/b.jsonl.partial.jsonl"));
  ASSERT_EQ(run_cli(args + dir + "/a.jsonl").exit_code, 0);
  EXPECT_EQ(*read_file(dir + "/a.jsonl"), *read_file(dir + "/b.jsonl"));
}

}  // namespace lf
