// `lesionflow serve`: a JSON API over the generator, the caption composer and the concept
// measurement (docs/api.md). Loopback by default; every request is validated (unknown fields,
// wrong types, out-of-range numbers, oversized bodies and images are 4xx JSON errors), image
// generation runs one job at a time behind a bounded queue (503 + Retry-After when full), and no
// request field ever names a file.
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "lesionflow/status.h"

namespace lf {

struct ServeOptions {
  std::string checkpoint;          // "" = the shipped generator
  std::vector<std::string> lora;   // adapter[:strength], applied at load
  std::string host = "127.0.0.1";  // loopback unless the user says otherwise
  int port = 8080;                 // 0 = any free port (tests)
  int max_n = 16;                  // images per /v1/generate request
  int max_steps = 64;              // sampler steps
  size_t max_caption_chars = 2000;
  size_t max_body_bytes = 8u << 20;  // request body (uploads included)
  int queue = 4;                     // generate jobs waiting or running; more get 503
  int threads = 8;                   // HTTP worker threads
};

// A running server (tests start one on port 0 and stop it); run_server() blocks instead.
class ApiServer {
 public:
  static Result<std::unique_ptr<ApiServer>> start(const ServeOptions& o);
  ~ApiServer();
  int port() const;
  void stop();
  struct Impl;

 private:
  explicit ApiServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The page served at GET / (src/pipeline/serve_page.cpp).
const char* serve_page_html();

// Loads the model, binds, serves until SIGINT/SIGTERM.
Status run_server(const ServeOptions& o);

}  // namespace lf
