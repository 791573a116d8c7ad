// Folders that exist only while work is in progress, in one place: a private temporary folder
// removed with its content when it goes out of scope, and a new output folder written under a
// ".partial" name and moved to its final name only when complete.
#pragma once
#include <memory>
#include <string>

#include "lesionflow/status.h"

namespace lf {

// A fresh folder under the system's temp directory ("<tmp>/lesionflow_<what>_XXXXXX"), removed
// with everything in it by the destructor (also on an error return or an exception).
class TempDir {
 public:
  static Result<TempDir> create(const std::string& what);
  TempDir(TempDir&&) noexcept = default;
  TempDir& operator=(TempDir&&) noexcept = default;
  ~TempDir();
  const std::string& path() const { return *path_; }

 private:
  explicit TempDir(std::string p) : path_(std::make_unique<std::string>(std::move(p))) {}
  std::unique_ptr<std::string> path_;
};

// A new output folder `final_dir`, written as "<final_dir>.partial": begin() refuses an existing
// final folder (naming `what`), removes a .partial a killed earlier attempt left, and creates it;
// commit() renames it to the final name. A reader never sees a half-written folder. Without
// commit() the .partial folder stays for inspection and the next attempt replaces it.
class PartialDir {
 public:
  static Result<PartialDir> begin(const std::string& final_dir, const std::string& what);
  const std::string& path() const { return partial_; }
  Status commit();

 private:
  PartialDir(std::string f, std::string p) : final_(std::move(f)), partial_(std::move(p)) {}
  std::string final_, partial_;
};

}  // namespace lf
