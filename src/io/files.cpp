#include <cstdlib>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "lesionflow/io.h"

namespace lf {
namespace fs = std::filesystem;

Status write_file_atomic(const std::string& path, const std::string& bytes) {
  fs::path p(path);
  if (p.has_parent_path()) {
    std::error_code ec;
    fs::create_directories(p.parent_path(), ec);
    if (ec) return Status::error(path + ": cannot create directory: " + ec.message());
  }
  std::random_device rd;
  std::string tmp = path + ".tmp." + std::to_string(getpid()) + "." + std::to_string(rd() % 100000);
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) return Status::error(tmp + ": cannot open for writing");
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    f.flush();
    if (!f) {
      std::remove(tmp.c_str());
      return Status::error(tmp + ": write failed (disk full?)");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return Status::error(path + ": rename from temp file failed");
  }
  return Status::ok_status();
}

Result<std::string> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return Status::error(path + ": cannot open (does it exist?)");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

Status make_dirs(const std::string& path) {
  std::error_code ec;
  fs::create_directories(path, ec);
  if (ec) return Status::error(path + ": cannot create directory: " + ec.message());
  return Status::ok_status();
}

bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

std::string hash_bytes(const std::string& bytes) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

Result<std::string> hash_file(const std::string& path) {
  LF_ASSIGN_OR_RETURN(std::string bytes, read_file(path));
  return hash_bytes(bytes);
}

std::string shipped_model_path(const std::string& file) {
  std::vector<std::string> dirs;
  if (const char* env = std::getenv("LESIONFLOW_MODELS")) dirs.push_back(env);
  dirs.push_back("models");
#ifdef LESIONFLOW_MODELS_DIR
  dirs.push_back(LESIONFLOW_MODELS_DIR);
#endif
  for (const auto& d : dirs) {
    std::string p = d + "/" + file;
    if (file_exists(p)) return p;
  }
  return "";
}

}  // namespace lf
