#include <algorithm>
#include <array>
#include <cmath>
#include <opencv2/imgproc.hpp>

#include "lesionflow/io.h"
#include "lesionflow/log.h"
#include "lesionflow/phantom.h"
#include "lesionflow/record_pixels.h"

namespace lf {

Status load_record_pixels(const Record& r, int phantom_size, cv::Mat* rgb, cv::Mat* mask) {
  *rgb = cv::Mat();
  *mask = cv::Mat();
  if (r.source == "phantom") {
    render_phantom(PhantomParams::from_json(r.extra.at("phantom")), phantom_size, rgb, mask);
    return Status();
  }
  auto img = read_image(r.image_path);
  if (!img.ok()) return img.status();
  cv::cvtColor(*img, *rgb, cv::COLOR_BGR2RGB);
  if (r.mask_path.empty()) return Status();
  auto m = read_mask(r.mask_path);
  std::string warn;
  if (!m.ok()) {
    warn = m.status().message() + "; mask ignored";
  } else if (m->size() != img->size()) {
    warn = r.mask_path + ": mask size " + std::to_string(m->cols) + "x" + std::to_string(m->rows) +
           " differs from image " + std::to_string(img->cols) + "x" + std::to_string(img->rows) +
           "; mask ignored";
  } else {
    *mask = *m;
  }
  if (!warn.empty()) log_warn(warn);
  return Status();
}

namespace {
std::string attribute(const Record& r, const std::string& key) {
  if (key == "dx") return r.dx;
  if (key == "site") return r.site;
  if (key == "sex") return r.sex;
  if (key == "age") return age_band(r.age);
  return "";
}
}  // namespace

bool record_matches(const Record& r, const std::vector<std::string>& filters) {
  for (const auto& f : filters) {
    auto eq = f.find('=');
    if (eq == std::string::npos || attribute(r, f.substr(0, eq)) != f.substr(eq + 1)) return false;
  }
  return true;
}

Status check_filters(const std::vector<std::string>& filters) {
  for (const auto& f : filters) {
    auto eq = f.find('=');
    std::string k = eq == std::string::npos ? "" : f.substr(0, eq);
    if (k != "dx" && k != "site" && k != "sex" && k != "age")
      return Status::error("filter '" + f + "' must be dx=, site=, sex= or age=VALUE");
  }
  return Status();
}

void shades_of_gray(uint8_t* rgb, int64_t pixels, double p) {
  if (pixels <= 0) return;
  std::array<double, 256> pw;
  for (int v = 0; v < 256; ++v) pw[v] = std::pow(v / 255.0, p);
  std::array<double, 3> sum{0, 0, 0};
  for (int64_t i = 0; i < pixels; ++i)
    for (int c = 0; c < 3; ++c) sum[c] += pw[rgb[3 * i + c]];
  std::array<double, 3> e;
  for (int c = 0; c < 3; ++c) e[c] = std::pow(sum[c] / pixels, 1.0 / p);
  const double grey = (e[0] + e[1] + e[2]) / 3;
  std::array<std::array<uint8_t, 256>, 3> lut;
  for (int c = 0; c < 3; ++c) {
    const double gain = e[c] > 1e-6 ? grey / e[c] : 1.0;
    for (int v = 0; v < 256; ++v)
      lut[c][v] = static_cast<uint8_t>(std::clamp(std::lround(v * gain), 0L, 255L));
  }
  for (int64_t i = 0; i < pixels; ++i)
    for (int c = 0; c < 3; ++c) rgb[3 * i + c] = lut[c][rgb[3 * i + c]];
}

}  // namespace lf
