// lesionflow serve: see serve.h and docs/api.md.
#include "pipeline/serve.h"

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <mutex>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <set>
#include <thread>

#include "adapters/lora.h"
#include "data/images_torch.h"
#include "lesionflow/captions.h"
#include "lesionflow/concepts.h"
#include "lesionflow/io.h"
#include "lesionflow/log.h"
#include "lesionflow/phantom.h"
#include "lesionflow/record_pixels.h"
#include "lesionflow/rng.h"
#include "lesionflow/stop.h"
#include "pipeline/generator_runs.h"
#include "train/generator.h"

namespace lf {

namespace {

// A request the API refuses: HTTP status and a message for the JSON body.
struct HttpError {
  int status;
  std::string message;
};

void send_json(httplib::Response& res, int status, const nlohmann::json& j) {
  res.status = status;
  res.set_content(j.dump(), "application/json");
}

// The JSON object of a request body, with only `allowed` keys.
nlohmann::json json_body(const httplib::Request& req, const std::set<std::string>& allowed) {
  const std::string ct = req.get_header_value("Content-Type");
  if (ct.rfind("application/json", 0) != 0)
    throw HttpError{415, "Content-Type must be application/json, got '" + ct.substr(0, 80) + "'"};
  if (invalid_utf8_at(req.body) != std::string::npos)
    throw HttpError{400, "the body is not valid UTF-8"};
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(req.body);
  } catch (const std::exception& e) {
    throw HttpError{400, std::string("the body is not valid JSON: ") + e.what()};
  }
  if (!j.is_object()) throw HttpError{400, "the body must be a JSON object"};
  for (auto& [k, v] : j.items())
    if (!allowed.count(k)) {
      std::string known;
      for (auto& a : allowed) known += (known.empty() ? "" : ", ") + a;
      throw HttpError{400, "unknown field '" + k.substr(0, 60) + "' (known: " + known + ")"};
    }
  return j;
}

int64_t int_field(const nlohmann::json& j, const char* key, int64_t lo, int64_t hi, int64_t def) {
  if (!j.contains(key)) return def;
  if (!j[key].is_number_integer())
    throw HttpError{400, std::string("'") + key + "' must be an integer"};
  const int64_t v = j[key].get<int64_t>();
  if (v < lo || v > hi)
    throw HttpError{400, std::string("'") + key + "' must be in [" + std::to_string(lo) + ", " +
                             std::to_string(hi) + "], got " + std::to_string(v)};
  return v;
}

double num_field(const nlohmann::json& j, const char* key, double lo, double hi, double def) {
  if (!j.contains(key)) return def;
  if (!j[key].is_number()) throw HttpError{400, std::string("'") + key + "' must be a number"};
  const double v = j[key].get<double>();
  if (!(v >= lo && v <= hi))
    throw HttpError{400, std::string("'") + key + "' must be in [" + std::to_string(lo) + ", " +
                             std::to_string(hi) + "]"};
  return v;
}

std::string str_field(const nlohmann::json& j, const char* key, size_t max_len,
                      const std::string& def) {
  if (!j.contains(key)) return def;
  if (!j[key].is_string()) throw HttpError{400, std::string("'") + key + "' must be a string"};
  std::string v = j[key].get<std::string>();
  if (v.size() > max_len)
    throw HttpError{413, std::string("'") + key + "' is " + std::to_string(v.size()) +
                             " bytes, above the limit of " + std::to_string(max_len)};
  return v;
}

const std::set<std::string> kConceptKeys = {
    "dx", "age", "sex", "site", "fitzpatrick", "asymmetry", "border", "colours", "size_fraction"};

// Concept fields -> caption facts; each value checked.
CaptionFacts facts_from(const nlohmann::json& j) {
  CaptionFacts f;
  f.dx = str_field(j, "dx", 10, "");
  if (!f.dx.empty()) {
    const auto& known = known_dx_codes();
    if (std::find(known.begin(), known.end(), f.dx) == known.end())
      throw HttpError{400,
                      "'dx' must be one of the HAM10000/ISIC codes (mel, nv, bcc, akiec, "
                      "bkl, df, vasc, scc, unk)"};
    f.label = LabelMap{}.label_of(f.dx);
  }
  f.age = static_cast<double>(int_field(j, "age", 0, 120, -1));
  f.sex = str_field(j, "sex", 10, "unknown");
  if (f.sex != "male" && f.sex != "female" && f.sex != "unknown")
    throw HttpError{400, "'sex' must be male, female or unknown"};
  f.site = str_field(j, "site", 40, "unknown");
  for (char c : f.site)
    if (!std::isalpha(static_cast<unsigned char>(c)) && c != ' ' && c != '-')
      throw HttpError{400, "'site' may hold letters, spaces and hyphens only"};
  f.fitzpatrick = static_cast<int>(int_field(j, "fitzpatrick", 1, 6, -1));
  f.asymmetry = static_cast<int>(int_field(j, "asymmetry", 0, 2, -1));
  f.border = static_cast<int>(int_field(j, "border", 0, 8, -1));
  f.size_fraction = num_field(j, "size_fraction", 0.02, 1.0, -1);
  if (j.contains("colours")) {
    if (!j["colours"].is_array() || j["colours"].size() > 6)
      throw HttpError{400, "'colours' must be an array of at most 6 colour names"};
    const auto& names = colour_names();
    for (auto& c : j["colours"]) {
      if (!c.is_string() ||
          std::find(names.begin(), names.end(), c.get<std::string>()) == names.end())
        throw HttpError{400,
                        "'colours' may hold white, red, light brown, dark brown, blue-gray "
                        "and black"};
      if (std::find(f.colours.begin(), f.colours.end(), c.get<std::string>()) == f.colours.end())
        f.colours.push_back(c.get<std::string>());
    }
  }
  return f;
}

}  // namespace

