#include "lesionflow/scratch.h"

#include <cstdlib>
#include <filesystem>
#include <vector>

#include "lesionflow/io.h"

namespace lf {
namespace fs = std::filesystem;

Result<TempDir> TempDir::create(const std::string& what) {
  std::error_code ec;
  fs::path base = fs::temp_directory_path(ec);
  if (ec) base = "/tmp";
  std::string tmpl = (base / ("lesionflow_" + what + "_XXXXXX")).string();
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (!mkdtemp(buf.data()))
    return Status::error(what + ": cannot create a temporary folder under " + base.string());
  return TempDir(std::string(buf.data()));
}

TempDir::~TempDir() {
  if (!path_) return;  // moved from
  std::error_code ec;
  fs::remove_all(*path_, ec);
}

Result<PartialDir> PartialDir::begin(const std::string& final_dir, const std::string& what) {
  if (fs::exists(final_dir))
    return Status::error(final_dir + ": already exists (" + what + " writes a new folder)");
  std::string partial = final_dir + ".partial";
  std::error_code ec;
  fs::remove_all(partial, ec);
  LF_RETURN_IF_ERROR(make_dirs(partial));
  return PartialDir(final_dir, partial);
}

Status PartialDir::commit() {
  std::error_code ec;
  fs::rename(partial_, final_, ec);
  if (ec)
    return Status::error(final_ + ": cannot move the finished folder into place from " + partial_ +
                         ": " + ec.message());
  return Status::ok_status();
}

}  // namespace lf
