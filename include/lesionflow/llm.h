// Optional caption rewrite by a local OpenAI-compatible chat-completions server (llama.cpp,
// Ollama, ...). Every rewrite is checked against the facts; failures fall back to the composer.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "lesionflow/captions.h"
#include "lesionflow/status.h"

namespace lf {

struct LlmConfig {
  std::string url;              // e.g. http://127.0.0.1:8080/v1
  std::string model = "local";  // "model" field of the request
  double timeout_seconds = 30;
  std::string cache_path;  // JSONL cache keyed by content hash ("" = in memory only)
};

// True when `text` names every given fact and contradicts none (colour names not measured,
// "symmetric" vs "asymmetric"); otherwise *why says what is wrong.
bool caption_keeps_facts(const std::string& text, const CaptionFacts& f, std::string* why);

class LlmRewriter {
 public:
  explicit LlmRewriter(LlmConfig cfg);
  ~LlmRewriter();
  // The rewrite, or `fallback` when the server fails, times out or drops/contradicts a fact.
  std::string rewrite(const CaptionFacts& f, const std::string& fallback);
  struct Stats {
    int64_t requests = 0, rewritten = 0, cached = 0, failed = 0, rejected = 0;
  };
  Stats stats() const;
  Status save_cache() const;

 private:
  LlmConfig cfg_;
  std::string host_, base_path_;
  mutable std::mutex mu_;
  std::map<std::string, std::string> cache_;
  Stats stats_;
};

}  // namespace lf
