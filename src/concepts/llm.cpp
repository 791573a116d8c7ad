#include "lesionflow/llm.h"

#include <httplib.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "lesionflow/io.h"
#include "lesionflow/log.h"
#include "lesionflow/phantom.h"

namespace lf {

namespace {
std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}
bool has(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}
}  // namespace

bool caption_keeps_facts(const std::string& text_in, const CaptionFacts& f, std::string* why) {
  const std::string t = lower(text_in);
  auto fail = [&](const std::string& w) {
    if (why) *why = w;
    return false;
  };
  if (!f.dx.empty() && f.dx != "unk" && !has(t, lower(dx_long_name(f.dx))))
    return fail("diagnosis '" + dx_long_name(f.dx) + "' missing");
  if (f.site != "unknown" && !f.site.empty() && !has(t, f.site))
    return fail("site '" + f.site + "' missing");
  if (f.age >= 0 && !has(t, std::to_string(static_cast<int>(f.age)))) return fail("age missing");
  for (const auto& c : colour_names()) {
    bool given = std::find(f.colours.begin(), f.colours.end(), c) != f.colours.end();
    if (given && !has(t, c)) return fail("colour '" + c + "' missing");
    if (!f.colours.empty() && !given && has(t, c))
      return fail("colour '" + c + "' was not measured");
  }
  if (f.asymmetry == 0 && (has(t, "asymmetr") || !has(t, "symmetr")))
    return fail("symmetry contradicted or missing");
  if (f.asymmetry > 0 && !has(t, "asymmetr")) return fail("asymmetry missing");
  if (f.label == 1 && has(t, "benign")) return fail("says benign for a malignant lesion");
  if (f.label == 0 && has(t, "malignant")) return fail("says malignant for a benign lesion");
  return true;
}

LlmRewriter::LlmRewriter(LlmConfig cfg) : cfg_(std::move(cfg)) {
  // Split http://host:port/base into host part and base path.
  auto scheme = cfg_.url.find("://");
  auto slash = cfg_.url.find('/', scheme == std::string::npos ? 0 : scheme + 3);
  host_ = slash == std::string::npos ? cfg_.url : cfg_.url.substr(0, slash);
  base_path_ = slash == std::string::npos ? "" : cfg_.url.substr(slash);
  while (!base_path_.empty() && base_path_.back() == '/') base_path_.pop_back();
  if (!cfg_.cache_path.empty()) {
    std::ifstream in(cfg_.cache_path);
    std::string line;
    while (std::getline(in, line)) {
      try {
        auto j = nlohmann::json::parse(line);
        cache_[j.at("key")] = j.at("text");
      } catch (...) {
      }
    }
  }
}

LlmRewriter::~LlmRewriter() = default;

LlmRewriter::Stats LlmRewriter::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

Status LlmRewriter::save_cache() const {
  if (cfg_.cache_path.empty()) return Status::ok_status();
  std::lock_guard<std::mutex> lock(mu_);
  std::string s;
  for (const auto& [k, v] : cache_) s += nlohmann::json{{"key", k}, {"text", v}}.dump() + "\n";
  return write_file_atomic(cfg_.cache_path, s);
}

std::string LlmRewriter::rewrite(const CaptionFacts& f, const std::string& fallback) {
  nlohmann::json facts = {
      {"diagnosis", f.dx.empty() ? "unknown" : dx_long_name(f.dx)},
      {"malignant", f.label == 1   ? "yes"
                    : f.label == 0 ? "no"
                                   : "unknown"},
      {"age", f.age >= 0 ? std::to_string(static_cast<int>(f.age)) : "unknown"},
      {"sex", f.sex},
      {"body_site", f.site},
      {"asymmetric_axes", f.asymmetry >= 0 ? std::to_string(f.asymmetry) : "unknown"},
      {"irregular_border_sectors_of_8", f.border >= 0 ? std::to_string(f.border) : "unknown"},
      {"colours", f.colours},
      {"reference_caption", fallback}};
  const std::string key = hash_bytes(cfg_.model + facts.dump());
  std::lock_guard<std::mutex> lock(mu_);  // one request at a time
  stats_.requests++;
  if (auto it = cache_.find(key); it != cache_.end()) {
    stats_.cached++;
    return it->second;
  }
  nlohmann::json body = {
      {"model", cfg_.model},
      {"temperature", 0.2},
      {"messages",
       {{{"role", "system"},
         {"content",
          "You write one-sentence captions of dermoscopic images for a text-to-image model. "
          "Keep every fact you are given, with the same words for diagnosis, colours, site and "
          "age; state symmetry or asymmetry as given; add nothing that is not given. "
          "Answer with the caption only."}},
        {{"role", "user"}, {"content", facts.dump()}}}}};
  httplib::Client cli(host_);
  cli.set_connection_timeout(
      std::chrono::milliseconds(static_cast<int64_t>(cfg_.timeout_seconds * 1000)));
  cli.set_read_timeout(
      std::chrono::milliseconds(static_cast<int64_t>(cfg_.timeout_seconds * 1000)));
  auto res = cli.Post(base_path_ + "/chat/completions", body.dump(), "application/json");
  if (!res || res->status != 200) {
    stats_.failed++;
    return fallback;
  }
  std::string text;
  try {
    text = nlohmann::json::parse(res->body)
               .at("choices")
               .at(0)
               .at("message")
               .at("content")
               .get<std::string>();
  } catch (...) {
    stats_.failed++;
    return fallback;
  }
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  std::string why;
  if (!caption_keeps_facts(text, f, &why)) {
    stats_.rejected++;
    log_debug("LLM rewrite rejected (" + why + "): " + text);
    return fallback;
  }
  stats_.rewritten++;
  cache_[key] = text;
  return text;
}

}  // namespace lf
