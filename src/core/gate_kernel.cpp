// See gate_kernel.h. One loop per case (with and without y2, a template parameter), so that each
// vectorises.
#include "core/gate_kernel.h"

#include "core/vec_math.h"

namespace lf {
namespace {

// y1 + y2 for the two-output case, y1 alone otherwise (no "+ 0": -0 must stay -0).
template <bool kTwo>
inline float y_at(const uint16_t* __restrict a, const uint16_t* __restrict b, int64_t i) {
  return kTwo ? from_bf16(a[i]) + from_bf16(b[i]) : from_bf16(a[i]);
}

template <bool kTwo>
inline __attribute__((always_inline)) void fwd(const float* x, const float* __restrict gt,
                                               const uint16_t* y1, const uint16_t* y2, int64_t n,
                                               int64_t d, float* out) {
  for (int64_t r = 0; r < n; ++r) {
    const float* __restrict xr = x + r * d;
    const uint16_t* __restrict ar = y1 + r * d, * __restrict br = kTwo ? y2 + r * d : nullptr;
    float* __restrict o = out + r * d;
    for (int64_t i = 0; i < d; ++i) o[i] = xr[i] + gt[i] * y_at<kTwo>(ar, br, i);
  }
}

template <bool kTwo>
inline __attribute__((always_inline)) void bwd(const float* g, const float* __restrict gt,
                                               const uint16_t* y1, const uint16_t* y2, int64_t n,
                                               int64_t d, uint16_t* gy, float* __restrict gg) {
  for (int64_t r = 0; r < n; ++r) {
    const float* __restrict gr = g + r * d;
    const uint16_t* __restrict ar = y1 + r * d, * __restrict br = kTwo ? y2 + r * d : nullptr;
    uint16_t* __restrict o = gy + r * d;
    for (int64_t i = 0; i < d; ++i) {
      gg[i] += gr[i] * y_at<kTwo>(ar, br, i);
      o[i] = to_bf16(gr[i] * gt[i]);
    }
  }
}

}  // namespace

#define LF_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

LF_CLONES void gated_add_fwd_bf16(const float* x, const float* gate, const uint16_t* y1,
                                  const uint16_t* y2, int64_t n, int64_t d, float* out) {
  if (y2)
    fwd<true>(x, gate, y1, y2, n, d, out);
  else
    fwd<false>(x, gate, y1, y2, n, d, out);
}

LF_CLONES void gated_add_bwd_bf16(const float* g, const float* gate, const uint16_t* y1,
                                  const uint16_t* y2, int64_t n, int64_t d, uint16_t* gy,
                                  float* ggate) {
  if (y2)
    bwd<true>(g, gate, y1, y2, n, d, gy, ggate);
  else
    bwd<false>(g, gate, y1, y2, n, d, gy, ggate);
}

}  // namespace lf
