// MS-SSIM: known answers and parity with an independent numpy implementation.
#include "lesionflow/image_metrics.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <opencv2/imgproc.hpp>
#include <random>
#include <sstream>

#include "lesionflow/io.h"
#include "test_util.h"

namespace lf {
namespace {

// A 64 px RGB lesion: skin background, a dark ellipse at (cx, cy), optional pixel noise.
std::vector<uint8_t> lesion(int cx, int cy, int r, double noise, uint64_t seed) {
  cv::Mat m(64, 64, CV_8UC3, cv::Scalar(215, 170, 150));
  cv::ellipse(m, {cx, cy}, {r, r * 3 / 4}, 20, 0, 360, cv::Scalar(110, 60, 40), -1);
  cv::GaussianBlur(m, m, cv::Size(5, 5), 1.0);
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> N(0, noise);
  std::vector<uint8_t> px(m.data, m.data + 64 * 64 * 3);
  if (noise > 0)
    for (auto& v : px) v = static_cast<uint8_t>(std::clamp(v + N(rng), 0.0, 255.0));
  return px;
}

}  // namespace

TEST(MsSsim, KnownAnswersAndParityWithANumpyReference) {
  const std::vector<std::vector<uint8_t>> im = {lesion(32, 32, 14, 0, 0),   // 0: base
                                                lesion(32, 32, 14, 6, 1),   // 1: base + noise
                                                lesion(36, 30, 14, 0, 0),   // 2: shifted
                                                lesion(24, 40, 8, 10, 2)};  // 3: another lesion
  EXPECT_NEAR(ms_ssim(im[0].data(), im[0].data(), 64), 1.0, 1e-6);
  const double noisy = ms_ssim(im[0].data(), im[1].data(), 64),
               shifted = ms_ssim(im[0].data(), im[2].data(), 64),
               other = ms_ssim(im[0].data(), im[3].data(), 64);
  EXPECT_NEAR(noisy, ms_ssim(im[1].data(), im[0].data(), 64), 1e-9);  // symmetric
  EXPECT_GT(noisy, other);
  EXPECT_GT(shifted, other);
  EXPECT_LT(other, 0.9);
  // Identical images have mean pairwise MS-SSIM 1; fewer than two images give NaN.
  std::vector<const uint8_t*> same(3, im[0].data()), mixed;
  for (auto& v : im) mixed.push_back(v.data());
  EXPECT_NEAR(mean_pairwise_ms_ssim(same, 64, 100, 0), 1.0, 1e-6);
  EXPECT_TRUE(std::isnan(mean_pairwise_ms_ssim({im[0].data()}, 64, 100, 0)));
  const double all_pairs = mean_pairwise_ms_ssim(mixed, 64, 100, 0);
  EXPECT_LT(all_pairs, 1.0);
  EXPECT_NEAR(mean_pairwise_ms_ssim(mixed, 64, 2000, 7), all_pairs, 1e-12);  // 6 pairs: all

  // numpy: luma as OpenCV's fixed point, an 11-tap Gaussian (sigma 1.5) with symmetric borders,
  // 2x2 averaging, 3 scales with the renormalised standard weights.
  const std::string dir = test::tmp_dir("ms_ssim");
  {
    std::ofstream f(dir + "/im.bin", std::ios::binary);
    for (auto& v : im) f.write(reinterpret_cast<const char*>(v.data()), v.size());
  }
  const std::string py = R"PY(
import numpy as np, sys
im = np.fromfile(sys.argv[1], dtype=np.uint8).reshape(4, 64, 64, 3).astype(np.int64)
def luma(x): return ((x[..., 0] * 4899 + x[..., 1] * 9617 + x[..., 2] * 1868 + 8192) >> 14).astype(np.float64)
k = np.exp(-(np.arange(11) - 5) ** 2 / (2 * 1.5 ** 2)); k /= k.sum()
def blur(m):
    p = np.pad(m, 5, mode='symmetric')
    r = np.array([np.convolve(row, k, mode='valid') for row in p])
    return np.array([np.convolve(col, k, mode='valid') for col in r.T]).T
def terms(x, y):
    C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    return ((2 * sxy + C2) / (sxx + syy + C2)).mean(), ((2 * mx * my + C1) / (mx * mx + my * my + C1)).mean()
w = np.array([0.0448, 0.2856, 0.3001]); w /= w.sum()
def ms(a, b):
    x, y, out = luma(a), luma(b), 1.0
    for s in range(3):
        cs, l = terms(x, y)
        out *= max(cs, 0) ** w[s]
        if s == 2: out *= max(l, 0) ** w[s]
        else:
            x = x.reshape(x.shape[0] // 2, 2, -1, 2).mean((1, 3)); y = y.reshape(y.shape[0] // 2, 2, -1, 2).mean((1, 3))
    return out
print(" ".join("%.8f" % ms(im[0], im[j]) for j in (1, 2, 3)))
)PY";
  {
    std::ofstream f(dir + "/ref.py");
    f << py;
  }
  std::istringstream out(
      run_command_capture("/usr/bin/python3 " + dir + "/ref.py " + dir + "/im.bin"));
  double ref[3] = {NAN, NAN, NAN};
  out >> ref[0] >> ref[1] >> ref[2];
  ASSERT_FALSE(std::isnan(ref[2])) << "python3 with numpy is needed for this test";
  EXPECT_NEAR(noisy, ref[0], 2e-3);
  EXPECT_NEAR(shifted, ref[1], 2e-3);
  EXPECT_NEAR(other, ref[2], 2e-3);
}

}  // namespace lf
