#pragma once
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

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
}  // namespace lf::test

#define LF_ASSERT_OK(expr)                               \
  do {                                                   \
    auto lf_s_ = (expr);                                 \
    ASSERT_TRUE(lf_s_.ok()) << lf_s_.status().message(); \
  } while (0)
