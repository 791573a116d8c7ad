// Image-similarity metrics on 8-bit RGB images (torch-free).
#pragma once
#include <cstdint>
#include <vector>

namespace lf {

// Multi-scale SSIM (Wang et al. 2003) of two size x size RGB images (NHWC bytes) on their luma:
// 11x11 Gaussian windows (sigma 1.5, reflected borders), the image halved by 2x2 averaging
// between scales, as many scales as keep a side >= 16 (3 at 64 px, at most 5), the standard
// 5-scale weights truncated and renormalised. 1 = identical; lower = more different.
double ms_ssim(const uint8_t* a, const uint8_t* b, int size);

// Mean MS-SSIM over pairs of distinct images: every pair when there are at most max_pairs,
// else max_pairs pairs drawn with the seed. NaN for fewer than 2 images. As a diversity check
// (the lower the more diverse), compare a generated group with real images of the same kind.
double mean_pairwise_ms_ssim(const std::vector<const uint8_t*>& images, int size, int max_pairs,
                             uint64_t seed);

}  // namespace lf
