// See gate_kernel.h. One loop per case (with and without y2), so that each vectorises.
#include "core/gate_kernel.h"

#include "core/vec_math.h"

namespace lf {
#define LF_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

LF_CLONES void gated_add_fwd_bf16(const float* x, const float* gate, const uint16_t* y1,
                                  const uint16_t* y2, int64_t n, int64_t d, float* out) {
  const float* __restrict gt = gate;
  for (int64_t r = 0; r < n; ++r) {
    const float* __restrict xr = x + r * d;
    const uint16_t* __restrict ar = y1 + r * d;
    float* __restrict o = out + r * d;
    if (y2) {
      const uint16_t* __restrict br = y2 + r * d;
      for (int64_t i = 0; i < d; ++i) o[i] = xr[i] + gt[i] * (from_bf16(ar[i]) + from_bf16(br[i]));
    } else {
      for (int64_t i = 0; i < d; ++i) o[i] = xr[i] + gt[i] * from_bf16(ar[i]);
    }
  }
}

LF_CLONES void gated_add_bwd_bf16(const float* g, const float* gate, const uint16_t* y1,
                                  const uint16_t* y2, int64_t n, int64_t d, uint16_t* gy,
                                  float* ggate) {
  const float* __restrict gt = gate;
  float* __restrict gg = ggate;
  for (int64_t r = 0; r < n; ++r) {
    const float* __restrict gr = g + r * d;
    const uint16_t* __restrict ar = y1 + r * d;
    uint16_t* __restrict o = gy + r * d;
    if (y2) {
      const uint16_t* __restrict br = y2 + r * d;
      for (int64_t i = 0; i < d; ++i) {
        gg[i] += gr[i] * (from_bf16(ar[i]) + from_bf16(br[i]));
        o[i] = to_bf16(gr[i] * gt[i]);
      }
    } else {
      for (int64_t i = 0; i < d; ++i) {
        gg[i] += gr[i] * from_bf16(ar[i]);
        o[i] = to_bf16(gr[i] * gt[i]);
      }
    }
  }
}

}  // namespace lf