struct ApiServer::Impl {
  ServeOptions o;
  std::string ckpt, adapters;
  LoadedGenerator gen;
  std::unique_ptr<LoraRuntime> lora;
  std::vector<std::pair<std::shared_ptr<LoraAdapter>, double>> adapter_list;  // as loaded
  double lora_scale = 1.0;  // the request's adapter strength now applied (x each loaded one)
  GenerateConfig defaults;
  int image_size = 0;
  httplib::Server svr;
  std::thread thread;
  int port = 0;
  std::mutex gen_mu;
  std::atomic<int> inflight{0};

  // Runs a handler body; HttpError and any exception become JSON errors.
  template <typename F>
  httplib::Server::Handler guarded(F f) {
    return [f](const httplib::Request& req, httplib::Response& res) {
      try {
        f(req, res);
      } catch (const HttpError& e) {
        send_json(res, e.status, {{"error", e.message}, {"status", e.status}});
      } catch (const std::exception& e) {
        send_json(res, 500,
                  {{"error", std::string("internal error: ") + e.what()}, {"status", 500}});
      }
    };
  }

  nlohmann::json generate(const nlohmann::json& j) {
    std::string caption = str_field(j, "caption", o.max_caption_chars, "");
    if (caption.empty()) {
      bool any = false;
      for (auto& k : kConceptKeys) any = any || j.contains(k);
      if (!any) throw HttpError{400, "give 'caption' or concept fields (dx, age, sex, ...)"};
      caption = compose_caption(facts_from(j), 0);
    } else {
      for (auto& k : kConceptKeys)
        if (j.contains(k))
          throw HttpError{400, "give either 'caption' or concept fields, not both"};
    }
    const int n = static_cast<int>(int_field(j, "n", 1, o.max_n, 4));
    const uint64_t seed = static_cast<uint64_t>(int_field(j, "seed", 0, int64_t{1} << 53, 0));
    GenerateConfig gc = defaults;
    gc.sampler.steps = static_cast<int>(int_field(j, "steps", 1, o.max_steps, gc.sampler.steps));
    gc.cfg_scale = num_field(j, "cfg", 0, 20, gc.cfg_scale);
    const double scale = num_field(j, "lora_strength", 0, 2, 1.0);
    if (j.contains("lora_strength") && adapter_list.empty())
      throw HttpError{400, "'lora_strength' needs an adapter (start serve with --lora)"};
    if (++inflight > o.queue) {
      --inflight;
      throw HttpError{503, "busy: " + std::to_string(o.queue) +
                               " generate jobs are queued or running; retry later"};
    }
    struct Release {
      std::atomic<int>& a;
      ~Release() { --a; }
    } release{inflight};
    std::vector<std::string> prompts(n, caption);
    std::vector<uint64_t> seeds;
    for (int i = 0; i < n; ++i) seeds.push_back(derive_seed(seed, Stream::kSampleImage, i));
    torch::Tensor imgs;
    auto t0 = std::chrono::steady_clock::now();
    {
      std::lock_guard<std::mutex> lock(gen_mu);
      torch::NoGradGuard ng;
      if (scale != lora_scale) {
        Status st = apply_lora(scale);
        if (!st.ok()) throw std::runtime_error(st.message());
      }
      imgs = generate_images(gen, prompts, seeds, gc);
    }
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    auto u8 = tensor_to_images(imgs);
    const int S = static_cast<int>(imgs.size(2));
    nlohmann::json out = {
        {"caption", caption}, {"seconds", sec}, {"images", nlohmann::json::array()}};
    for (int i = 0; i < n; ++i) {
      cv::Mat rgb(S, S, CV_8UC3, u8.data() + static_cast<size_t>(i) * S * S * 3), bgr;
      cv::cvtColor(rgb, bgr, cv::COLOR_RGB2BGR);
      std::vector<uchar> png;
      cv::imencode(".png", bgr, png);
      nlohmann::json prov = sampling_metadata(gc);
      prov.update({{"prompt", caption},
                   {"seed", seeds[i]},
                   {"request_seed", seed},
                   {"index", i},
                   {"checkpoint_hash", gen.hash},
                   {"adapters", adapters},
                   {"lora_strength", scale}});
      out["images"].push_back({{"png_base64", base64_encode(std::string(png.begin(), png.end()))},
                               {"provenance", prov},
                               {"measured", measure_lesion(rgb.clone(), cv::Mat()).to_json()}});
    }
    return out;
  }

