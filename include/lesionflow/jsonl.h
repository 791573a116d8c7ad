// JSON Lines reading with errors that name the file and line.
#pragma once
#include <cstdio>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "lesionflow/status.h"

namespace lf {

// Every non-empty line parsed as JSON; a bad line is an error "PATH:LINE: ...". line_numbers,
// when given, receives the 1-based file line of each record.
Result<std::vector<nlohmann::json>> read_jsonl(const std::string& path,
                                               std::vector<int>* line_numbers = nullptr);

// Like read_jsonl for a file that a killed writer may have left: a last line without its newline
// that does not parse is a torn append and is dropped with a warning; a bad line anywhere else
// is damage the writer did not make and stays an error.
Result<std::vector<nlohmann::json>> read_jsonl_tolerant(const std::string& path);

// The resume journal of a long command that makes one record per item (caption, concepts
// measure): every finished record is appended and flushed at once, so a kill loses at most the
// items in flight. The first line is a header naming the run (command and options); a journal
// of other options is not resumed from (it is set aside and the run starts afresh, with a
// warning). When the command has written its real output (atomically) it removes the journal.
class JsonlJournal {
 public:
  // Opens (creating) PATH; the records of an earlier run with the same header go to *done.
  static Result<std::unique_ptr<JsonlJournal>> open(const std::string& path,
                                                    const nlohmann::json& header,
                                                    std::vector<nlohmann::json>* done);
  ~JsonlJournal();
  JsonlJournal(const JsonlJournal&) = delete;
  JsonlJournal& operator=(const JsonlJournal&) = delete;
  // Thread-safe; an I/O error is remembered and returned by every later call and by finish().
  Status append(const nlohmann::json& record);
  // The first write error, if any.
  Status status();
  // Closes and deletes the journal (call after the real output is safely written).
  Status finish();
  const std::string& path() const { return path_; }

 private:
  JsonlJournal(std::string path, std::FILE* f) : path_(std::move(path)), f_(f) {}
  std::string path_;
  std::FILE* f_;
  std::mutex mu_;
  std::string error_;
};

}  // namespace lf
