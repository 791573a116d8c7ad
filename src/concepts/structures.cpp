#include "concepts/structures.h"

#include <algorithm>
#include <cmath>
#include <opencv2/imgproc.hpp>
#include <vector>

namespace lf {
namespace {

// Black-hat contrast (L* units) above which a pixel belongs to a dark structure.
constexpr double kDarkContrast = 8.0;
// Pigment network: L* by which a hole's ring is darker than its centre (on L* smoothed with
// sigma 0.012 R), the least number of holes, and their least share of the lesion.
constexpr double kHoleContrast = 3.0;
constexpr int kMinHoles = 8;
constexpr double kNetworkShare = 0.12;

int odd_px(double v, int min_px) { return std::max(min_px, static_cast<int>(std::lround(v))) | 1; }

cv::Mat disc(int d) { return cv::getStructuringElement(cv::MORPH_ELLIPSE, {d, d}); }

struct Blob {
  double area = 0, cx = 0, cy = 0;
  double major = 0, minor = 0;  // 4 sqrt(eigenvalue): full lengths of the equivalent ellipse
  double angle = 0;             // of the major axis
  double solidity = 0;
  double outside = 0;  // share of the blob outside the lesion mask
  bool touches = false;
};

// Connected components of `bin` (0/255) with shape statistics; components of fewer than
// `min_area` pixels are skipped. `region` (optional): `touches` = the blob reaches outside it.
std::vector<Blob> blobs(const cv::Mat& bin, const cv::Mat& mask, double min_area,
                        const cv::Mat& region = cv::Mat()) {
  std::vector<std::vector<cv::Point>> contours;
  cv::Mat labels, stats, cents;
  const int n = cv::connectedComponentsWithStats(bin, labels, stats, cents, 8, CV_32S);
  std::vector<Blob> out;
  for (int i = 1; i < n; ++i) {
    const int a = stats.at<int>(i, cv::CC_STAT_AREA);
    if (a < min_area) continue;
    cv::Rect box(stats.at<int>(i, cv::CC_STAT_LEFT), stats.at<int>(i, cv::CC_STAT_TOP),
                 stats.at<int>(i, cv::CC_STAT_WIDTH), stats.at<int>(i, cv::CC_STAT_HEIGHT));
    cv::Mat one = labels(box) == i;
    cv::Moments mo = cv::moments(one, true);
    Blob b;
    b.area = a;
    b.cx = box.x + mo.m10 / mo.m00;
    b.cy = box.y + mo.m01 / mo.m00;
    const double mu20 = mo.mu20 / mo.m00, mu02 = mo.mu02 / mo.m00, mu11 = mo.mu11 / mo.m00;
    const double tr = mu20 + mu02,
                 det = std::sqrt(std::max(0.0, (mu20 - mu02) * (mu20 - mu02) + 4 * mu11 * mu11));
    b.major = 4 * std::sqrt(std::max(0.0, (tr + det) / 2));
    b.minor = 4 * std::sqrt(std::max(0.0, (tr - det) / 2));
    b.angle = 0.5 * std::atan2(2 * mu11, mu20 - mu02);
    std::vector<std::vector<cv::Point>> cs;
    cv::findContours(one.clone(), cs, cv::RETR_EXTERNAL, cv::CHAIN_APPROX_SIMPLE);
    double hull_area = 0;
    for (auto& c : cs) {
      std::vector<cv::Point> h;
      cv::convexHull(c, h);
      hull_area += cv::contourArea(h);
    }
    b.solidity = hull_area > 0 ? std::min(1.0, a / hull_area) : 1.0;
    b.outside = 1.0 - cv::countNonZero(one & mask(box)) / static_cast<double>(a);
    if (!region.empty()) b.touches = cv::countNonZero(one & ~region(box)) > 0;
    out.push_back(b);
  }
  return out;
}

}  // namespace

StructureScores measure_structures(const cv::Mat& lab, const cv::Mat& lab_hairless,
                                   const cv::Mat& mask_in, const cv::Vec3f& skin,
                                   const cv::Mat& hair) {
  StructureScores s;
  cv::Mat mask = mask_in > 0;
  const double area = cv::countNonZero(mask);
  if (area < 100) return s;
  const double R = std::sqrt(area / M_PI);  // equivalent radius of the lesion (px)
  cv::Moments mo = cv::moments(mask, true);
  const double cx = mo.m10 / mo.m00, cy = mo.m01 / mo.m00;
  cv::Mat L;
  cv::extractChannel(lab, L, 0);
  // Dark thin structures: black-hat of L* with a disc of 0.18 R (wider than lines, globules and
  // streaks, narrower than the lesion), in the lesion and a margin of 0.25 R around it.
  cv::Mat bh, zone, dark;
  cv::morphologyEx(L, bh, cv::MORPH_BLACKHAT, disc(odd_px(0.18 * R, 5)));
  cv::dilate(mask, zone, disc(odd_px(0.5 * R, 3)));
  dark = (bh > kDarkContrast) & zone;
  if (!hair.empty()) dark &= ~hair;

  // Dots/globules: round, solid dark blobs of radius 0.03-0.1 R inside the lesion. An opening
  // with a disc of 0.075 R first removes thin lines (network, streaks) that globules touch.
  const double r_min = 0.03 * R, r_max = 0.1 * R;
  cv::Mat thick;
  cv::morphologyEx(dark, thick, cv::MORPH_OPEN, disc(odd_px(0.075 * R, 3)));
  int globules = 0;
  for (const auto& b : blobs(thick, mask, std::max(3.0, M_PI * r_min * r_min))) {
    const double r = std::sqrt(b.area / M_PI);
    if (r <= r_max && b.outside < 0.2 && b.minor > 0 && b.major / b.minor < 2.0 &&
        b.solidity > 0.75)
      ++globules;
  }
  s.score[1] = globules;
  s.present[1] = globules >= 4;

  // Streaks: elongated dark lines along the radius that cross the border, looked for in the rim
  // (outside the lesion eroded by 0.12 R, where a network no longer joins them), at least
  // 0.15 R long there.
  cv::Mat core, rim;
  cv::erode(mask, core, disc(odd_px(0.24 * R, 3)));
  rim = dark & ~core;
  int streaks = 0;
  for (const auto& b : blobs(rim, mask, 0.1 * R)) {
    if (b.minor <= 0 || b.major / b.minor < 3.0 || b.major < 0.15 * R) continue;
    if (b.outside < 0.1 || b.outside > 0.9) continue;
    const double rx = b.cx - cx, ry = b.cy - cy, rn = std::hypot(rx, ry);
    if (rn < 0.3 * R) continue;
    const double cosang = std::abs(std::cos(b.angle) * rx + std::sin(b.angle) * ry) / rn;
    if (cosang >= 0.85) ++streaks;
  }
  s.score[2] = streaks;
  s.present[2] = streaks >= 3;

  // Pigment network: a connected mesh of dark lines around light holes, found two ways.
  // (a) Coarse, well-resolved meshes: light cells of side 0.05-0.25 R enclosed by dark lines
  // (black-hat above kDarkContrast), away from the border.
  cv::Mat inner, light;
  cv::erode(mask, inner, disc(odd_px(0.1 * R, 3)));
  light = inner & ~dark;
  if (!hair.empty()) light &= ~hair;  // a hair across the mesh separates cells, never joins them
  double cell_area = 0;
  int cells = 0;
  for (const auto& b : blobs(light, mask, 0.0025 * R * R, inner)) {
    if (b.touches || b.area > 0.0625 * R * R || b.solidity < 0.6) continue;
    ++cells;
    cell_area += b.area;
  }
  const bool coarse = cells >= 6 && cell_area / area >= 0.08;
  // (b) Fine, faint meshes (a real network at HAM's 200x150 px has holes of 1-3 px whose lines
  // do not close in the pixel grid): a hole is a local maximum of L* (smoothed with sigma
  // 0.012 R) inside the lesion, away from the border and hairs, that is darker by
  // kHoleContrast or more at >= 13 of 16 points of a ring of radius 0.04-0.14 R around it, where
  // each of those points lies on a mesh: a connected dark component (black-hat of the smoothed
  // L* above kHoleContrast) of at least 0.03 R^2. The rays of the light background between
  // separate dots, globules or granules meet no mesh, and a light spot beside a line fails the
  // ring.
  cv::Mat Ls, bh_s, fine_dark;
  const double sigma = std::max(0.5, 0.012 * R);
  cv::GaussianBlur(L, Ls, cv::Size(), sigma);
  cv::morphologyEx(Ls, bh_s, cv::MORPH_BLACKHAT, disc(odd_px(0.18 * R, 5)));
  fine_dark = (bh_s > kHoleContrast) & zone;
  cv::Mat mesh = cv::Mat::zeros(mask.size(), CV_8U);
  {
    cv::Mat labels, stats, cents;
    const int n = cv::connectedComponentsWithStats(fine_dark, labels, stats, cents, 8, CV_32S);
    std::vector<uint8_t> keep(n, 0);
    for (int i = 1; i < n; ++i) keep[i] = stats.at<int>(i, cv::CC_STAT_AREA) >= 0.03 * R * R;
    for (int y = 0; y < mask.rows; ++y)
      for (int x = 0; x < mask.cols; ++x)
        mesh.at<uint8_t>(y, x) = keep[labels.at<int>(y, x)] ? 255 : 0;
    cv::dilate(mesh, mesh, cv::Mat());  // a ring point at the edge of a line is on the mesh
  }
  cv::Mat near_hair;
  if (!hair.empty()) cv::dilate(hair, near_hair, disc(odd_px(0.3 * R, 3)));
  cv::Mat local_max;
  cv::dilate(Ls, local_max, cv::Mat());
  const auto sample = [&](double x, double y) {
    x = std::clamp(x, 0.0, Ls.cols - 1.001);
    y = std::clamp(y, 0.0, Ls.rows - 1.001);
    const int x0 = static_cast<int>(x), y0 = static_cast<int>(y);
    const double fx = x - x0, fy = y - y0;
    return (1 - fy) * ((1 - fx) * Ls.at<float>(y0, x0) + fx * Ls.at<float>(y0, x0 + 1)) +
           fy * ((1 - fx) * Ls.at<float>(y0 + 1, x0) + fx * Ls.at<float>(y0 + 1, x0 + 1));
  };
  constexpr int kRays = 16, kRaysDark = 13;
  std::array<double, kRays> cs{}, sn{};
  for (int k = 0; k < kRays; ++k) {
    cs[k] = std::cos(2 * M_PI * k / kRays);
    sn[k] = std::sin(2 * M_PI * k / kRays);
  }
  int holes = 0;
  for (int y = 1; y + 1 < Ls.rows; ++y)
    for (int x = 1; x + 1 < Ls.cols; ++x) {
      if (!inner.at<uint8_t>(y, x) || (!near_hair.empty() && near_hair.at<uint8_t>(y, x))) continue;
      const float v = Ls.at<float>(y, x);
      if (v < local_max.at<float>(y, x)) continue;
      for (double rf : {0.04, 0.06, 0.08, 0.11, 0.14}) {
        const double r = std::max(1.5, rf * R);
        int darker = 0;
        for (int k = 0; k < kRays; ++k) {
          const double sx = x + r * cs[k], sy = y + r * sn[k];
          const int px = std::clamp(static_cast<int>(std::lround(sx)), 0, mesh.cols - 1),
                    py = std::clamp(static_cast<int>(std::lround(sy)), 0, mesh.rows - 1);
          darker += mesh.at<uint8_t>(py, px) && sample(sx, sy) <= v - kHoleContrast;
        }
        if (darker >= kRaysDark) {
          ++holes;
          break;
        }
      }
    }
  const double inner_area = std::max(1.0, static_cast<double>(cv::countNonZero(inner)));
  const double hole_share = std::min(1.0, holes * M_PI * 0.0064 * R * R / inner_area);
  const bool fine = holes >= kMinHoles && hole_share >= kNetworkShare;
  // score: the larger of the two shares of the lesion (enclosed cells; holes, each counted as a
  // cell of radius 0.08 R).
  s.score[0] = std::max(cell_area / area, hole_share);
  s.present[0] = coarse || fine;

  // Blue-whitish veil and the white scar of regression: colour regions relative to the skin.
  // Shares of the lesion's pixels that are not part of a dark line or dot (network lines and
  // peppering cross these areas without making them less veil-like or scar-like).
  double veil = 0, white = 0, base = 0;
  // The scar of regression: lighter than the surrounding skin (and L* >= 60), no more saturated
  // than it (+4) and not blue (b* >= -4: blue-white is the veil), relative to
  // the skin like the colours. (An absolute L* >= 75 and chroma <= 10 almost never held on
  // HAM10000's pinkish skin: 0.00 of the melanomas, 0.01 of the BCCs.)
  const double skin_chroma = std::hypot(skin[1], skin[2]);
  for (int y = 0; y < lab.rows; ++y)
    for (int x = 0; x < lab.cols; ++x) {
      if (!mask.at<uint8_t>(y, x) || dark.at<uint8_t>(y, x)) continue;
      ++base;
      const auto p = lab_hairless.at<cv::Vec3f>(y, x);
      const double chroma = std::hypot(p[1], p[2]);
      if (p[0] >= 55 && p[0] <= 85 && p[2] <= -6 && p[2] <= skin[2] - 10 && p[1] <= 12) ++veil;
      if (p[0] >= std::max(60.0, skin[0] + 3.0) && chroma <= skin_chroma + 4.0 && p[2] >= -4.0)
        ++white;
    }
  base = std::max(base, 1.0);
  s.score[3] = veil / base;
  s.present[3] = s.score[3] >= 0.05;
  // Peppering: tiny dark granules (radius under 0.03 R) in the lesion, bluer than the skin.
  for (const auto& b : blobs(dark, mask, 1.0)) {
    if (std::sqrt(b.area / M_PI) >= r_min || b.outside > 0) continue;
    const auto p = lab.at<cv::Vec3f>(std::clamp(static_cast<int>(b.cy), 0, lab.rows - 1),
                                     std::clamp(static_cast<int>(b.cx), 0, lab.cols - 1));
    if (p[2] <= skin[2] - 6) ++s.peppering;
  }
  s.score[4] = white / base;
  s.present[4] = s.score[4] >= 0.05 || (s.score[4] >= 0.02 && s.peppering >= 15);
  for (bool p : s.present) s.count += p;
  return s;
}

}  // namespace lf
