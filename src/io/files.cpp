#include <glob.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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
  // Temporaries of this path left by a killed process (name: PATH.tmp.PID.N, PID not alive).
  glob_t g{};
  if (glob((path + ".tmp.*").c_str(), GLOB_NOSORT | GLOB_NOESCAPE, nullptr, &g) == 0) {
    for (size_t i = 0; i < g.gl_pathc; ++i) {
      const long pid = std::atol(g.gl_pathv[i] + path.size() + 5);
      if (pid > 0 && pid != getpid() && kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH)
        std::remove(g.gl_pathv[i]);
    }
  }
  globfree(&g);
  std::random_device rd;
  std::string tmp = path + ".tmp." + std::to_string(getpid()) + "." + std::to_string(rd() % 100000);
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) return Status::error(tmp + ": cannot open for writing");
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    f.flush();
    if (!f) {
      const int e = errno;
      std::remove(tmp.c_str());
      return Status::error(path + ": write failed: " + std::strerror(e) +
                           " (disk full?); the previous file is unchanged");
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

std::string self_executable_path() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string("lesionflow");
}

std::string base64_encode(const std::string& in) {
  static const char* k = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8) | uint8_t(in[i + 2]);
    out += k[v >> 18];
    out += k[(v >> 12) & 63];
    out += k[(v >> 6) & 63];
    out += k[v & 63];
  }
  if (i < in.size()) {
    uint32_t v = uint8_t(in[i]) << 16;
    if (i + 1 < in.size()) v |= uint8_t(in[i + 1]) << 8;
    out += k[v >> 18];
    out += k[(v >> 12) & 63];
    out += i + 1 < in.size() ? k[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

std::string base64_decode(const std::string& text) {
  static const std::string k = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string raw;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : text) {
    auto p = k.find(c);
    if (p == std::string::npos) continue;
    acc = (acc << 6) | static_cast<uint32_t>(p);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      raw.push_back(static_cast<char>((acc >> bits) & 0xff));
    }
  }
  return raw;
}

std::string run_command_capture(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  pclose(p);
  return out;
}

}  // namespace lf
