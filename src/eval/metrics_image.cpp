#include <cmath>
#include <opencv2/imgproc.hpp>
#include <random>

#include "lesionflow/image_metrics.h"

namespace lf {

namespace {

// Mean contrast-structure and luminance terms of SSIM between two float images.
std::pair<double, double> ssim_terms(const cv::Mat& x, const cv::Mat& y) {
  const double C1 = std::pow(0.01 * 255, 2), C2 = std::pow(0.03 * 255, 2);
  auto blur = [](const cv::Mat& m) {
    cv::Mat o;
    cv::GaussianBlur(m, o, cv::Size(11, 11), 1.5, 1.5, cv::BORDER_REFLECT);
    return o;
  };
  cv::Mat mx = blur(x), my = blur(y);
  cv::Mat sxx = blur(x.mul(x)) - mx.mul(mx), syy = blur(y.mul(y)) - my.mul(my),
          sxy = blur(x.mul(y)) - mx.mul(my);
  cv::Mat cs = (2 * sxy + C2) / (sxx + syy + C2);
  cv::Mat l = (2 * mx.mul(my) + C1) / (mx.mul(mx) + my.mul(my) + C1);
  return {cv::mean(cs)[0], cv::mean(l)[0]};
}

cv::Mat luma(const uint8_t* px, int size) {
  cv::Mat rgb(size, size, CV_8UC3, const_cast<uint8_t*>(px)), g, f;
  cv::cvtColor(rgb, g, cv::COLOR_RGB2GRAY);
  g.convertTo(f, CV_32F);
  return f;
}

}  // namespace

double ms_ssim(const uint8_t* a, const uint8_t* b, int size) {
  static const double kWeights[5] = {0.0448, 0.2856, 0.3001, 0.2363, 0.1333};
  int scales = 1;
  while (scales < 5 && (size >> scales) >= 16) ++scales;
  double wsum = 0;
  for (int s = 0; s < scales; ++s) wsum += kWeights[s];
  cv::Mat x = luma(a, size), y = luma(b, size);
  double out = 1;
  for (int s = 0; s < scales; ++s) {
    auto [cs, l] = ssim_terms(x, y);
    const double w = kWeights[s] / wsum;
    out *= std::pow(std::max(cs, 0.0), w);
    if (s == scales - 1) {
      out *= std::pow(std::max(l, 0.0), w);
    } else {
      cv::resize(x, x, cv::Size(x.cols / 2, x.rows / 2), 0, 0, cv::INTER_AREA);
      cv::resize(y, y, cv::Size(y.cols / 2, y.rows / 2), 0, 0, cv::INTER_AREA);
    }
  }
  return out;
}

double mean_pairwise_ms_ssim(const std::vector<const uint8_t*>& images, int size, int max_pairs,
                             uint64_t seed) {
  const int64_t n = static_cast<int64_t>(images.size());
  if (n < 2) return std::nan("");
  double sum = 0;
  int64_t count = 0;
  if (n * (n - 1) / 2 <= max_pairs) {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = i + 1; j < n; ++j, ++count) sum += ms_ssim(images[i], images[j], size);
  } else {
    std::mt19937_64 rng(seed);
    std::uniform_int_distribution<int64_t> pick(0, n - 1);
    for (; count < max_pairs; ++count) {
      int64_t i = pick(rng), j = pick(rng);
      while (j == i) j = pick(rng);
      sum += ms_ssim(images[i], images[j], size);
    }
  }
  return sum / count;
}

}  // namespace lf
