// The real CLI on bad flags and empty inputs: a non-zero exit, a message naming the flag (or
// the input) and the problem, and no output written under the final name.
#include <filesystem>
#include <fstream>

#include "lesionflow/io.h"
#include "test_util.h"

namespace lf {
namespace {

struct CliRun {
  int exit_code = -1;
  std::string output;  // stdout + stderr
};

CliRun run_cli(const std::string& args) {
  const std::string lf = std::string(LF_BINARY_DIR) + "/lesionflow";
  std::string out = run_command_capture("\"" + lf + "\" " + args + " 2>&1; echo \"@exit=$?\"");
  CliRun r;
  auto k = out.rfind("@exit=");
  if (k != std::string::npos) {
    r.exit_code = std::atoi(out.c_str() + k + 6);
    r.output = out.substr(0, k);
  }
  return r;
}

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
  }
  EXPECT_FALSE(std::filesystem::exists(out)) << "a failed command left output behind";
}

TEST(Cli, ConceptsMeasureOnAFolderWithoutReadableImagesIsAnError) {
  const std::string dir = test::tmp_dir("cli_measure_empty");
  CliRun empty = run_cli("concepts measure --images " + dir);
  EXPECT_NE(empty.exit_code, 0);
  EXPECT_NE(empty.output.find("no PNG or JPEG images"), std::string::npos) << empty.output;
  std::ofstream(dir + "/broken.png") << "not a png";
  CliRun broken = run_cli("concepts measure --images " + dir);
  EXPECT_NE(broken.exit_code, 0);
  EXPECT_NE(broken.output.find("could be read"), std::string::npos) << broken.output;
  EXPECT_FALSE(std::filesystem::exists(dir + "/concepts.jsonl"));
}

}  // namespace lf
