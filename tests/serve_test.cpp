// lesionflow serve: the JSON API on a loopback port with the shipped model. Valid requests, a
// corpus of malformed ones (each a 4xx JSON error, the server still serving after all of them)
// and the bounded queue (503 + Retry-After).
#include "pipeline/serve.h"

#include <httplib.h>

#include <future>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <sstream>

#include "test_util.h"
#include "train/generator.h"

namespace lf {
namespace {

std::unique_ptr<ApiServer> start_server(int queue = 4) {
  ServeOptions o;
  o.checkpoint = test::src_dir() + "/models/lesionflow_ham64.safetensors";
  o.port = 0;
  o.max_n = 8;
  o.max_steps = 64;
  o.queue = queue;
  o.max_body_bytes = 2u << 20;
  auto s = ApiServer::start(o);
  EXPECT_TRUE(s.ok()) << s.status().message();
  return s.ok() ? std::move(*s) : nullptr;
}

std::string png_bytes(int size) {
  cv::Mat m(size, size, CV_8UC3, cv::Scalar(150, 170, 215));
  cv::circle(m, {size / 2, size / 2}, size / 4, cv::Scalar(40, 60, 110), -1);
  std::vector<uchar> b;
  cv::imencode(".png", m, b);
  return std::string(b.begin(), b.end());
}

}  // namespace

// The page's guidance field starts at use_default_sampling()'s value (and falls back to it when
// /v1/model cannot be read): filled in from the one definition, no placeholder left.
TEST(Serve, ThePageStartsFromTheDefaultGuidance) {
  GenerateConfig gc;
  use_default_sampling(gc);
  const std::string page = serve_page_html();
  EXPECT_EQ(page.find("@DEFAULT_CFG@"), std::string::npos);
  std::ostringstream v;
  v << gc.cfg_scale;  // shortest form, e.g. "1.25"
  EXPECT_NE(page.find("step=\"0.25\" value=\"" + v.str() + "\""), std::string::npos) << v.str();
  EXPECT_NE(page.find("m.sampling.cfg||" + v.str() + ";"), std::string::npos) << v.str();
}

TEST(Serve, ValidRequestsGenerateCaptionAndMeasure) {
  auto server = start_server();
  ASSERT_TRUE(server);
  httplib::Client cli("127.0.0.1", server->port());
  cli.set_read_timeout(60, 0);
  auto h = cli.Get("/v1/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  EXPECT_EQ(nlohmann::json::parse(h->body)["status"], "ok");
  auto m = cli.Get("/v1/model");
  ASSERT_TRUE(m);
  EXPECT_EQ(nlohmann::json::parse(m->body)["image_size"], 64);

  auto c = cli.Post("/v1/caption", R"({"dx": "mel", "age": 65, "sex": "male", "site": "back",
      "asymmetry": 2, "colours": ["blue-gray", "black"]})",
                    "application/json");
  ASSERT_TRUE(c);
  ASSERT_EQ(c->status, 200) << c->body;
  const std::string caption = nlohmann::json::parse(c->body)["caption_canonical"];
  EXPECT_NE(caption.find("melanoma"), std::string::npos) << caption;
  EXPECT_NE(caption.find("blue-gray"), std::string::npos) << caption;

  const std::string req =
      nlohmann::json{{"caption", caption}, {"n", 2}, {"seed", 7}, {"steps", 4}}.dump();
  auto g1 = cli.Post("/v1/generate", req, "application/json");
  ASSERT_TRUE(g1);
  ASSERT_EQ(g1->status, 200) << g1->body.substr(0, 300);
  auto j1 = nlohmann::json::parse(g1->body);
  ASSERT_EQ(j1["images"].size(), 2u);
  for (auto& im : j1["images"]) {
    EXPECT_EQ(im["png_base64"].get<std::string>().rfind("iVBORw0KGgo", 0), 0u);  // PNG magic
    EXPECT_TRUE(im["measured"].contains("colours"));
    EXPECT_EQ(im["provenance"]["prompt"], caption);
  }
  EXPECT_NE(j1["images"][0]["png_base64"], j1["images"][1]["png_base64"]);
  // Same request, same images (per-image seeds derived from the request seed).
  auto g2 = cli.Post("/v1/generate", req, "application/json");
  ASSERT_TRUE(g2);
  EXPECT_EQ(nlohmann::json::parse(g2->body)["images"], j1["images"]);
  // Concept fields instead of a caption.
  auto g3 =
      cli.Post("/v1/generate", R"({"dx": "nv", "colours": ["dark brown"], "n": 1, "steps": 2})",
               "application/json");
  ASSERT_TRUE(g3);
  EXPECT_EQ(g3->status, 200) << g3->body.substr(0, 300);

