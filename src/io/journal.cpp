// JSONL files written by commands that can be killed: tolerant reading and the resume journal.
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <sstream>

#include "lesionflow/io.h"
#include "lesionflow/jsonl.h"
#include "lesionflow/log.h"

namespace lf {

namespace {
// tolerate_torn: a bad last line without its newline is dropped, not an error.
Result<std::vector<nlohmann::json>> parse_jsonl(const std::string& path,
                                                std::vector<int>* line_numbers,
                                                bool tolerate_torn) {
  if (!file_exists(path)) return Status::error(path + ": cannot open");
  LF_ASSIGN_OR_RETURN(std::string text, read_file(path));
  const bool ends_clean = text.empty() || text.back() == '\n';
  std::istringstream in(text);
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
      if (tolerate_torn && in.peek() == EOF && !ends_clean) {
        log_warn(path + ":" + std::to_string(ln) +
                 ": dropped a torn last line (an interrupted write); its item is done again");
        break;
      }
      return Status::error(path + ":" + std::to_string(ln) + ": invalid JSON: " + e.what());
    }
  }
  return out;
}
}  // namespace

Result<std::vector<nlohmann::json>> read_jsonl(const std::string& path,
                                               std::vector<int>* line_numbers) {
  return parse_jsonl(path, line_numbers, false);
}

Result<std::vector<nlohmann::json>> read_jsonl_tolerant(const std::string& path) {
  return parse_jsonl(path, nullptr, true);
}

Result<std::unique_ptr<JsonlJournal>> JsonlJournal::open(const std::string& path,
                                                         const nlohmann::json& header,
                                                         std::vector<nlohmann::json>* done) {
  done->clear();
  const nlohmann::json head = {{"journal", header}};
  std::string keep = head.dump() + "\n";
  if (file_exists(path)) {
    auto recs = read_jsonl_tolerant(path);
    if (!recs.ok() || recs->empty() || (*recs)[0] != head) {
      const std::string aside = path + ".old";
      std::error_code ec;
      std::filesystem::rename(path, aside, ec);
      log_warn(
          path + ": " +
          (recs.ok() ? std::string("an earlier run with other options") : recs.status().message()) +
          "; not resumed from (kept as " + aside + "), starting afresh");
    } else {
      done->assign(recs->begin() + 1, recs->end());
      for (const auto& r : *done) keep += r.dump() + "\n";
      log_info(path + ": resuming, " + std::to_string(done->size()) + " items already done");
    }
  }
  // Rewrite without a torn tail, so that appends start on a fresh line.
  LF_RETURN_IF_ERROR(write_file_atomic(path, keep));
  std::FILE* f = std::fopen(path.c_str(), "ab");
  if (!f) return Status::error(path + ": cannot open for appending: " + std::strerror(errno));
  return std::unique_ptr<JsonlJournal>(new JsonlJournal(path, f));
}

JsonlJournal::~JsonlJournal() {
  if (f_) std::fclose(f_);
}

Status JsonlJournal::append(const nlohmann::json& record) {
  const std::string line = record.dump() + "\n";
  std::lock_guard<std::mutex> lock(mu_);
  if (error_.empty() && f_ &&
      (std::fwrite(line.data(), 1, line.size(), f_) != line.size() || std::fflush(f_) != 0))
    error_ = path_ + ": write failed: " + std::strerror(errno);
  return error_.empty() ? Status::ok_status() : Status::error(error_);
}

Status JsonlJournal::status() {
  std::lock_guard<std::mutex> lock(mu_);
  return error_.empty() ? Status::ok_status() : Status::error(error_);
}

Status JsonlJournal::finish() {
  std::lock_guard<std::mutex> lock(mu_);
  if (f_) std::fclose(f_);
  f_ = nullptr;
  if (!error_.empty()) return Status::error(error_);
  std::error_code ec;
  std::filesystem::remove(path_, ec);
  return Status::ok_status();
}

}  // namespace lf