  // Base weights back, then every adapter at (its loaded strength x scale). At start and, under
  // gen_mu, when a request asks for another strength.
  Status apply_lora(double scale) {
    torch::NoGradGuard ng;
    lora.reset();
    lora = std::make_unique<LoraRuntime>(gen.model);
    for (auto& [a, s] : adapter_list) LF_RETURN_IF_ERROR(lora->add(a, s * scale));
    lora->apply();
    lora_scale = scale;
    return Status::ok_status();
  }

  nlohmann::json measure(const httplib::Request& req) {
    const std::string ct = req.get_header_value("Content-Type");
    if (ct != "image/png" && ct != "image/jpeg" && ct != "application/octet-stream")
      throw HttpError{415,
                      "Content-Type must be image/png, image/jpeg or application/octet-stream"};
    auto img = decode_image(req.body, "upload");
    if (!img.ok()) throw HttpError{400, img.status().message()};
    cv::Mat rgb;
    cv::cvtColor(*img, rgb, cv::COLOR_BGR2RGB);
    const cv::Mat sq = fit_square(rgb, FitMode::kCrop, 128, false);  // as `data prepare` crops
    return {{"measured", measure_lesion(sq, cv::Mat()).to_json()},
            {"width", img->cols},
            {"height", img->rows}};
  }