  auto me = cli.Post("/v1/measure", png_bytes(200), "image/png");
  ASSERT_TRUE(me);
  ASSERT_EQ(me->status, 200) << me->body;
  auto mj = nlohmann::json::parse(me->body);
  EXPECT_EQ(mj["width"], 200);
  EXPECT_TRUE(mj["measured"].contains("asymmetry"));
  server->stop();
}

TEST(Serve, MalformedRequestsGetA4xxJsonErrorAndTheServerKeepsServing) {
  auto server = start_server();
  ASSERT_TRUE(server);
  httplib::Client cli("127.0.0.1", server->port());
  cli.set_read_timeout(30, 0);
  struct Bad {
    std::string path, body, type, must_say;
  };
  const std::string J = "application/json";
  std::string huge_png = png_bytes(16);  // header claims 20000 x 20000
  auto put32 = [&](size_t at, uint32_t v) {
    for (int k = 0; k < 4; ++k) huge_png[at + k] = static_cast<char>((v >> (24 - 8 * k)) & 0xFF);
  };
  put32(16, 20000);
  put32(20, 20000);
  const std::vector<Bad> corpus = {
      {"/v1/generate", "{\"caption\": \"a nevus\", ", J, "not valid JSON"},
      {"/v1/generate", "[1, 2]", J, "JSON object"},
      {"/v1/generate", "{\"caption\": \"a nevus\"}", "text/plain", "Content-Type"},
      {"/v1/generate", "{\"caption\": \"a nevus\", \"style\": 1}", J, "unknown field 'style'"},
      {"/v1/generate", "{\"caption\": \"a nevus\", \"n\": 0}", J, "'n' must be in"},
      {"/v1/generate", "{\"caption\": \"a nevus\", \"n\": 100000}", J, "'n' must be in"},
      {"/v1/generate", "{\"caption\": \"a nevus\", \"n\": \"4\"}", J, "'n' must be an integer"},
      {"/v1/generate", "{\"caption\": \"a nevus\", \"steps\": -1}", J, "'steps' must be in"},
      {"/v1/generate", "{\"caption\": \"a nevus\", \"cfg\": \"high\"}", J,
       "'cfg' must be a number"},
      {"/v1/generate", "{\"caption\": \"a nevus\", \"seed\": -5}", J, "'seed' must be in"},
      {"/v1/generate", "{\"caption\": \"a nevus\", \"lora_strength\": 0.5}", J, "needs an adapter"},
      {"/v1/generate", "{\"caption\": \"a nevus\", \"lora_strength\": 7}", J,
       "'lora_strength' must be in"},
      {"/v1/generate", "{\"caption\": \"" + std::string(5000, 'a') + "\"}", J, "limit of 2000"},
      {"/v1/generate", "{\"caption\": \"" + std::string(3u << 20, 'a') + "\"}", J, "too large"},
      {"/v1/generate",
       "{\"caption\": \"b\xe4"
       "ck\"}",
       J, "not valid UTF-8"},
      {"/v1/generate", "{\"caption\": \"a nevus\", \"dx\": \"nv\"}", J, "either 'caption'"},
      {"/v1/generate", "{\"n\": 2}", J, "give 'caption' or concept fields"},
      {"/v1/generate", "{\"dx\": \"mole\"}", J, "'dx' must be one of"},
      {"/v1/generate", "{\"colours\": [\"green\"]}", J, "'colours' may hold"},
      {"/v1/generate", "{\"site\": \"../../etc/passwd\"}", J, "'site' may hold"},
      {"/v1/caption", "{\"age\": 500}", J, "'age' must be in"},
      {"/v1/caption", "{\"sex\": \"x\"}", J, "'sex' must be"},
      {"/v1/caption", "{\"variant\": -1}", J, "'variant' must be in"},
      {"/v1/caption", "{\"dx\": 3}", J, "'dx' must be a string"},
      {"/v1/measure", png_bytes(64).substr(0, 60), "image/png", "not a decodable image"},
      {"/v1/measure", huge_png, "image/png", "20000x20000"},
      {"/v1/measure", "", "image/png", "empty"},
      {"/v1/measure", png_bytes(64), "text/plain", "Content-Type"},
      {"/v1/nope", "{}", J, "no such endpoint"},
  };
  EXPECT_GE(corpus.size(), 20u);
  for (const auto& b : corpus) {
    auto r = cli.Post(b.path.c_str(), b.body, b.type.c_str());
    ASSERT_TRUE(r) << b.path << " " << b.must_say << ": no response";
    EXPECT_GE(r->status, 400) << b.must_say;
    EXPECT_LT(r->status, 500) << b.must_say << ": " << r->body.substr(0, 200);
    nlohmann::json j;
    ASSERT_NO_THROW(j = nlohmann::json::parse(r->body)) << b.must_say << ": " << r->body;
    EXPECT_NE(j.value("error", "").find(b.must_say), std::string::npos)
        << "expected '" << b.must_say << "' in " << j.dump().substr(0, 300);
  }
  auto h = cli.Get("/v1/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  server->stop();
}

TEST(Serve, AFullQueueAnswers503WithRetryAfter) {
  auto server = start_server(/*queue=*/1);
  ASSERT_TRUE(server);
  const int port = server->port();
  auto slow = std::async(std::launch::async, [port] {
    httplib::Client cli("127.0.0.1", port);
    cli.set_read_timeout(120, 0);
    auto r = cli.Post("/v1/generate", R"({"caption": "a nevus", "n": 8, "steps": 24})",
                      "application/json");
    return r ? r->status : -1;
  });
  httplib::Client cli("127.0.0.1", port);
  bool running = false;  // wait until the slow job holds the only slot (health shows it)
  for (int i = 0; i < 500 && !running; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    auto h = cli.Get("/v1/health");
    running = h && nlohmann::json::parse(h->body)["queued"].get<int>() == 1;
  }
  ASSERT_TRUE(running);
  int busy = 0;
  std::string retry;
  auto r =
      cli.Post("/v1/generate", R"({"caption": "a nevus", "n": 1, "steps": 1})", "application/json");
  if (r && r->status == 503) {
    busy = 1;
    retry = r->get_header_value("Retry-After");
    EXPECT_NE(nlohmann::json::parse(r->body)["error"].get<std::string>().find("busy"),
              std::string::npos);
  }
  EXPECT_EQ(busy, 1);
  EXPECT_EQ(retry, "5");
  EXPECT_EQ(slow.get(), 200);
  server->stop();
}

// The page in headless Chromium: the form is filled from the URL (as a shared link fills it),
// Generate is pressed by the page itself (autorun=1), and Chromium waits (virtual time stops
// while the request is open) for the grid. The screenshot must not be blank, and the DOM must
// hold one card per image, each with its measured-concept panel next to the asked concepts.
TEST(Serve, ThePageGeneratesAGridWithMeasuredConceptsInHeadlessChromium) {
  auto server = start_server();
  ASSERT_TRUE(server);
  const std::string dir = test::tmp_dir("serve_page"), shot = dir + "/page.png";
  const std::string url = "'http://127.0.0.1:" + std::to_string(server->port()) +
                          "/?dx=mel&age=65&sex=male&site=back&asymmetry=2&colours=dark%20brown,"
                          "blue-gray&n=2&steps=4&seed=3&autorun=1'";
  const std::string chromium =
      "timeout 180 chromium --headless --no-sandbox --disable-gpu --hide-scrollbars "
      "--virtual-time-budget=120000 --window-size=1280,1000 ";
  std::system((chromium + "--screenshot=" + shot + " " + url + " > /dev/null 2>&1").c_str());
  cv::Mat img = cv::imread(shot);
  ASSERT_FALSE(img.empty())
      << "no screenshot from headless chromium (scripts/setup.sh --test installs it)";
  cv::Mat grey;
  cv::cvtColor(img, grey, cv::COLOR_BGR2GRAY);
  EXPECT_GT(cv::countNonZero(grey < 200) / static_cast<double>(grey.total()), 0.05)
      << "the page looks blank";
  const std::string dom = run_command_capture(chromium + "--dump-dom " + url + " 2>/dev/null");
  auto count = [&](const std::string& needle) {
    size_t n = 0;
    for (size_t k = dom.find(needle); k != std::string::npos; k = dom.find(needle, k + 1)) ++n;
    return n;
  };
  // (needles that the page's script source does not contain)
  EXPECT_EQ(count("alt=\"generated lesion 0\""), 1u) << dom.substr(0, 4000);
  EXPECT_EQ(count("alt=\"generated lesion 1\""), 1u);
  EXPECT_EQ(count("<th></th></tr><tr><td>asymmetry</td>"), 2u);  // the measured panels
  EXPECT_EQ(count("src=\"data:image/png;base64,iVBORw0KGgo"), 2u);
  EXPECT_NE(dom.find("two axes"), std::string::npos);  // asked asymmetry shown in the panel
  EXPECT_NE(dom.find("2 images in"), std::string::npos);
  EXPECT_NE(dom.find("malignant melanoma on the back of a 65-year-old man"), std::string::npos)
      << "the caption was not composed from the form";
}

}  // namespace lf
