#include "lesionflow/log.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <mutex>

namespace lf {
namespace {
std::atomic<int> g_level{static_cast<int>(LogLevel::kInfo)};
std::mutex g_mu;
void emit(LogLevel lvl, const char* tag, const std::string& msg) {
  if (static_cast<int>(lvl) < g_level.load()) return;
  std::lock_guard<std::mutex> lock(g_mu);
  std::fprintf(stderr, "%s%s\n", tag, msg.c_str());
}
}  // namespace

void set_log_level(LogLevel level) { g_level = static_cast<int>(level); }
LogLevel log_level() { return static_cast<LogLevel>(g_level.load()); }
void log_debug(const std::string& m) { emit(LogLevel::kDebug, "[debug] ", m); }
void log_info(const std::string& m) { emit(LogLevel::kInfo, "", m); }
void log_warn(const std::string& m) { emit(LogLevel::kWarn, "warning: ", m); }
void log_error(const std::string& m) { emit(LogLevel::kError, "error: ", m); }

Progress::Progress(std::string label, int64_t total, std::string unit, int64_t start)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total), start_count_(start) {
  start_ = last_print_ = std::chrono::steady_clock::now();
}

double Progress::elapsed_seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

std::string Progress::format_duration(double s) {
  if (s < 0 || s > 1e7) return "?";
  int64_t t = static_cast<int64_t>(s + 0.5);
  char buf[32];
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", (long long)(t / 3600),
                  (long long)(t / 60 % 60), (long long)(t % 60));
  else
    std::snprintf(buf, sizeof buf, "%lld:%02lld", (long long)(t / 60), (long long)(t % 60));
  return buf;
}

void Progress::update(int64_t done, const std::string& extra) {
  if (log_level() > LogLevel::kInfo) return;
  auto now = std::chrono::steady_clock::now();
  bool tty = isatty(2);
  double since = std::chrono::duration<double>(now - last_print_).count();
  // Redraw at most 4x/s on a terminal; every 10 s in logs.
  if (printed_ && since < (tty ? 0.25 : 10.0) && done < total_) return;
  last_print_ = now;
  printed_ = true;
  double el = elapsed_seconds();
  double rate = el > 0 ? (done - start_count_) / el : 0;
  double eta = (rate > 0 && total_ > 0) ? (total_ - done) / rate : -1;
  std::lock_guard<std::mutex> lock(g_mu);
  std::fprintf(stderr, "%s%s %lld/%lld (%.1f%%) %.1f %s/s elapsed %s ETA %s %s%s", tty ? "\r" : "",
               label_.c_str(), (long long)done, (long long)total_,
               total_ > 0 ? 100.0 * done / total_ : 0.0, rate, unit_.c_str(),
               format_duration(el).c_str(), format_duration(eta).c_str(), extra.c_str(),
               tty ? "\x1b[K" : "\n");
  std::fflush(stderr);
}

void Progress::finish(const std::string& extra, int64_t done) {
  if (log_level() > LogLevel::kInfo) return;
  double el = elapsed_seconds();
  if (done < 0) done = total_;
  std::lock_guard<std::mutex> lock(g_mu);
  std::fprintf(stderr, "%s%s done: %lld %s in %s (%.1f %s/s) %s\n", isatty(2) ? "\r\x1b[K" : "",
               label_.c_str(), (long long)done, unit_.c_str(), format_duration(el).c_str(),
               el > 0 ? (done - start_count_) / el : 0.0, unit_.c_str(), extra.c_str());
}

}  // namespace lf