  void routes() {
    svr.set_payload_max_length(o.max_body_bytes);
    svr.set_read_timeout(10, 0);
    svr.set_write_timeout(60, 0);
    svr.new_task_queue = [n = o.threads] { return new httplib::ThreadPool(std::max(1, n)); };
    svr.set_error_handler([](const httplib::Request&, httplib::Response& res) {
      if (res.body.empty())
        send_json(res, res.status,
                  {{"error", res.status == 413   ? "request body too large"
                             : res.status == 404 ? "no such endpoint"
                                                 : "request refused"},
                   {"status", res.status}});
    });
    svr.Get("/", [](const httplib::Request&, httplib::Response& res) {
      res.set_header("X-Content-Type-Options", "nosniff");
      res.set_header("Content-Security-Policy",
                     "default-src 'self'; img-src 'self' data: blob:; style-src 'unsafe-inline'; "
                     "script-src 'unsafe-inline'; connect-src 'self'");
      res.set_content(serve_page_html(), "text/html; charset=utf-8");
    });
    svr.Get(
        "/v1/health", guarded([this](const httplib::Request&, httplib::Response& res) {
          send_json(res, 200, {{"status", "ok"}, {"queued", inflight.load()}, {"model", gen.hash}});
        }));
    svr.Get("/v1/model", guarded([this](const httplib::Request&, httplib::Response& res) {
              send_json(res, 200,
                        {{"checkpoint", ckpt},
                         {"hash", gen.hash},
                         {"step", gen.step},
                         {"latent", gen.latent()},
                         {"image_size", image_size},
                         {"adapters", adapters},
                         {"sampling", sampling_metadata(defaults)},
                         {"limits",
                          {{"n", o.max_n},
                           {"steps", o.max_steps},
                           {"caption_chars", o.max_caption_chars},
                           {"body_bytes", o.max_body_bytes},
                           {"queue", o.queue}}},
                         {"card", "docs/models.md"}});
            }));
    svr.Post(
        "/v1/caption", guarded([this](const httplib::Request& req, httplib::Response& res) {
          std::set<std::string> keys = kConceptKeys;
          keys.insert("variant");
          auto j = json_body(req, keys);
          CaptionFacts f = facts_from(j);
          const uint64_t v = static_cast<uint64_t>(int_field(j, "variant", 0, int64_t{1} << 53, 0));
          send_json(
              res, 200,
              {{"caption", compose_caption(f, v)}, {"caption_canonical", compose_caption(f, 0)}});
        }));
    svr.Post("/v1/generate", guarded([this](const httplib::Request& req, httplib::Response& res) {
               std::set<std::string> keys = kConceptKeys;
               for (const char* k : {"caption", "n", "seed", "steps", "cfg", "lora_strength"})
                 keys.insert(k);
               auto j = json_body(req, keys);
               try {
                 send_json(res, 200, generate(j));
               } catch (const HttpError& e) {
                 if (e.status == 503) res.set_header("Retry-After", "5");
                 throw;
               }
             }));
    svr.Post("/v1/measure", guarded([this](const httplib::Request& req, httplib::Response& res) {
               send_json(res, 200, measure(req));
             }));
  }
};

ApiServer::ApiServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ApiServer::~ApiServer() { stop(); }
int ApiServer::port() const { return impl_->port; }
void ApiServer::stop() {
  if (!impl_) return;
  impl_->svr.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

Result<std::unique_ptr<ApiServer>> ApiServer::start(const ServeOptions& o) {
  if (o.max_n < 1 || o.max_steps < 1 || o.queue < 1)
    return Status::error("serve: --max-n, --max-steps and --queue must be >= 1");
  auto impl = std::make_unique<Impl>();
  impl->o = o;
  LF_ASSIGN_OR_RETURN(impl->ckpt, checkpoint_or_shipped(o.checkpoint, "serve"));
  LF_ASSIGN_OR_RETURN(impl->gen, load_generator(impl->ckpt));
  impl->image_size =
      impl->gen.latent() ? impl->gen.ae->config().image_size : impl->gen.model->config().image_size;
  use_default_sampling(impl->defaults);  // as `sample`
  apply_recommended_sampling(impl->gen.metadata, SamplerFlags{}, impl->defaults);
  for (auto& spec : o.lora) {
    auto [path, strength] = split_strength(spec);
    LF_ASSIGN_OR_RETURN(auto a, LoraAdapter::load(path, impl->gen.model, impl->gen.hash));
    impl->adapter_list.emplace_back(a, strength);
    impl->adapters +=
        (impl->adapters.empty() ? "" : ",") + a->hash + ":" + std::to_string(strength);
  }
  if (!impl->adapter_list.empty()) LF_RETURN_IF_ERROR(impl->apply_lora(1.0));
  impl->routes();
  if (o.port == 0) {
    impl->port = impl->svr.bind_to_any_port(o.host);
  } else {
    impl->port = impl->svr.bind_to_port(o.host, o.port) ? o.port : -1;
  }
  if (impl->port <= 0)
    return Status::error("serve: cannot listen on " + o.host + ":" + std::to_string(o.port) +
                         " (in use, or not a local address)");
  Impl* raw = impl.get();
  impl->thread = std::thread([raw] { raw->svr.listen_after_bind(); });
  return std::unique_ptr<ApiServer>(new ApiServer(std::move(impl)));
}

Status run_server(const ServeOptions& o) {
  LF_ASSIGN_OR_RETURN(auto server, ApiServer::start(o));
  log_info("serving the JSON API on http://" + o.host + ":" + std::to_string(server->port()) +
           "/v1/health (docs/api.md); Ctrl-C stops");
  StopOnSignal stop_guard;
  while (!stop_requested()) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  log_info(std::string("serve: ") + stop_signal_name() + " received, stopping");
  server->stop();
  clear_stop_request();  // a signal is how a server ends: exit 0
  return Status::ok_status();
}

}  // namespace lf
