// Acquisition-shift transforms (see include/lesionflow/shift.h and docs/results.md "HAM-shift").
#include "lesionflow/shift.h"

#include <algorithm>
#include <cmath>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

namespace lf {
namespace {

double uni(std::mt19937_64& rng, double lo, double hi) {
  return std::uniform_real_distribution<double>(lo, hi)(rng);
}
int uni_int(std::mt19937_64& rng, int lo, int hi) {  // inclusive
  return std::uniform_int_distribution<int>(lo, hi)(rng);
}

// The skin around the lesion: the mean of the brighter half of a frame of the image's border
// (the darker half holds vignette corners and lesion parts that touch the border).
cv::Scalar skin_colour(const cv::Mat& img) {
  const int b = std::max(1, std::min(img.rows, img.cols) / 12);
  std::vector<cv::Vec3b> px;
  for (int y = 0; y < img.rows; ++y)
    for (int x = 0; x < img.cols; ++x)
      if (y < b || y >= img.rows - b || x < b || x >= img.cols - b)
        px.push_back(img.at<cv::Vec3b>(y, x));
  auto lum = [](const cv::Vec3b& p) { return int(p[0]) + p[1] + p[2]; };
  std::sort(px.begin(), px.end(), [&](auto& a, auto& c) { return lum(a) > lum(c); });
  cv::Scalar s(0, 0, 0);
  const size_t n = std::max<size_t>(1, px.size() / 2);
  for (size_t i = 0; i < n; ++i)
    for (int c = 0; c < 3; ++c) s[c] += px[i][c];
  return s / static_cast<double>(n);
}

// Smooth random field in [-1, 1] of the image's size (noise at 1/cell resolution, upsampled).
cv::Mat smooth_noise(cv::Size size, int cells, std::mt19937_64& rng) {
  cv::Mat small(std::max(2, size.height / cells), std::max(2, size.width / cells), CV_32FC1);
  for (int y = 0; y < small.rows; ++y)
    for (int x = 0; x < small.cols; ++x)
      small.at<float>(y, x) = static_cast<float>(uni(rng, -1, 1));
  cv::Mat big;
  cv::resize(small, big, size, 0, 0, cv::INTER_CUBIC);
  return big;
}

cv::Mat zoom_out(const cv::Mat& img, std::mt19937_64& rng, nlohmann::json& p) {
  const double z = uni(rng, 0.4, 0.75);
  const int W = img.cols, H = img.rows;
  cv::Scalar skin = skin_colour(img);
  cv::Mat canvas(img.size(), CV_32FC3, skin);
  cv::Mat mott = smooth_noise(img.size(), std::max(2, std::min(W, H) / 8), rng);
  std::vector<cv::Mat> ch;
  cv::split(canvas, ch);
  for (auto& c : ch) c += mott * 8.0f;
  cv::merge(ch, canvas);
  const int w = std::max(2, static_cast<int>(std::lround(W * z))),
            h = std::max(2, static_cast<int>(std::lround(H * z)));
  const int x0 = uni_int(rng, 0, W - w), y0 = uni_int(rng, 0, H - h);
  cv::Mat small, smallf;
  cv::resize(img, small, {w, h}, 0, 0, cv::INTER_AREA);
  small.convertTo(smallf, CV_32FC3);
  // Feathered edge: the pasted photo fades into the surrounding skin.
  cv::Mat alpha(h, w, CV_32FC1, cv::Scalar(0));
  const int f = std::max(1, std::min(w, h) / 10);
  cv::rectangle(alpha, {f, f}, {w - 1 - f, h - 1 - f}, cv::Scalar(1), cv::FILLED);
  cv::GaussianBlur(alpha, alpha, {0, 0}, std::max(0.5, f / 2.0));
  cv::Mat roi = canvas(cv::Rect(x0, y0, w, h));
  cv::Mat a3;
  cv::merge(std::vector<cv::Mat>{alpha, alpha, alpha}, a3);
  cv::Mat blended = smallf.mul(a3) + roi.mul(cv::Scalar(1, 1, 1) - a3);
  blended.copyTo(roi);
  cv::Mat out;
  canvas.convertTo(out, CV_8UC3);
  p = {{"scale", z}, {"x", double(x0) / W}, {"y", double(y0) / H}};
  return out;
}

cv::Mat squash(const cv::Mat& img, std::mt19937_64& rng, nlohmann::json& p) {
  cv::Mat out;
  if (img.cols != img.rows) {  // the whole frame resized to a square
    const int m = std::min(img.cols, img.rows);
    cv::resize(img, out, {m, m}, 0, 0, cv::INTER_AREA);
    p = {{"aspect", double(img.cols) / img.rows}};
    return out;
  }
  // A square image: a centred frame of a camera's aspect (4:3 to 3:2) squashed to the square.
  const double a = uni(rng, 1.25, 1.5);
  const bool wide = uni(rng, 0, 1) < 0.5;
  const int S = img.cols, s = std::max(2, static_cast<int>(std::lround(S / a)));
  cv::Rect r = wide ? cv::Rect(0, (S - s) / 2, S, s) : cv::Rect((S - s) / 2, 0, s, S);
  cv::resize(img(r), out, {S, S}, 0, 0, cv::INTER_LINEAR);
  p = {{"aspect", wide ? a : 1 / a}};
  return out;
}

cv::Mat colour_cast(const cv::Mat& img, std::mt19937_64& rng, nlohmann::json& p) {
  std::normal_distribution<double> N(0, 0.12);
  double g[3];
  for (double& v : g) v = std::clamp(std::exp(N(rng)), 0.75, 1.3);
  const double gamma = std::exp(uni(rng, std::log(0.75), std::log(1.33)));
  const double bright = uni(rng, 0.8, 1.15);
  cv::Mat lut(1, 256, CV_8UC3);
  for (int i = 0; i < 256; ++i)
    for (int c = 0; c < 3; ++c)
      lut.at<cv::Vec3b>(0, i)[c] = cv::saturate_cast<uint8_t>(
          255.0 * std::pow(std::min(1.0, i / 255.0 * g[c] * bright), gamma));
  cv::Mat out;
  cv::LUT(img, lut, out);
  p = {{"gains", {g[0], g[1], g[2]}}, {"gamma", gamma}, {"brightness", bright}};
  return out;
}

cv::Mat vignette(const cv::Mat& img, std::mt19937_64& rng, nlohmann::json& p) {
  const double r0 = uni(rng, 0.55, 0.85), strength = uni(rng, 0.6, 1.0);
  const double cx = img.cols / 2.0, cy = img.rows / 2.0, R = std::hypot(cx, cy);
  cv::Mat out = img.clone();
  for (int y = 0; y < img.rows; ++y)
    for (int x = 0; x < img.cols; ++x) {
      double d = std::hypot(x + 0.5 - cx, y + 0.5 - cy) / R;
      double u = std::clamp((d - r0) / (1 - r0), 0.0, 1.0), sm = u * u * (3 - 2 * u);
      double f = 1 - strength * sm;
      auto& px = out.at<cv::Vec3b>(y, x);
      for (int c = 0; c < 3; ++c) px[c] = cv::saturate_cast<uint8_t>(px[c] * f);
    }
  p = {{"radius", r0}, {"strength", strength}};
  return out;
}

cv::Mat ruler(const cv::Mat& img, std::mt19937_64& rng, nlohmann::json& p) {
  cv::Mat out = img.clone();
  const int S = std::min(img.cols, img.rows);
  const int side = uni_int(rng, 0, 3);  // top, bottom, left, right
  const int band = std::max(3, static_cast<int>(std::lround(S * uni(rng, 0.06, 0.11))));
  const int off = static_cast<int>(std::lround(S * uni(rng, 0.0, 0.05)));
  const double tick = std::max(2.0, S * uni(rng, 0.025, 0.045));
  const bool yellow = uni(rng, 0, 1) < 0.3;
  const cv::Scalar bg = yellow ? cv::Scalar(60, 210, 230) : cv::Scalar(232, 232, 228);
  const int th = std::max(1, S / 220);
  const bool horizontal = side < 2;
  const int len = horizontal ? img.cols : img.rows;
  const int pos = side == 0 || side == 2 ? off : (horizontal ? img.rows : img.cols) - off - band;
  cv::Rect r = horizontal ? cv::Rect(0, pos, img.cols, band) : cv::Rect(pos, 0, band, img.rows);
  r &= cv::Rect(0, 0, img.cols, img.rows);
  cv::rectangle(out, r, bg, cv::FILLED);
  int i = 0;
  for (double t = tick * uni(rng, 0, 1); t < len; t += tick, ++i) {
    const int L = static_cast<int>(band * (i % 5 == 0 ? 0.7 : 0.4));
    const int q = static_cast<int>(t);
    const int edge = side == 0 || side == 2 ? pos : pos + band - 1;
    const int dir = side == 0 || side == 2 ? 1 : -1;
    if (horizontal)
      cv::line(out, {q, edge}, {q, edge + dir * L}, cv::Scalar(20, 20, 20), th, cv::LINE_AA);
    else
      cv::line(out, {edge, q}, {edge + dir * L, q}, cv::Scalar(20, 20, 20), th, cv::LINE_AA);
  }
  static const char* kSides[] = {"top", "bottom", "left", "right"};
  p = {{"side", kSides[side]}, {"band", double(band) / S}, {"tick", tick / S}};
  return out;
}

cv::Mat pen(const cv::Mat& img, std::mt19937_64& rng, nlohmann::json& p) {
  static const cv::Scalar kInk[] = {{140, 40, 140}, {60, 150, 60}, {40, 40, 40}, {170, 70, 40}};
  const cv::Scalar ink = kInk[uni_int(rng, 0, 3)];
  const int S = std::min(img.cols, img.rows);
  const int th = std::max(1, static_cast<int>(std::lround(S * uni(rng, 0.012, 0.03))));
  const double alpha = uni(rng, 0.6, 0.9);
  cv::Mat layer = img.clone();
  const bool circle = uni(rng, 0, 1) < 0.6;
  if (circle) {  // the lesion circled by the clinician, often not closed
    cv::Point c(img.cols / 2 + uni_int(rng, -S / 10, S / 10),
                img.rows / 2 + uni_int(rng, -S / 10, S / 10));
    cv::Size ax(static_cast<int>(S * uni(rng, 0.32, 0.46)),
                static_cast<int>(S * uni(rng, 0.32, 0.46)));
    const double start = uni(rng, 0, 360), sweep = uni(rng, 220, 360);
    cv::ellipse(layer, c, ax, uni(rng, 0, 180), start, start + sweep, ink, th, cv::LINE_AA);
  } else {  // a line or mark near the edge
    cv::Point a(uni_int(rng, 0, img.cols - 1), uni_int(rng, 0, img.rows / 4));
    cv::Point b(uni_int(rng, 0, img.cols - 1), uni_int(rng, 0, img.rows / 4));
    if (uni(rng, 0, 1) < 0.5) std::swap(a.y, a.x), std::swap(b.y, b.x);
    cv::line(layer, a, b, ink, th, cv::LINE_AA);
  }
  cv::Mat out;
  cv::addWeighted(layer, alpha, img, 1 - alpha, 0, out);
  p = {{"shape", circle ? "circle" : "line"}, {"width", double(th) / S}, {"alpha", alpha}};
  return out;
}

cv::Mat hair(const cv::Mat& img, std::mt19937_64& rng, nlohmann::json& p) {
  cv::Mat out = img.clone();
  const int S = std::min(img.cols, img.rows);
  const int n = uni_int(rng, 3, 12);
  for (int i = 0; i < n; ++i) {
    const double len = S * uni(rng, 0.3, 0.9), ang = uni(rng, 0, 2 * M_PI),
                 bend = uni(rng, -0.3, 0.3);
    cv::Point2d a(uni(rng, 0, img.cols), uni(rng, 0, img.rows));
    cv::Point2d b = a + cv::Point2d(std::cos(ang), std::sin(ang)) * len;
    cv::Point2d m = (a + b) * 0.5 + cv::Point2d(-std::sin(ang), std::cos(ang)) * (bend * len);
    std::vector<cv::Point> pts;
    for (int k = 0; k <= 24; ++k) {  // quadratic Bezier
      double t = k / 24.0;
      cv::Point2d q = a * ((1 - t) * (1 - t)) + m * (2 * t * (1 - t)) + b * (t * t);
      pts.emplace_back(static_cast<int>(std::lround(q.x)), static_cast<int>(std::lround(q.y)));
    }
    const int g = uni_int(rng, 15, 60);
    const int th = std::max(1, static_cast<int>(std::lround(S * uni(rng, 0.002, 0.007))));
    cv::polylines(out, pts, false, cv::Scalar(g, g + 5, g + 12), th, cv::LINE_AA);
  }
  p = {{"hairs", n}};
  return out;
}

cv::Mat blur_jpeg(const cv::Mat& img, std::mt19937_64& rng, nlohmann::json& p) {
  const int S = std::min(img.cols, img.rows);
  const double sigma = S * uni(rng, 0.002, 0.012);
  const int quality = uni_int(rng, 25, 60);
  cv::Mat b;  // a new buffer: blurring into a header of img would change the caller's image
  if (sigma >= 0.3)
    cv::GaussianBlur(img, b, {0, 0}, sigma);
  else
    b = img;
  std::vector<uint8_t> buf;
  cv::imencode(".jpg", b, buf, {cv::IMWRITE_JPEG_QUALITY, quality});
  cv::Mat out = cv::imdecode(buf, cv::IMREAD_COLOR);
  p = {{"sigma", sigma / S}, {"jpeg_quality", quality}};
  return out.empty() ? b : out;
}

}  // namespace

const std::vector<ShiftKind>& all_shift_kinds() {
  static const std::vector<ShiftKind> k = {
      ShiftKind::kZoomOut, ShiftKind::kSquash, ShiftKind::kColourCast, ShiftKind::kVignette,
      ShiftKind::kRuler,   ShiftKind::kPen,    ShiftKind::kHair,       ShiftKind::kBlurJpeg};
  return k;
}

const char* shift_name(ShiftKind k) {
  switch (k) {
    case ShiftKind::kZoomOut:
      return "zoom";
    case ShiftKind::kSquash:
      return "squash";
    case ShiftKind::kColourCast:
      return "cast";
    case ShiftKind::kVignette:
      return "vignette";
    case ShiftKind::kRuler:
      return "ruler";
    case ShiftKind::kPen:
      return "pen";
    case ShiftKind::kHair:
      return "hair";
    case ShiftKind::kBlurJpeg:
      return "blur";
  }
  return "?";
}

Result<std::vector<ShiftKind>> parse_shift_kinds(const std::string& list) {
  if (list == "all" || list.empty()) return all_shift_kinds();
  std::vector<ShiftKind> out;
  size_t s = 0;
  while (s <= list.size()) {
    size_t e = list.find(',', s);
    if (e == std::string::npos) e = list.size();
    const std::string name = list.substr(s, e - s);
    bool found = false;
    for (auto k : all_shift_kinds())
      if (name == shift_name(k)) {
        if (std::find(out.begin(), out.end(), k) == out.end()) out.push_back(k);
        found = true;
      }
    if (!found)
      return Status::error(
          "unknown shift '" + name +
          "' (all, or a list of zoom, squash, cast, vignette, ruler, pen, hair, blur)");
    s = e + 1;
  }
  return out;
}

cv::Mat apply_one_shift(const cv::Mat& img, ShiftKind k, std::mt19937_64& rng,
                        nlohmann::json* params) {
  nlohmann::json p;
  cv::Mat out;
  switch (k) {
    case ShiftKind::kZoomOut:
      out = zoom_out(img, rng, p);
      break;
    case ShiftKind::kSquash:
      out = squash(img, rng, p);
      break;
    case ShiftKind::kColourCast:
      out = colour_cast(img, rng, p);
      break;
    case ShiftKind::kVignette:
      out = vignette(img, rng, p);
      break;
    case ShiftKind::kRuler:
      out = ruler(img, rng, p);
      break;
    case ShiftKind::kPen:
      out = pen(img, rng, p);
      break;
    case ShiftKind::kHair:
      out = hair(img, rng, p);
      break;
    case ShiftKind::kBlurJpeg:
      out = blur_jpeg(img, rng, p);
      break;
  }
  if (params) *params = p;
  return out;
}

cv::Mat apply_shift(const cv::Mat& img, const ShiftOptions& o, std::mt19937_64& rng,
                    nlohmann::json* applied) {
  CV_Assert(img.type() == CV_8UC3);
  std::vector<bool> on(o.kinds.size());
  int n = 0;
  for (size_t i = 0; i < on.size(); ++i) n += (on[i] = uni(rng, 0, 1) < o.probability);
  while (n < std::min<int>(o.min_kinds, static_cast<int>(on.size()))) {
    size_t i = static_cast<size_t>(uni_int(rng, 0, static_cast<int>(on.size()) - 1));
    if (!on[i]) on[i] = true, ++n;
  }
  // A fixed order that follows how a photo is made: marks on the skin (the pen circle drawn
  // around the lesion) and hair, then the framing (zoomed out, squashed), a ruler laid in the
  // frame, then the camera (colour, vignette, blur and compression).
  static const ShiftKind kOrder[] = {
      ShiftKind::kPen,   ShiftKind::kHair,       ShiftKind::kZoomOut,  ShiftKind::kSquash,
      ShiftKind::kRuler, ShiftKind::kColourCast, ShiftKind::kVignette, ShiftKind::kBlurJpeg};
  cv::Mat out = img;
  nlohmann::json rec = nlohmann::json::object();
  for (ShiftKind k : kOrder)
    for (size_t i = 0; i < o.kinds.size(); ++i)
      if (o.kinds[i] == k && on[i]) {
        nlohmann::json p;
        out = apply_one_shift(out, k, rng, &p);
        rec[shift_name(k)] = p;
      }
  if (applied) *applied = rec;
  return out.data == img.data ? img.clone() : out;
}

}  // namespace lf
