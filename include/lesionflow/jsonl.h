// JSON Lines reading with errors that name the file and line.
#pragma once
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "lesionflow/status.h"

namespace lf {

// Every non-empty line parsed as JSON; a bad line is an error "PATH:LINE: ...". line_numbers,
// when given, receives the 1-based file line of each record.
inline Result<std::vector<nlohmann::json>> read_jsonl(const std::string& path,
                                                      std::vector<int>* line_numbers = nullptr) {
  std::ifstream in(path);
  if (!in) return Status::error(path + ": cannot open");
  std::vector<nlohmann::json> out;
  std::string line;
  int ln = 0;
  while (std::getline(in, line)) {
    ++ln;
    if (line.empty()) continue;
    try {
      out.push_back(nlohmann::json::parse(line));
      if (line_numbers) line_numbers->push_back(ln);
    } catch (const std::exception& e) {
      return Status::error(path + ":" + std::to_string(ln) + ": invalid JSON: " + e.what());
    }
  }
  return out;
}

}  // namespace lf
