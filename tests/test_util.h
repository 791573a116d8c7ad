#pragma once
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "lesionflow/io.h"

namespace lf::test {
inline std::string src_dir() { return LF_SOURCE_DIR; }
inline std::string data_dir() { return src_dir() + "/tests/data"; }
inline std::string ham_dir() { return src_dir() + "/../shared/data/ham10000"; }
inline bool have_ham() { return std::filesystem::exists(ham_dir() + "/HAM10000_metadata.csv"); }
// A fresh temp directory per test.
inline std::string tmp_dir(const std::string& name) {
  auto p = std::filesystem::temp_directory_path() / ("lesionflow_test_" + name);
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p.string();
}

// The real CLI: exit code and everything it printed (stdout + stderr).
struct CliRun {
  int exit_code = -1;
  std::string output;
};
inline CliRun run_cli(const std::string& args) {
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
}  // namespace lf::test

#define LF_ASSERT_OK(expr)                               \
  do {                                                   \
    auto lf_s_ = (expr);                                 \
    ASSERT_TRUE(lf_s_.ok()) << lf_s_.status().message(); \
  } while (0)
