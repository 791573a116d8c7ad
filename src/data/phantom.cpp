// Procedural lesion generator. Geometry: a star-shaped region around a centre with polar
// radius r(θ) = R·(1 + shape harmonics + irregularity harmonics), θ measured from the lesion's
// principal axis. Which harmonics are allowed controls the number of symmetry axes exactly:
//   0 asymmetric axes: only cos(kθ) with even k   (mirror-symmetric about both axes)
//   1 asymmetric axis: only cos(kθ), any k, with cos 3θ (symmetric about the major axis only)
//   2 asymmetric axes: cos 3θ + sin 5θ + random phases (no mirror axis)
// Colours fill concentric zones of equal area in normalised radius ρ = |p-c| / r(θ), so the
// colour pattern has the same symmetry as the shape. No blending between zones: each lesion
// pixel is exactly one of the six dermoscopic colours (plus mild noise).
#include "lesionflow/phantom.h"

#include <cmath>
#include <opencv2/imgproc.hpp>
#include <random>
#include <sstream>

#include "lesionflow/io.h"
#include "lesionflow/report.h"
#include "lesionflow/rng.h"

namespace lf {

const std::array<std::string, kNumColours>& colour_names() {
  static const std::array<std::string, kNumColours> k = {"white",      "red",       "light brown",
                                                         "dark brown", "blue-gray", "black"};
  return k;
}

std::array<uint8_t, 3> colour_rgb(int c) {
  static const uint8_t k[kNumColours][3] = {{236, 234, 228}, {192, 52, 60},  {178, 118, 72},
                                            {104, 60, 36},   {98, 118, 142}, {34, 27, 27}};
  return {k[c][0], k[c][1], k[c][2]};
}

const std::array<std::string, kNumStructures>& structure_names() {
  static const std::array<std::string, kNumStructures> k = {
      "pigment network", "dots/globules", "streaks", "blue-whitish veil", "regression structures"};
  return k;
}

std::array<uint8_t, 3> skin_rgb(int f) {
  // Chosen so the ITA angle of each falls in its band (I > 55, II 41-55, III 28-41, IV 10-28,
  // V -30..10, VI < -30): 71.8, 46.3, 36.1, 18.2, -16.1, -57.8 degrees.
  static const uint8_t k[6][3] = {{242, 206, 192}, {218, 170, 140}, {204, 154, 122},
                                  {180, 130, 96},  {136, 94, 68},   {84, 58, 42}};
  f = std::clamp(f, 1, 6);
  return {k[f - 1][0], k[f - 1][1], k[f - 1][2]};
}

nlohmann::json PhantomParams::to_json() const {
  nlohmann::json cols = nlohmann::json::array();
  for (int c = 0; c < kNumColours; ++c)
    if (colours & (1u << c)) cols.push_back(colour_names()[c]);
  nlohmann::json st = nlohmann::json::array();
  for (int k = 0; k < kNumStructures; ++k)
    if (structures & (1u << k)) st.push_back(structure_names()[k]);
  return {{"fitzpatrick", fitzpatrick},
          {"structures", st},
          {"structure_mask", structures},
          {"asymmetry_axes", asymmetry_axes},
          {"irregularity", irregularity},
          {"border_score", border_score()},
          {"colours", cols},
          {"colour_mask", colours},
          {"diameter", diameter},
          {"rotation", rotation},
          {"hair", hair},
          {"vignette", vignette},
          {"seed", seed},
          {"tds", tds()}};
}

PhantomParams PhantomParams::from_json(const nlohmann::json& j) {
  PhantomParams p;
  p.fitzpatrick = j.value("fitzpatrick", 2);
  p.asymmetry_axes = j.value("asymmetry_axes", 0);
  p.irregularity = j.value("irregularity", 0.0);
  p.colours = j.value("colour_mask", 4u);
  p.diameter = j.value("diameter", 0.45);
  p.rotation = j.value("rotation", 0.0);
  p.hair = j.value("hair", false);
  p.vignette = j.value("vignette", false);
  p.structures = j.value("structure_mask", 0u);
  p.seed = j.value("seed", uint64_t{0});
  return p;
}

int PhantomParams::num_colours() const { return __builtin_popcount(colours & 63u); }
int PhantomParams::num_structures() const { return __builtin_popcount(structures & 31u); }
int PhantomParams::border_score() const {
  return static_cast<int>(std::lround(8.0 * std::clamp(irregularity, 0.0, 1.0)));
}
double PhantomParams::tds() const {
  return 1.3 * asymmetry_axes + 0.1 * border_score() + 0.5 * num_colours() + 0.5 * num_structures();
}

PhantomParams sample_phantom_params(uint64_t seed) {
  std::mt19937_64 rng(mix64(seed));
  std::uniform_real_distribution<double> U(0.0, 1.0);
  PhantomParams p;
  p.seed = seed;
  std::discrete_distribution<int> fitz({0.2, 0.3, 0.25, 0.12, 0.08, 0.05});
  p.fitzpatrick = fitz(rng) + 1;
  bool suspicious = U(rng) < 0.3;
  auto pick_colours = [&](int n, std::vector<int> pool, std::vector<int> must) {
    uint32_t m = 0;
    for (int c : must) m |= 1u << c;
    std::shuffle(pool.begin(), pool.end(), rng);
    for (int c : pool) {
      if (__builtin_popcount(m) >= n) break;
      m |= 1u << c;
    }
    return m;
  };
  if (suspicious) {
    p.asymmetry_axes = U(rng) < 0.3 ? 1 : 2;
    p.irregularity = 0.3 + 0.7 * U(rng);
    int n = 3 + static_cast<int>(U(rng) * 4);  // 3..6
    p.colours = pick_colours(n, {0, 1, 2, 4, 5}, {3});
    p.diameter = 0.35 + 0.4 * U(rng);
  } else {
    double a = U(rng);
    p.asymmetry_axes = a < 0.6 ? 0 : (a < 0.9 ? 1 : 2);
    p.irregularity = 0.4 * U(rng);
    int n = 1 + static_cast<int>(U(rng) * 3);  // 1..3
    p.colours = U(rng) < 0.85 ? pick_colours(n, {2, 3}, {}) : pick_colours(n, {0, 1, 2, 3}, {});
    if (p.colours == 0) p.colours = 1u << 2;
    p.diameter = 0.25 + 0.35 * U(rng);
  }
  p.rotation = U(rng) * M_PI;
  p.hair = U(rng) < 0.25;
  p.vignette = U(rng) < 0.3;
  return p;
}

PhantomParams sample_structure_phantom_params(uint64_t seed) {
  PhantomParams p = sample_phantom_params(seed);
  std::mt19937_64 rng(mix64(seed ^ 0x9E3779B97F4A7C15ULL));  // its own stream: p's draws stay
  std::uniform_real_distribution<double> U(0.0, 1.0);
  p.colours = (1u << 2) | (U(rng) < 0.6 ? 1u << 3 : 0u);  // light brown (+ dark brown)
  p.diameter = 0.5 + 0.25 * U(rng);
  p.irregularity = std::min(p.irregularity, 0.5);
  p.structures = 0;
  for (int k = 0; k < kNumStructures; ++k)
    if (U(rng) < 0.45) p.structures |= 1u << k;
  return p;
}

namespace {
struct Harmonic {
  int k;
  double amp, phase;
};
// The structures of p.structures over the rendered lesion (radius R px, centre cx, cy; rho_at:
// normalised radius, 1 on the border), from their own random stream. Sizes are fractions of R,
// so a structure looks the same at every image size. See docs/concepts.md, "Structures".
template <class Rho>
void draw_structures(const PhantomParams& p, double R, double cx, double cy, const Rho& rho_at,
                     cv::Mat& rgb) {
  std::mt19937_64 rng(mix64(p.seed ^ 0x5851F42D4C957F2DULL));
  std::uniform_real_distribution<double> U(0.0, 1.0);
  std::normal_distribution<double> N(0.0, 1.0);
  const int S = rgb.rows;
  auto has = [&](DermStructure s) { return (p.structures >> static_cast<int>(s)) & 1u; };
  auto blend = [&](int x, int y, const cv::Vec3d& c, double a) {
    auto& px = rgb.at<cv::Vec3b>(y, x);
    for (int ch = 0; ch < 3; ++ch)
      px[ch] = cv::saturate_cast<uint8_t>((1 - a) * px[ch] + a * (c[ch] + 3.0 * N(rng)));
  };
  const cv::Vec3d line_col(60, 36, 24), veil_col(150, 168, 196), scar_col(244, 242, 238),
      pepper_col(112, 122, 142);
  // Pigment network: a warped grid of dark lines (cell 0.16 R, line 0.035 R) inside rho < 0.85.
  if (has(DermStructure::kNetwork)) {
    const double cell = 0.16 * R, half_w = std::max(0.8, 0.0175 * R), rot = U(rng) * M_PI;
    const double ph1 = U(rng) * 6.28, ph2 = U(rng) * 6.28, cr = std::cos(rot), sr = std::sin(rot);
    for (int y = 0; y < S; ++y)
      for (int x = 0; x < S; ++x) {
        double rho = rho_at(x + 0.5, y + 0.5);
        if (rho > 0.85) continue;
        double dx = x + 0.5 - cx, dy = y + 0.5 - cy;
        double u = (cr * dx + sr * dy) / cell + 0.18 * std::sin(dy / (0.9 * cell) + ph1);
        double v = (-sr * dx + cr * dy) / cell + 0.18 * std::sin(dx / (0.9 * cell) + ph2);
        double d = cell * std::min(std::abs(u - std::round(u)), std::abs(v - std::round(v)));
        if (d < half_w) blend(x, y, line_col, rho > 0.75 ? 0.85 * (0.85 - rho) / 0.1 : 0.85);
      }
  }
  // Confluent patches (blue-whitish veil, white scar of regression): 2-3 overlapping discs of
  // radius 0.18-0.26 R around a point at rho 0.3-0.45, clipped to rho < 0.9. The veil and the
  // scar sit on opposite sides.
  const double phi = U(rng) * 2 * M_PI;
  auto patch = [&](double angle, const cv::Vec3d& col, double alpha) {
    cv::Mat region = cv::Mat::zeros(S, S, CV_8UC1);
    double rr = (0.3 + 0.15 * U(rng)) * R;
    cv::Point2d c0(cx + rr * std::cos(angle), cy + rr * std::sin(angle));
    int n = 2 + static_cast<int>(U(rng) * 2);
    for (int i = 0; i < n; ++i) {
      cv::Point2d c = c0 + cv::Point2d((U(rng) - 0.5) * 0.3 * R, (U(rng) - 0.5) * 0.3 * R);
      cv::circle(region, c, static_cast<int>((0.18 + 0.08 * U(rng)) * R), 255, cv::FILLED);
    }
    for (int y = 0; y < S; ++y)
      for (int x = 0; x < S; ++x)
        if (region.at<uint8_t>(y, x) && rho_at(x + 0.5, y + 0.5) < 0.9) blend(x, y, col, alpha);
    return c0;
  };
  if (has(DermStructure::kVeil)) patch(phi, veil_col, 0.9);  // a film over the pigment
  if (has(DermStructure::kRegression)) {
    cv::Point2d c0 = patch(phi + M_PI, scar_col, 1.0);  // whiter than the skin
    // Peppering: fine blue-gray granules over and around the scar.
    int n = 25 + static_cast<int>(U(rng) * 20);
    for (int i = 0; i < n; ++i) {
      double a = U(rng) * 2 * M_PI, r = std::sqrt(U(rng)) * 0.32 * R;
      cv::Point2d q = c0 + cv::Point2d(r * std::cos(a), r * std::sin(a));
      if (rho_at(q.x, q.y) > 0.9) continue;
      cv::circle(rgb, q, std::max(1, static_cast<int>(std::lround(0.012 * R))),
                 cv::Scalar(pepper_col[0], pepper_col[1], pepper_col[2]), cv::FILLED, cv::LINE_AA);
    }
  }
  // Dots/globules: 10-24 round dark discs of radius 0.05-0.08 R at rho < 0.8.
  if (has(DermStructure::kGlobules)) {
    int n = 10 + static_cast<int>(U(rng) * 15), placed = 0;
    std::vector<cv::Point2d> done;
    for (int tries = 0; tries < 400 && placed < n; ++tries) {
      double a = U(rng) * 2 * M_PI, r = std::sqrt(U(rng)) * 0.8 * R;
      cv::Point2d q(cx + r * std::cos(a), cy + r * std::sin(a));
      if (rho_at(q.x, q.y) > 0.8) continue;
      bool free = true;
      for (auto& d : done) free &= cv::norm(d - q) > 0.2 * R;
      if (!free) continue;
      done.push_back(q);
      ++placed;
      int rad = std::max(2, static_cast<int>(std::lround((0.05 + 0.03 * U(rng)) * R)));
      cv::circle(rgb, q, rad, cv::Scalar(48, 30, 24), cv::FILLED, cv::LINE_AA);
    }
  }
  // Streaks: 5-9 radial lines from rho 0.7 to 1.2 in one or two sectors of 100 degrees.
  if (has(DermStructure::kStreaks)) {
    int n = 5 + static_cast<int>(U(rng) * 5);
    double a0 = U(rng) * 2 * M_PI, spread = 100.0 * M_PI / 180;
    const bool two_sectors = U(rng) < 0.4;
    int th = std::max(1, static_cast<int>(std::lround(0.035 * R)));
    std::vector<double> used;  // separate lines: at least 8 degrees apart
    for (int i = 0, tries = 0; i < n && tries < 200; ++tries) {
      double a = a0 + (two_sectors && i % 2 ? M_PI : 0.0) + (U(rng) - 0.5) * spread;
      bool apart = true;
      for (double b : used) apart &= std::abs(std::remainder(a - b, 2 * M_PI)) > 8.0 * M_PI / 180;
      if (!apart) continue;
      used.push_back(a);
      ++i;
      // The border radius along a: walk out until rho reaches 1.
      double rb = R;
      for (double r = 0.2 * R; r < 2 * R; r += 0.5)
        if (rho_at(cx + r * std::cos(a), cy + r * std::sin(a)) >= 1.0) {
          rb = r;
          break;
        }
      cv::Point2d u(std::cos(a), std::sin(a));
      cv::line(rgb, cv::Point2d(cx, cy) + 0.7 * rb * u, cv::Point2d(cx, cy) + 1.2 * rb * u,
               cv::Scalar(line_col[0], line_col[1], line_col[2]), th, cv::LINE_AA);
    }
  }
}
}  // namespace

void render_phantom(const PhantomParams& p, int size, cv::Mat* rgb_out, cv::Mat* mask_out) {
  std::mt19937_64 rng(p.seed ^ 0xD1B54A32D192ED03ULL);
  std::uniform_real_distribution<double> U(0.0, 1.0);
  std::normal_distribution<double> N(0.0, 1.0);

  // Shape harmonics.
  std::vector<Harmonic> hs;
  hs.push_back({2, 0.06 + 0.08 * U(rng), 0.0});  // mild ellipticity (symmetric)
  // cos 3θ: a rounded triangle, mirror-symmetric about the major axis only.
  if (p.asymmetry_axes >= 1) hs.push_back({3, 0.16, 0.0});
  // + sin 5θ: no mirror axis is shared by cos 3θ (axes kπ/3) and sin 5θ (axes π/10 + kπ/5).
  if (p.asymmetry_axes >= 2) hs.push_back({5, 0.12, -M_PI / 2});
  double irr = std::clamp(p.irregularity, 0.0, 1.0);
  if (irr > 0) {
    int nh = 5;
    for (int i = 0; i < nh; ++i) {
      int k = 6 + static_cast<int>(U(rng) * 9);   // 6..14 (above the shape harmonics <= 5)
      if (p.asymmetry_axes == 0 && (k % 2)) ++k;  // even only
      double phase = p.asymmetry_axes == 2 ? U(rng) * 2 * M_PI : (U(rng) < 0.5 ? 0.0 : M_PI);
      hs.push_back(
          {k, irr * 0.22 / std::sqrt(static_cast<double>(nh)) * (0.6 + 0.8 * U(rng)), phase});
    }
  }
  const double R = 0.5 * p.diameter * size;
  const double cx = 0.5 * size + (U(rng) - 0.5) * 0.08 * size;
  const double cy = 0.5 * size + (U(rng) - 0.5) * 0.08 * size;
  // Colour zones, inner to outer.
  static const int kOrder[kNumColours] = {
      4, 5, 3, 0, 1, 2};  // blue-gray, black, dark brown, white, red, light brown
  std::vector<int> zones;
  for (int c : kOrder)
    if (p.colours & (1u << c)) zones.push_back(c);
  if (zones.empty()) zones.push_back(2);
  const int nz = static_cast<int>(zones.size());

  auto skin = skin_rgb(p.fitzpatrick);
  cv::Mat rgb(size, size, CV_8UC3), mask(size, size, CV_8UC1);
  // Low-frequency skin shading.
  double sx = U(rng) * 2 * M_PI, sy = U(rng) * 2 * M_PI;
  std::vector<double> lut(360);
  for (int a = 0; a < 360; ++a) {
    double th = a * M_PI / 180.0;
    double r = 1.0;
    for (const auto& h : hs) r += h.amp * std::cos(h.k * th + h.phase);
    lut[a] = R * r;
  }
  for (int y = 0; y < size; ++y) {
    auto* row = rgb.ptr<uint8_t>(y);
    auto* mrow = mask.ptr<uint8_t>(y);
    for (int x = 0; x < size; ++x) {
      double dx = x + 0.5 - cx, dy = y + 0.5 - cy;
      double th = std::atan2(dy, dx) - p.rotation;
      double deg = std::fmod(th * 180.0 / M_PI + 720.0, 360.0);
      int a0 = static_cast<int>(deg) % 360, a1 = (a0 + 1) % 360;
      double f = deg - std::floor(deg);
      double rr = lut[a0] * (1 - f) + lut[a1] * f;
      double rho = std::sqrt(dx * dx + dy * dy) / std::max(rr, 1e-6);
      double noise = 4.0 * N(rng);
      double col[3];
      if (rho <= 1.0) {
        int z = std::min(nz - 1, static_cast<int>(rho * rho * nz));  // equal-area zones
        auto c = colour_rgb(zones[z]);
        for (int ch = 0; ch < 3; ++ch) col[ch] = c[ch] + noise;
        mrow[x] = 255;
      } else {
        double shade = 6.0 * std::sin(x * 0.07 + sx) * std::cos(y * 0.05 + sy);
        for (int ch = 0; ch < 3; ++ch) col[ch] = skin[ch] + shade + noise;
        mrow[x] = 0;
      }
      if (p.vignette) {
        double d = std::sqrt((x + 0.5 - size / 2.0) * (x + 0.5 - size / 2.0) +
                             (y + 0.5 - size / 2.0) * (y + 0.5 - size / 2.0)) /
                   (0.5 * size);
        double v = d > 0.95 ? std::max(0.08, 1.0 - 2.5 * (d - 0.95)) : 1.0;
        for (double& c : col) c *= v;
      }
      for (int ch = 0; ch < 3; ++ch) row[3 * x + ch] = cv::saturate_cast<uint8_t>(col[ch]);
    }
  }
  if (p.structures) {
    auto rho_at = [&](double x, double y) {
      double dx = x - cx, dy = y - cy;
      double deg = std::fmod((std::atan2(dy, dx) - p.rotation) * 180.0 / M_PI + 720.0, 360.0);
      int a0 = static_cast<int>(deg) % 360, a1 = (a0 + 1) % 360;
      double f = deg - std::floor(deg);
      return std::sqrt(dx * dx + dy * dy) / std::max(lut[a0] * (1 - f) + lut[a1] * f, 1e-6);
    };
    draw_structures(p, R, cx, cy, rho_at, rgb);
  }
  if (p.hair) {
    int n = 2 + static_cast<int>(U(rng) * 6);
    for (int i = 0; i < n; ++i) {
      cv::Point2d a(U(rng) * size, U(rng) * size), b(U(rng) * size, U(rng) * size);
      cv::Point2d m((a.x + b.x) / 2 + (U(rng) - 0.5) * size * 0.3,
                    (a.y + b.y) / 2 + (U(rng) - 0.5) * size * 0.3);
      std::vector<cv::Point> pts;
      for (int s = 0; s <= 16; ++s) {
        double t = s / 16.0;
        cv::Point2d q = (1 - t) * (1 - t) * a + 2 * (1 - t) * t * m + t * t * b;
        pts.emplace_back(static_cast<int>(q.x), static_cast<int>(q.y));
      }
      cv::polylines(rgb, pts, false, cv::Scalar(52, 38, 30), std::max(1, size / 96), cv::LINE_AA);
    }
  }
  *rgb_out = rgb;
  *mask_out = mask;
}

Status write_phantom_folder(const std::string& dir, int n, int size, uint64_t seed,
                            bool structures) {
  if (dir.empty()) return Status::error("data phantom: --out DIR is required");
  LF_RETURN_IF_ERROR(make_dirs(dir));
  std::ostringstream truth;
  std::vector<cv::Mat> tiles;
  for (int i = 0; i < n; ++i) {
    const uint64_t ps = derive_seed(seed, Stream::kPhantom, i);
    PhantomParams p = structures ? sample_structure_phantom_params(ps) : sample_phantom_params(ps);
    cv::Mat rgb, mask, bgr;
    render_phantom(p, size, &rgb, &mask);
    cv::cvtColor(rgb, bgr, cv::COLOR_RGB2BGR);
    char name[64];
    std::snprintf(name, sizeof name, "phantom_%05d", i);
    LF_RETURN_IF_ERROR(write_png(dir + "/" + name + ".png", bgr));
    tiles.push_back(bgr);
    LF_RETURN_IF_ERROR(write_png(dir + "/" + name + "_mask.png", mask));
    nlohmann::json j = p.to_json();
    j["id"] = name;
    j["label"] = p.label();
    truth << j.dump() << '\n';
  }
  LF_RETURN_IF_ERROR(write_file_atomic(dir + "/truth.jsonl", truth.str()));
  return write_png(dir + "/grid.png", make_grid(tiles, 8));
}

}  // namespace lf
