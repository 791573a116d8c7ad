// Minimal leveled logging to stderr and a progress bar with rate and ETA.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace lf {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3, kQuiet = 4 };
void set_log_level(LogLevel level);
LogLevel log_level();
void log_debug(const std::string& msg);
void log_info(const std::string& msg);
void log_warn(const std::string& msg);
void log_error(const std::string& msg);

// Progress: "label  123/1000 (12.3%)  45.6 it/s  ETA 0:19" on stderr, throttled.
class Progress {
 public:
  // `start`: work already done before this run (resumed training); rate and ETA count from it.
  Progress(std::string label, int64_t total, std::string unit = "it", int64_t start = 0);
  void update(int64_t done, const std::string& extra = "");
  // `done`: where the work ended when it stopped short of the total (time budget); -1 = total.
  void finish(const std::string& extra = "", int64_t done = -1);
  double elapsed_seconds() const;
  static std::string format_duration(double seconds);

 private:
  std::string label_, unit_;
  int64_t total_, start_count_;
  std::chrono::steady_clock::time_point start_, last_print_;
  bool printed_ = false;
};

}  // namespace lf
