#include "lesionflow/llm.h"

#include <httplib.h>

#include <atomic>
#include <thread>

#include "test_util.h"

namespace lf {

namespace {
// A local stub of an OpenAI-compatible server. mode: 0 echo a faithful rewrite, 1 drop a colour,
// 2 answer 500, 3 answer too slowly.
struct Stub {
  httplib::Server srv;
  std::thread th;
  int port = 0;
  std::atomic<int> mode{0}, hits{0};
  Stub() {
    srv.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
      hits++;
      auto body = nlohmann::json::parse(req.body);
      auto facts = nlohmann::json::parse(body["messages"][1]["content"].get<std::string>());
      std::string cap = "A " + facts["diagnosis"].get<std::string>() + " seen on the " +
                        facts["body_site"].get<std::string>() + " of a " +
                        facts["age"].get<std::string>() + " year old, asymmetric, with ";
      auto cols = facts["colours"];
      for (size_t i = 0; i < cols.size(); ++i)
        if (!(mode == 1 && i == 0)) cap += cols[i].get<std::string>() + " ";
      if (mode == 2) {
        res.status = 500;
        return;
      }
      if (mode == 3) std::this_thread::sleep_for(std::chrono::milliseconds(1500));
      res.set_content(
          nlohmann::json{{"choices", {{{"message", {{"role", "assistant"}, {"content", cap}}}}}}}
              .dump(),
          "application/json");
    });
    port = srv.bind_to_any_port("127.0.0.1");
    th = std::thread([this] { srv.listen_after_bind(); });
  }
  ~Stub() {
    srv.stop();
    th.join();
  }
};
}  // namespace

TEST(Llm, FactCheckRejectsDroppedOrContradictedFacts) {
  CaptionFacts f;
  f.dx = "mel";
  f.label = 1;
  f.site = "back";
  f.age = 60;
  f.asymmetry = 2;
  f.colours = {"dark brown", "black"};
  std::string why;
  EXPECT_TRUE(caption_keeps_facts(
      "An asymmetric melanoma on the back of a 60-year-old, dark brown and black", f, &why))
      << why;
  EXPECT_FALSE(caption_keeps_facts(
      "An asymmetric melanoma on the back of a 60-year-old, dark brown", f, &why));
  EXPECT_NE(why.find("black"), std::string::npos);
  EXPECT_FALSE(caption_keeps_facts(
      "An asymmetric melanoma on the back of a 60-year-old, dark brown, black and red", f, &why));
  EXPECT_FALSE(caption_keeps_facts(
      "A symmetric melanoma on the back of a 60-year-old, dark brown and black", f, &why));
  EXPECT_FALSE(caption_keeps_facts(
      "A benign asymmetric melanoma on the back of a 60-year-old, dark brown and black", f, &why));
}

TEST(Llm, RewritesAgainstALocalStubWithCacheFallbackAndTimeout) {
  Stub stub;
  ASSERT_GT(stub.port, 0);
  CaptionFacts f;
  f.dx = "mel";
  f.label = 1;
  f.site = "back";
  f.age = 60;
  f.asymmetry = 2;
  f.colours = {"dark brown", "black"};
  std::string cache = test::tmp_dir("llm") + "/cache.jsonl";
  LlmConfig cfg{"http://127.0.0.1:" + std::to_string(stub.port) + "/v1", "stub", 0.5, cache};
  {
    LlmRewriter rw(cfg);
    std::string a = rw.rewrite(f, "fallback");
    EXPECT_NE(a, "fallback");
    EXPECT_NE(a.find("melanoma"), std::string::npos);
    EXPECT_EQ(rw.rewrite(f, "fallback"), a);  // served from the cache
    EXPECT_EQ(stub.hits.load(), 1);
    stub.mode = 1;  // drops a colour -> rejected
    f.age = 61;
    EXPECT_EQ(rw.rewrite(f, "fallback"), "fallback");
    stub.mode = 2;  // server error -> fallback
    f.age = 62;
    EXPECT_EQ(rw.rewrite(f, "fallback"), "fallback");
    stub.mode = 3;  // slower than the 0.5 s timeout -> fallback
    f.age = 63;
    EXPECT_EQ(rw.rewrite(f, "fallback"), "fallback");
    auto s = rw.stats();
    EXPECT_EQ(s.requests, 5);
    EXPECT_EQ(s.cached, 1);
    EXPECT_EQ(s.rewritten, 1);
    EXPECT_EQ(s.rejected, 1);
    EXPECT_EQ(s.failed, 2);
    ASSERT_TRUE(rw.save_cache().ok());
  }
  // A new rewriter reads the cache from disk: no request for the first facts.
  stub.mode = 0;
  int before = stub.hits;
  LlmRewriter rw2(cfg);
  f.age = 60;
  EXPECT_NE(rw2.rewrite(f, "fallback"), "fallback");
  EXPECT_EQ(stub.hits.load(), before);
  // Unreachable server -> fallback, counted.
  LlmRewriter dead({"http://127.0.0.1:1/v1", "stub", 0.5, ""});
  EXPECT_EQ(dead.rewrite(f, "fallback"), "fallback");
  EXPECT_EQ(dead.stats().failed, 1);
}

}  // namespace lf
