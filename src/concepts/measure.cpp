// Segmentation and ABC(D) measurements. See docs/concepts.md for every formula and threshold.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <opencv2/imgproc.hpp>
#include <opencv2/photo.hpp>

#include "concepts/structures.h"
#include "lesionflow/concepts.h"

namespace lf {
namespace {

cv::Mat to_lab(const cv::Mat& rgb) {
  cv::Mat f, lab;
  rgb.convertTo(f, CV_32FC3, 1.0 / 255);
  cv::cvtColor(f, lab, cv::COLOR_RGB2Lab);  // L 0..100
  return lab;
}

const std::array<cv::Vec3f, kNumColours>& reference_lab() {
  static const std::array<cv::Vec3f, kNumColours> refs = [] {
    std::array<cv::Vec3f, kNumColours> r;
    for (int c = 0; c < kNumColours; ++c) {
      auto rgb = colour_rgb(c);
      cv::Mat m(1, 1, CV_8UC3, cv::Scalar(rgb[0], rgb[1], rgb[2]));
      r[c] = to_lab(m).at<cv::Vec3f>(0, 0);
    }
    return r;
  }();
  return refs;
}

float delta_e(const cv::Vec3f& a, const cv::Vec3f& b) {
  cv::Vec3f d = a - b;
  return std::sqrt(d.dot(d));
}

// Pixels darkened by the dermoscope vignette: outside the inscribed circle and much darker
// than the skin reference.
cv::Mat vignette_mask(const cv::Mat& lab, float skin_L) {
  cv::Mat v(lab.size(), CV_8UC1, cv::Scalar(0));
  const double cx = lab.cols / 2.0, cy = lab.rows / 2.0, R = std::min(cx, cy);
  for (int y = 0; y < lab.rows; ++y)
    for (int x = 0; x < lab.cols; ++x) {
      double d = std::hypot(x + 0.5 - cx, y + 0.5 - cy);
      if (d > 0.9 * R && lab.at<cv::Vec3f>(y, x)[0] < 0.6 * skin_L) v.at<uint8_t>(y, x) = 255;
    }
  return v;
}

cv::Vec3f median_lab(const cv::Mat& lab, const cv::Mat& select) {
  std::vector<float> ch[3];
  for (int y = 0; y < lab.rows; ++y)
    for (int x = 0; x < lab.cols; ++x)
      if (select.at<uint8_t>(y, x)) {
        auto p = lab.at<cv::Vec3f>(y, x);
        for (int k = 0; k < 3; ++k) ch[k].push_back(p[k]);
      }
  cv::Vec3f m(0, 0, 0);
  for (int k = 0; k < 3; ++k) {
    if (ch[k].empty()) continue;
    std::nth_element(ch[k].begin(), ch[k].begin() + ch[k].size() / 2, ch[k].end());
    m[k] = ch[k][ch[k].size() / 2];
  }
  return m;
}

void fill_holes(cv::Mat& mask) {
  cv::Mat ff = mask.clone();
  cv::copyMakeBorder(ff, ff, 1, 1, 1, 1, cv::BORDER_CONSTANT, 0);
  cv::floodFill(ff, cv::Point(0, 0), 255);
  cv::Mat holes = ff(cv::Rect(1, 1, mask.cols, mask.rows)) == 0;
  mask |= holes;
}

}  // namespace

namespace {
// Thin dark lines and dots (hair, but also network lines, streaks, globules): grey-level
// black-hat with an elliptical kernel of side/20, threshold 18, dilated once.
cv::Mat thin_dark(const cv::Mat& rgb) {
  cv::Mat gray, bh, hair;
  cv::cvtColor(rgb, gray, cv::COLOR_RGB2GRAY);
  int k = std::max(3, std::min(rgb.cols, rgb.rows) / 20) | 1;
  cv::morphologyEx(gray, bh, cv::MORPH_BLACKHAT,
                   cv::getStructuringElement(cv::MORPH_ELLIPSE, {k, k}));
  cv::threshold(bh, hair, 18, 255, cv::THRESH_BINARY);
  cv::dilate(hair, hair, cv::Mat(), {-1, -1}, 1);
  return hair;
}
}  // namespace

namespace {
// The hairs among the thin dark components: those that run on over the skin, with at least
// 0.3 R of their pixels farther than 0.35 R from the lesion (R: its equivalent radius). Lines
// and dots of the lesion itself stay (streaks end within about 0.2 R of the border).
cv::Mat hair_pixels(const cv::Mat& thin, const cv::Mat& mask) {
  cv::Mat hair = cv::Mat::zeros(mask.size(), CV_8UC1);
  const double area = cv::countNonZero(mask);
  if (area == 0 || cv::countNonZero(thin) == 0) return hair;
  const double Rl = std::sqrt(area / M_PI);
  cv::Mat near, labels;
  const int k = std::max(3, static_cast<int>(std::lround(0.7 * Rl))) | 1;
  cv::dilate(mask, near, cv::getStructuringElement(cv::MORPH_ELLIPSE, {k, k}));
  const int n = cv::connectedComponents(thin, labels, 8, CV_32S);
  std::vector<int> far(n, 0);
  for (int y = 0; y < thin.rows; ++y)
    for (int x = 0; x < thin.cols; ++x) {
      int l = labels.at<int>(y, x);
      if (l > 0 && !near.at<uint8_t>(y, x)) far[l]++;
    }
  for (int y = 0; y < thin.rows; ++y)
    for (int x = 0; x < thin.cols; ++x) {
      int l = labels.at<int>(y, x);
      if (l > 0 && far[l] >= 0.3 * Rl) hair.at<uint8_t>(y, x) = 255;
    }
  return hair;
}
}  // namespace

void remove_hair(const cv::Mat& rgb, cv::Mat* out) {
  cv::Mat hair = thin_dark(rgb);
  if (cv::countNonZero(hair) == 0) {
    *out = rgb.clone();
    return;
  }
  cv::inpaint(rgb, hair, *out, 3, cv::INPAINT_TELEA);
}

namespace {
// segment_lesion of an image whose hair is already removed (measure_lesion removes it once).
Segmentation segment_hairless(const cv::Mat& rgb, cv::Mat* mask_out) {
  Segmentation seg;
  seg.source = "auto";
  cv::Mat lab = to_lab(rgb);
  const int W = lab.cols, H = lab.rows;
  cv::Scalar mean_lab = cv::mean(lab);
  *mask_out = cv::Mat::zeros(lab.size(), CV_8UC1);
  if (mean_lab[0] < 5) {
    seg.source = "none";
    seg.warning =
        "image is almost black (mean L* " + std::to_string(mean_lab[0]) + "): no lesion measured";
    return seg;
  }
  // Skin reference from a ring along the image border.
  int ring = std::max(2, std::min(W, H) / 12);
  cv::Mat ring_mask(lab.size(), CV_8UC1, cv::Scalar(255));
  ring_mask(cv::Rect(ring, ring, W - 2 * ring, H - 2 * ring)) = 0;
  cv::Vec3f skin0 = median_lab(lab, ring_mask);
  cv::Mat vig = vignette_mask(lab, skin0[0]);
  cv::Mat ring_ok = ring_mask & ~vig;
  cv::Vec3f skin = cv::countNonZero(ring_ok) > 10 ? median_lab(lab, ring_ok) : skin0;
  // Distance-from-skin map.
  cv::Mat d8(lab.size(), CV_8UC1);
  for (int y = 0; y < H; ++y)
    for (int x = 0; x < W; ++x)
      d8.at<uint8_t>(y, x) =
          vig.at<uint8_t>(y, x)
              ? 0
              : cv::saturate_cast<uint8_t>(delta_e(lab.at<cv::Vec3f>(y, x), skin) * 2.55);
  cv::GaussianBlur(d8, d8, {3, 3}, 0);
  cv::Mat bin;
  double thr = cv::threshold(d8, bin, 0, 255, cv::THRESH_BINARY | cv::THRESH_OTSU);
  // Otsu alone under-segments real lesions (their rims are close to skin colour): threshold at
  // 0.7x Otsu. Chosen on every 25th HAM10000 image (Dice 0.718 at 1.0, 0.78 at 0.6-0.75);
  // the test measures a disjoint subset.
  constexpr double kOtsuScale = 0.7;
  cv::threshold(d8, bin, thr * kOtsuScale, 255, cv::THRESH_BINARY);
  // Separability of the two classes (Otsu's eta).
  cv::Scalar mu, sd;
  cv::meanStdDev(d8, mu, sd);
  double m0 = cv::mean(d8, ~bin)[0], m1 = cv::mean(d8, bin)[0];
  double w1 = cv::countNonZero(bin) / double(W * H), w0 = 1 - w1;
  double eta = sd[0] > 1e-6 ? w0 * w1 * (m1 - m0) * (m1 - m0) / (sd[0] * sd[0]) : 0;
  if (thr < 15) {  // ΔE under ~6 everywhere: nothing stands out from the skin
    seg.source = "none";
    seg.warning = "no lesion detected (no region differs from the surrounding skin)";
    return seg;
  }
  auto k3 = cv::getStructuringElement(cv::MORPH_ELLIPSE, {3, 3});
  auto k5 = cv::getStructuringElement(cv::MORPH_ELLIPSE, {5, 5});
  cv::morphologyEx(bin, bin, cv::MORPH_OPEN, k3);
  cv::morphologyEx(bin, bin, cv::MORPH_CLOSE, k5);
  cv::Mat labels, stats, cents;
  int n = cv::connectedComponentsWithStats(bin, labels, stats, cents, 8);
  int best = -1;
  double best_score = 0;
  const double R2 = (W * W + H * H) / 4.0;
  for (int i = 1; i < n; ++i) {
    double area = stats.at<int>(i, cv::CC_STAT_AREA);
    if (area < 0.003 * W * H) continue;
    double dx = cents.at<double>(i, 0) - W / 2.0, dy = cents.at<double>(i, 1) - H / 2.0;
    double score = area * std::exp(-3.0 * (dx * dx + dy * dy) / R2);
    if (score > best_score) {
      best_score = score;
      best = i;
    }
  }
  if (best < 0) {
    seg.source = "none";
    seg.warning = "no lesion detected (no sufficiently large central region)";
    return seg;
  }
  cv::Mat m = labels == best;
  fill_holes(m);
  double frac = cv::countNonZero(m) / double(W * H);
  seg.confidence = std::clamp(eta, 0.0, 1.0) * (frac > 0.005 && frac < 0.9 ? 1.0 : 0.3);
  if (seg.confidence < 0.3)
    seg.warning = "low-confidence segmentation (" + std::to_string(seg.confidence) + ")";
  *mask_out = m;
  return seg;
}
}  // namespace

Segmentation segment_lesion(const cv::Mat& rgb_in, cv::Mat* mask_out) {
  cv::Mat rgb;
  remove_hair(rgb_in, &rgb);
  return segment_hairless(rgb, mask_out);
}

int fitzpatrick_from_ita(double ita) {
  if (ita > 55) return 1;
  if (ita > 41) return 2;
  if (ita > 28) return 3;
  if (ita > 10) return 4;
  if (ita > -30) return 5;
  return 6;
}

Measurements measure_lesion(const cv::Mat& rgb_full, const cv::Mat& mask_full,
                            const MeasureConfig& cfg) {
  Measurements m;
  const bool mask_fits = !mask_full.empty() && mask_full.size() == rgb_full.size();
  if (!mask_full.empty() && !mask_fits)
    m.warning = "mask size " + std::to_string(mask_full.cols) + "x" +
                std::to_string(mask_full.rows) + " differs from image " +
                std::to_string(rgb_full.cols) + "x" + std::to_string(rgb_full.rows) +
                "; segmented automatically. ";
  // The working size: a larger image is analysed at long side kMeasureMaxSide (every size
  // parameter below is relative to the image, so the result does not depend on the input
  // resolution); diameter_px is reported in the input's pixels.
  cv::Mat rgb_in = rgb_full, mask_in = mask_fits ? mask_full : cv::Mat();
  const int long_side = std::max(rgb_full.cols, rgb_full.rows);
  const double scale = long_side > kMeasureMaxSide ? double(long_side) / kMeasureMaxSide : 1.0;
  if (scale > 1) {
    const cv::Size work(std::max(1, static_cast<int>(std::lround(rgb_full.cols / scale))),
                        std::max(1, static_cast<int>(std::lround(rgb_full.rows / scale))));
    cv::resize(rgb_full, rgb_in, work, 0, 0, cv::INTER_AREA);
    if (mask_fits) cv::resize(mask_full, mask_in, work, 0, 0, cv::INTER_NEAREST);
  }
  // Thin dark components: hair, but also network lines, streaks, globules, small dark zones and
  // thin coloured rings. The segmentation (no mask given) works on the image with all of them
  // inpainted; the colours and structures only lose the hairs (hair_pixels below).
  const cv::Mat thin = thin_dark(rgb_in);
  cv::Mat mask;
  if (!mask_in.empty()) {
    mask = mask_in > 127;
    m.mask_source = "given";
    m.mask_confidence = 1.0;
  } else {
    cv::Mat all_removed;
    if (cv::countNonZero(thin) == 0)
      all_removed = rgb_in.clone();
    else
      cv::inpaint(rgb_in, thin, all_removed, 3, cv::INPAINT_TELEA);
    Segmentation s = segment_hairless(all_removed, &mask);
    m.mask_source = s.source;
    m.mask_confidence = s.confidence;
    if (!s.warning.empty()) m.warning += s.warning;
  }
  const int W = rgb_in.cols, H = rgb_in.rows;
  const double area = cv::countNonZero(mask);
  if (area < 10) {
    if (m.warning.empty()) m.warning = "empty lesion mask: nothing to measure";
    m.mask_source = m.mask_source.empty() ? "none" : m.mask_source;
    return m;
  }
  const cv::Mat hair = hair_pixels(thin, mask);
  cv::Mat rgb;  // hairs inpainted
  const bool has_hair = cv::countNonZero(hair) > 0;
  if (!has_hair)
    rgb = rgb_in;
  else
    cv::inpaint(rgb_in, hair, rgb, 3, cv::INPAINT_TELEA);
  cv::Mat lab = to_lab(rgb);
  m.area_fraction = area / (W * H);
  // Feret diameter from the convex hull.
  std::vector<std::vector<cv::Point>> contours;
  cv::findContours(mask.clone(), contours, cv::RETR_EXTERNAL, cv::CHAIN_APPROX_NONE);
  auto& c = *std::max_element(contours.begin(), contours.end(), [](auto& a, auto& b) {
    return cv::contourArea(a) < cv::contourArea(b);
  });
  std::vector<cv::Point> hull;
  cv::convexHull(c, hull);
  for (size_t i = 0; i < hull.size(); ++i)
    for (size_t j = i + 1; j < hull.size(); ++j)
      m.diameter_px = std::max(m.diameter_px, cv::norm(hull[i] - hull[j]));
  m.diameter_px *= scale;  // in the input image's pixels
  if (cfg.px_per_mm > 0) m.diameter_mm = m.diameter_px / cfg.px_per_mm;
  double perim = cv::arcLength(c, true), carea = cv::contourArea(c);
  m.compactness = carea > 0 ? perim * perim / (4 * M_PI * carea) : 0;
  m.solidity = cv::contourArea(hull) > 0 ? carea / cv::contourArea(hull) : 0;

  // Surrounding skin: ITA on pixels outside the dilated lesion, not vignette-dark. The colours
  // and structures below are judged relative to it.
  cv::Mat around;
  cv::dilate(mask, around, cv::getStructuringElement(cv::MORPH_ELLIPSE, {7, 7}));
  cv::Mat skin_sel = around == 0;
  cv::Vec3f skin = median_lab(lab, skin_sel);
  const bool skin_known = cv::countNonZero(skin_sel) > 20;
  skin_sel &= ~vignette_mask(lab, skin[0]);
  if (cv::countNonZero(skin_sel) > 20) {
    skin = median_lab(lab, skin_sel);
    m.ita = std::atan2(skin[0] - 50.0, skin[2]) * 180.0 / M_PI;
    m.fitzpatrick = fitzpatrick_from_ita(m.ita);
  }

  // Colour classes per lesion pixel (-1: none of the six within max distance). Relative to the
  // skin: a pixel within min_skin_distance of the skin colour is skin-coloured (no class), and
  // "white" must be lighter than the skin.
  const auto& refs = reference_lab();
  const int kWhite = static_cast<int>(DermColour::kWhite);
  cv::Mat cls(mask.size(), CV_8SC1, cv::Scalar(-1));
  std::array<double, kNumColours> cnt{};
  double sumL = 0, sumL2 = 0;
  for (int y = 0; y < H; ++y)
    for (int x = 0; x < W; ++x) {
      if (!mask.at<uint8_t>(y, x)) continue;
      auto p = lab.at<cv::Vec3f>(y, x);
      sumL += p[0];
      sumL2 += p[0] * p[0];
      int best = -1;
      float bd = 1e9f;
      for (int k = 0; k < kNumColours; ++k) {
        float d = delta_e(p, refs[k]);
        if (d < bd) {
          bd = d;
          best = k;
        }
      }
      if (skin_known && (delta_e(p, skin) < cfg.min_skin_distance ||
                         (best == kWhite && p[0] < skin[0] + cfg.white_above_skin)))
        continue;
      if (bd <= cfg.max_colour_distance) {
        cls.at<int8_t>(y, x) = static_cast<int8_t>(best);
        cnt[best]++;
      }
    }
  double best_frac = 0;
  for (int k = 0; k < kNumColours; ++k) {
    m.colour_fraction[k] = cnt[k] / area;
    m.colour_present[k] = m.colour_fraction[k] >= cfg.min_colour_fraction;
    m.colour_count += m.colour_present[k];
    if (m.colour_fraction[k] > best_frac) {
      best_frac = m.colour_fraction[k];
      m.dominant_colour = colour_names()[k];
    }
  }
  double meanL = sumL / area;
  m.colour_variability = std::sqrt(std::max(0.0, sumL2 / area - meanL * meanL));

  // Principal axes and mirror mismatch.
  cv::Moments mo = cv::moments(mask, true);
  double cx = mo.m10 / mo.m00, cy = mo.m01 / mo.m00;
  double theta = 0.5 * std::atan2(2 * mo.mu11, mo.mu20 - mo.mu02);
  for (int a = 0; a < 2; ++a) {
    double ax = theta + a * M_PI / 2, c2 = std::cos(2 * ax), s2 = std::sin(2 * ax);
    double miss = 0, both = 0, diff = 0;
    for (int y = 0; y < H; ++y)
      for (int x = 0; x < W; ++x) {
        if (!mask.at<uint8_t>(y, x)) continue;
        double dx = x - cx, dy = y - cy;
        int rx = static_cast<int>(std::lround(cx + c2 * dx + s2 * dy));
        int ry = static_cast<int>(std::lround(cy + s2 * dx - c2 * dy));
        bool in = rx >= 0 && ry >= 0 && rx < W && ry < H && mask.at<uint8_t>(ry, rx);
        if (!in) {
          miss++;
          continue;
        }
        int8_t c1 = cls.at<int8_t>(y, x), c2c = cls.at<int8_t>(ry, rx);
        if (c1 >= 0 && c2c >= 0) {
          both++;
          diff += c1 != c2c;
        }
      }
    m.shape_mismatch[a] = miss / area;
    m.colour_mismatch[a] = both > 0 ? diff / both : 0;
    m.asymmetry += (m.shape_mismatch[a] > cfg.shape_asym_threshold ||
                    m.colour_mismatch[a] > cfg.colour_asym_threshold);
  }

  // Border: radius function about the centroid, angle from the major axis, 2-degree bins.
  const int nb = 180;
  std::vector<double> r(nb, -1);
  for (const auto& p : c) {
    double ang = std::atan2(p.y + 0.5 - cy, p.x + 0.5 - cx) - theta;
    int b =
        static_cast<int>(std::floor((ang / (2 * M_PI) - std::floor(ang / (2 * M_PI))) * nb)) % nb;
    r[b] = std::max(r[b], std::hypot(p.x + 0.5 - cx, p.y + 0.5 - cy));
  }
  for (int i = 0; i < nb; ++i)  // fill empty bins from neighbours
    if (r[i] < 0)
      for (int k = 1; k < nb; ++k) {
        if (r[(i + k) % nb] >= 0) {
          r[i] = r[(i + k) % nb];
          break;
        }
        if (r[(i - k + nb) % nb] >= 0) {
          r[i] = r[(i - k + nb) % nb];
          break;
        }
      }
  // Smooth fit: Fourier harmonics 0..5 (the overall shape); residual = border irregularity.
  std::vector<double> fit(nb, 0.0);
  for (int k = 0; k <= 5; ++k) {
    double a = 0, b = 0;
    for (int i = 0; i < nb; ++i) {
      double t = 2 * M_PI * i / nb;
      a += r[i] * std::cos(k * t);
      b += r[i] * std::sin(k * t);
    }
    a *= (k == 0 ? 1.0 : 2.0) / nb;
    b *= 2.0 / nb;
    for (int i = 0; i < nb; ++i) {
      double t = 2 * M_PI * i / nb;
      fit[i] += a * std::cos(k * t) + b * std::sin(k * t);
    }
  }
  double rmean = std::accumulate(r.begin(), r.end(), 0.0) / nb;
  for (int s = 0; s < 8; ++s) {
    double ss = 0;
    int n = 0;
    for (int i = s * nb / 8; i < (s + 1) * nb / 8; ++i) {
      ss += (r[i] - fit[i]) * (r[i] - fit[i]);
      ++n;
    }
    m.sector_irregularity[s] = std::sqrt(ss / n) / std::max(rmean, 1e-6);
    m.border += m.sector_irregularity[s] > cfg.sector_threshold;
  }

  // Dermoscopic structures (D), on the image before hair removal, with the hairs masked out.
  const StructureScores st =
      measure_structures(has_hair ? to_lab(rgb_in) : lab, lab, mask, skin, hair);
  m.structure_score = st.score;
  m.structure_present = st.present;
  m.structure_count = st.count;
  m.peppering = st.peppering;
  m.tds = 1.3 * m.asymmetry + 0.1 * m.border + 0.5 * std::max(1, m.colour_count) +
          0.5 * m.structure_count;
  m.ok = true;
  return m;
}

nlohmann::json Measurements::to_json() const {
  nlohmann::json cols = nlohmann::json::object();
  std::vector<std::string> present;
  for (int k = 0; k < kNumColours; ++k) {
    cols[colour_names()[k]] = colour_fraction[k];
    if (colour_present[k]) present.push_back(colour_names()[k]);
  }
  nlohmann::json j = {
      {"ok", ok}, {"mask_source", mask_source}, {"mask_confidence", mask_confidence}};
  if (!warning.empty()) j["warning"] = warning;
  if (!ok) return j;
  j.update({{"area_fraction", area_fraction},
            {"diameter_px", diameter_px},
            {"shape_mismatch", shape_mismatch},
            {"colour_mismatch", colour_mismatch},
            {"asymmetry", asymmetry},
            {"compactness", compactness},
            {"solidity", solidity},
            {"sector_irregularity", sector_irregularity},
            {"border", border},
            {"colour_fraction", cols},
            {"colours", present},
            {"colour_count", colour_count},
            {"dominant_colour", dominant_colour},
            {"colour_variability", colour_variability},
            {"ita", ita},
            {"fitzpatrick", fitzpatrick},
            {"tds", tds}});
  nlohmann::json sj = nlohmann::json::object();
  std::vector<std::string> sp;
  for (int k = 0; k < kNumStructures; ++k) {
    sj[structure_names()[k]] = structure_score[k];
    if (structure_present[k]) sp.push_back(structure_names()[k]);
  }
  j["structure_score"] = sj;
  j["structures"] = sp;
  j["structure_count"] = structure_count;
  j["peppering"] = peppering;
  if (diameter_mm > 0) j["diameter_mm"] = diameter_mm;
  return j;
}

CaptionFacts facts_from_measurements(const Record& r, const Measurements& m) {
  CaptionFacts f = metadata_facts(r);
  if (!m.ok) return f;
  f.asymmetry = m.asymmetry;
  f.border = m.border;
  for (int k = 0; k < kNumColours; ++k)
    if (m.colour_present[k]) f.colours.push_back(colour_names()[k]);
  for (int k = 0; k < kNumStructures; ++k)
    if (m.structure_present[k]) f.structures.push_back(structure_names()[k]);
  f.size_fraction = m.diameter_px > 0 ? std::sqrt(m.area_fraction * 4 / M_PI) : -1;
  f.fitzpatrick = m.fitzpatrick;
  return f;
}

nlohmann::json structured_report(const CaptionFacts& f, const Measurements& m) {
  const std::string unk = "unknown";
  std::string patient;
  if (f.age >= 0) patient += std::to_string(static_cast<int>(f.age)) + "-year-old ";
  patient += f.sex == "unknown" ? "patient of unknown sex" : f.sex;
  if (f.age < 0) patient += ", age unknown";
  if (f.site != "unknown") patient += ", lesion on the " + f.site;
  nlohmann::json j;
  j["patient_info"] = patient;
  if (!m.ok) {
    for (const char* k : {"lesion_colour", "colour_variability", "shape", "shape_variability",
                          "size", "border_definition", "fitzpatrick_skin_type"})
      j[k] = "not measured (" + (m.warning.empty() ? std::string("no lesion") : m.warning) + ")";
  } else {
    std::string cl;
    for (size_t i = 0; i < f.colours.size(); ++i) cl += (i ? ", " : "") + f.colours[i];
    j["lesion_colour"] = f.colours.empty() ? "none of the six dermoscopic colours dominates"
                                           : cl + " (dominant: " + m.dominant_colour + ")";
    j["colour_variability"] = m.colour_count >= 3
                                  ? "high (" + number_word(m.colour_count) + " colours)"
                              : m.colour_count == 2 ? "moderate (two colours)"
                                                    : "low (one colour)";
    j["shape"] = m.asymmetry == 0   ? "symmetric about both principal axes"
                 : m.asymmetry == 1 ? "asymmetric about one principal axis"
                                    : "asymmetric about both principal axes";
    j["shape_variability"] = m.solidity > 0.93   ? "smooth convex outline"
                             : m.solidity > 0.85 ? "slightly lobulated outline"
                                                 : "lobulated, notched outline";
    char buf[96];
    std::snprintf(buf, sizeof buf, "%.1f%% of the image, diameter %.0f px", 100 * m.area_fraction,
                  m.diameter_px);
    j["size"] = buf;
    j["border_definition"] = std::to_string(m.border) + " of 8 border sectors irregular" +
                             (m.border <= 1   ? " (regular)"
                              : m.border <= 4 ? " (slightly irregular)"
                                              : " (irregular)");
    j["fitzpatrick_skin_type"] =
        m.fitzpatrick > 0 ? "type " + roman(m.fitzpatrick) + " (ITA " +
                                std::to_string(static_cast<int>(std::lround(m.ita))) + " degrees)"
                          : unk;
  }
  j["texture"] = "not measured";
  if (m.ok) {
    std::string sl;
    for (int k = 0; k < kNumStructures; ++k)
      if (m.structure_present[k]) sl += (sl.empty() ? "" : ", ") + structure_names()[k];
    j["dermoscopic_patterns"] = sl.empty() ? "no dermoscopic structure detected" : sl;
  } else {
    j["dermoscopic_patterns"] = "not measured";
  }
  j["elevation"] = unk;
  std::string add = f.dx.empty() ? unk : dx_long_name(f.dx);
  if (f.label >= 0) add += f.label ? ", malignant" : ", benign";
  if (m.ok) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "; TDS %.1f", m.tds);
    add += buf;
  }
  j["additional_features"] = add;
  return j;
}

std::string report_prose(const nlohmann::json& r) {
  std::string s;
  for (const char* k :
       {"patient_info", "lesion_colour", "colour_variability", "shape", "shape_variability", "size",
        "border_definition", "texture", "dermoscopic_patterns", "elevation",
        "fitzpatrick_skin_type", "additional_features"}) {
    if (!r.contains(k)) continue;
    std::string key = k;
    std::replace(key.begin(), key.end(), '_', ' ');
    s += key + ": " + r[k].get<std::string>() + ". ";
  }
  if (!s.empty()) s.pop_back();
  return s;
}

}  // namespace lf
