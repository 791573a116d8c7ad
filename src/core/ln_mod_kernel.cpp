// See ln_mod_kernel.h. Row statistics in two passes (mean, then the centred sum of squares, as
// accurate as ATen's), row sums in kLanes partial sums so that they vectorise without
// reassociating flags.
#include "core/ln_mod_kernel.h"

#include <cmath>

#include "core/vec_math.h"

namespace lf {
#define LF_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

LF_CLONES void ln_mod_fwd_bf16(const float* x, int64_t n, int64_t d, const float* shift,
                               const float* scale, float eps, uint16_t* y, float* mean,
                               float* rstd) {
  const float inv_d = 1.f / static_cast<float>(d);
  for (int64_t r = 0; r < n; ++r) {
    const float* __restrict xr = x + r * d;
    uint16_t* __restrict yr = y + r * d;
    const float mu = lane_sum(d, [&](int64_t i) { return xr[i]; }) * inv_d;
    const float var = lane_sum(d, [&](int64_t i) { return (xr[i] - mu) * (xr[i] - mu); }) * inv_d;
    const float rs = 1.f / std::sqrt(var + eps);
    mean[r] = mu;
    rstd[r] = rs;
    for (int64_t i = 0; i < d; ++i)
      yr[i] = to_bf16((xr[i] - mu) * rs * (1.f + scale[i]) + shift[i]);
  }
}

LF_CLONES void ln_mod_bwd_bf16(const float* x, const uint16_t* gy, int64_t n, int64_t d,
                               const float* scale, const float* mean, const float* rstd, float* gx,
                               float* gshift, float* gscale) {
  const float inv_d = 1.f / static_cast<float>(d);
  for (int64_t r = 0; r < n; ++r) {
    const float* __restrict xr = x + r * d;
    const uint16_t* __restrict gr = gy + r * d;
    float* __restrict gxr = gx + r * d;
    float* __restrict gs = gshift;
    float* __restrict gc = gscale;
    const float mu = mean[r], rs = rstd[r];
    // g_xhat = gy * (1 + scale); gx = rs * (g_xhat - mean(g_xhat) - xhat * mean(g_xhat * xhat))
    for (int64_t i = 0; i < d; ++i) {
      const float g = from_bf16(gr[i]), xh = (xr[i] - mu) * rs;
      gs[i] += g;
      gc[i] += g * xh;
    }
    const float m1 =
        lane_sum(d, [&](int64_t i) { return from_bf16(gr[i]) * (1.f + scale[i]); }) * inv_d;
    const float m2 = lane_sum(d,
                              [&](int64_t i) {
                                return from_bf16(gr[i]) * (1.f + scale[i]) * ((xr[i] - mu) * rs);
                              }) *
                     inv_d;
    for (int64_t i = 0; i < d; ++i) {
      const float gxh = from_bf16(gr[i]) * (1.f + scale[i]), xh = (xr[i] - mu) * rs;
      gxr[i] = rs * (gxh - m1 - xh * m2);
    }
  }
}

}  // namespace lf
