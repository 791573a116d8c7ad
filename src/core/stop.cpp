#include "lesionflow/stop.h"

#include <csignal>

namespace lf {

namespace {

volatile std::sig_atomic_t g_signal = 0;
int g_depth = 0;  // nested StopOnSignal scopes (single-threaded use)
struct sigaction g_old_term, g_old_int;

extern "C" void on_stop_signal(int sig) {
  if (g_signal != 0) {  // second signal: default action now
    std::signal(sig, SIG_DFL);
    std::raise(sig);
    return;
  }
  g_signal = sig;
}

}  // namespace

StopOnSignal::StopOnSignal() {
  if (g_depth++ > 0) return;
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, &g_old_term);
  sigaction(SIGINT, &sa, &g_old_int);
}

StopOnSignal::~StopOnSignal() {
  if (--g_depth > 0) return;
  sigaction(SIGTERM, &g_old_term, nullptr);
  sigaction(SIGINT, &g_old_int, nullptr);
}

bool stop_requested() { return g_signal != 0; }
void clear_stop_request() { g_signal = 0; }
int stop_signal() { return g_signal; }
const char* stop_signal_name() {
  return g_signal == SIGTERM ? "SIGTERM" : g_signal == SIGINT ? "SIGINT" : "";
}

}  // namespace lf
