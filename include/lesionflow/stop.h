// Graceful stop of long training loops on SIGTERM or SIGINT (Ctrl-C). While a StopOnSignal is
// alive, the first such signal only sets a flag: the loop sees stop_requested(), writes its
// checkpoint and returns, and the command exits with 128 + the signal number. A second signal
// kills at once. Outside a StopOnSignal the signals keep their default action.
#pragma once

namespace lf {

class StopOnSignal {
 public:
  StopOnSignal();
  ~StopOnSignal();
  StopOnSignal(const StopOnSignal&) = delete;
  StopOnSignal& operator=(const StopOnSignal&) = delete;
};

bool stop_requested();
int stop_signal();               // the signal that asked to stop, 0 if none
const char* stop_signal_name();  // "SIGTERM", "SIGINT" or ""
// For commands whose normal end is a signal (serve): forget it, so the exit is 0.
void clear_stop_request();

}  // namespace lf
