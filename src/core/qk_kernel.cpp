// See qk_kernel.h. One template per direction, instantiated for the three type pairs through
// target_clones wrappers. The row sums use kLanes partial sums (a float reduction does not
// vectorise without reassociating flags), so every clone and type pair adds in the same order:
// a bf16 output is the float32 output rounded once, bit for bit.
#include "core/qk_kernel.h"

#include <cmath>

#include "core/vec_math.h"

namespace lf {
namespace {

constexpr float kEps = 1e-6f;

inline float ld(float v) { return v; }
inline float ld(uint16_t v) { return from_bf16(v); }
template <class T>
inline T st(float v);
template <>
inline float st<float>(float v) {
  return v;
}
template <>
inline uint16_t st<uint16_t>(float v) {
  return to_bf16(v);
}

template <class TI, class TO>
inline __attribute__((always_inline)) void fwd(const TI* __restrict x, int64_t xs, int64_t n,
                                               int64_t hd, const float* __restrict w,
                                               const float* __restrict c, const float* __restrict s,
                                               TO* __restrict y, float* __restrict rinv) {
  const int64_t half = hd / 2;
  float xf[kQkMaxHeadDim];
  for (int64_t r = 0; r < n; ++r) {
    const TI* __restrict xr = x + r * xs;
    for (int64_t i = 0; i < hd; ++i) xf[i] = ld(xr[i]);
    const float ri = 1.f / std::sqrt(lane_sum(hd, [&](int64_t i) { return xf[i] * xf[i]; }) /
                                         static_cast<float>(hd) +
                                     kEps);
    rinv[r] = ri;
    const float *cr = c + r * half, *sr = s + r * half;
    TO* __restrict o = y + r * hd;
    for (int64_t j = 0; j < half; ++j) {
      const float y0 = xf[2 * j] * ri * w[2 * j], y1 = xf[2 * j + 1] * ri * w[2 * j + 1];
      o[2 * j] = st<TO>(y0 * cr[j] - y1 * sr[j]);
      o[2 * j + 1] = st<TO>(y0 * sr[j] + y1 * cr[j]);
    }
  }
}

template <class TI, class TG>
inline __attribute__((always_inline)) void bwd(const TI* __restrict x, int64_t xs, int64_t n,
                                               int64_t hd, const float* __restrict w,
                                               const float* __restrict c, const float* __restrict s,
                                               const float* __restrict rinv, const TG* __restrict g,
                                               TI* __restrict gx, int64_t gxs,
                                               float* __restrict gw) {
  const int64_t half = hd / 2;
  float nrm[kQkMaxHeadDim], gn[kQkMaxHeadDim], gwr[kQkMaxHeadDim];
  for (int64_t i = 0; i < hd; ++i) gwr[i] = 0;
  for (int64_t r = 0; r < n; ++r) {
    const TI* __restrict xr = x + r * xs;
    const TG* __restrict gr = g + r * hd;
    const float *cr = c + r * half, *sr = s + r * half;
    const float ri = rinv[r];
    for (int64_t j = 0; j < half; ++j) {  // undo the rotation, then through the weight
      const float g0 = ld(gr[2 * j]), g1 = ld(gr[2 * j + 1]);
      const float gy0 = g0 * cr[j] + g1 * sr[j], gy1 = -g0 * sr[j] + g1 * cr[j];
      const float n0 = ld(xr[2 * j]) * ri, n1 = ld(xr[2 * j + 1]) * ri;
      gwr[2 * j] += gy0 * n0;
      gwr[2 * j + 1] += gy1 * n1;
      gn[2 * j] = gy0 * w[2 * j];
      gn[2 * j + 1] = gy1 * w[2 * j + 1];
      nrm[2 * j] = n0;
      nrm[2 * j + 1] = n1;
    }
    const float d =
        lane_sum(hd, [&](int64_t i) { return gn[i] * nrm[i]; }) / static_cast<float>(hd);
    TI* __restrict gxr = gx + r * gxs;
    for (int64_t i = 0; i < hd; ++i) gxr[i] = st<TI>(ri * (gn[i] - nrm[i] * d));
  }
  for (int64_t i = 0; i < hd; ++i) gw[i] += gwr[i];
}

}  // namespace

#define LF_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

LF_CLONES void qk_fwd_FF(const float* x, int64_t xs, int64_t n, int64_t hd, const float* w,
                         const float* c, const float* s, float* y, float* rinv) {
  fwd(x, xs, n, hd, w, c, s, y, rinv);
}
LF_CLONES void qk_fwd_BF(const uint16_t* x, int64_t xs, int64_t n, int64_t hd, const float* w,
                         const float* c, const float* s, float* y, float* rinv) {
  fwd(x, xs, n, hd, w, c, s, y, rinv);
}
LF_CLONES void qk_fwd_BB(const uint16_t* x, int64_t xs, int64_t n, int64_t hd, const float* w,
                         const float* c, const float* s, uint16_t* y, float* rinv) {
  fwd(x, xs, n, hd, w, c, s, y, rinv);
}
LF_CLONES void qk_bwd_FF(const float* x, int64_t xs, int64_t n, int64_t hd, const float* w,
                         const float* c, const float* s, const float* rinv, const float* g,
                         float* gx, int64_t gxs, float* gw) {
  bwd(x, xs, n, hd, w, c, s, rinv, g, gx, gxs, gw);
}
LF_CLONES void qk_bwd_BF(const uint16_t* x, int64_t xs, int64_t n, int64_t hd, const float* w,
                         const float* c, const float* s, const float* rinv, const float* g,
                         uint16_t* gx, int64_t gxs, float* gw) {
  bwd(x, xs, n, hd, w, c, s, rinv, g, gx, gxs, gw);
}
LF_CLONES void qk_bwd_BB(const uint16_t* x, int64_t xs, int64_t n, int64_t hd, const float* w,
                         const float* c, const float* s, const float* rinv, const uint16_t* g,
                         uint16_t* gx, int64_t gxs, float* gw) {
  bwd(x, xs, n, hd, w, c, s, rinv, g, gx, gxs, gw);
}

}  // namespace lf
