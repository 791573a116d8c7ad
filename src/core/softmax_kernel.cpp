// See softmax_kernel.h. Row reductions (max, sums) use kLanes partial results so that they
// vectorise without reassociating flags; exp is exp_inline (core/vec_math.h).
#include "core/softmax_kernel.h"

#include "core/vec_math.h"

namespace lf {
namespace {

// exp(a) for a = v - max <= 0, exactly 0 below -87 (a padded key's -1e9 bias gives probability 0,
// as in float32 softmax); NaN stays NaN.
inline float exp_nonpos(float a) { return a < -87.f ? 0.f : exp_inline(a); }

// One row: v = scale * s + bias into buf, its max, then exp and the sum, then the bf16 output.
template <bool kBias>
inline __attribute__((always_inline)) void fwd_row(const uint16_t* __restrict s,
                                                   const float* __restrict bias, float scale,
                                                   int64_t n, float* __restrict buf,
                                                   uint16_t* __restrict p) {
  float mx[kLanes];
  for (int64_t k = 0; k < kLanes; ++k) mx[k] = -3.0e38f;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t k = 0; k < kLanes; ++k) {
      const float v = from_bf16(s[i + k]) * scale + (kBias ? bias[i + k] : 0.f);
      buf[i + k] = v;
      mx[k] = v > mx[k] ? v : mx[k];
    }
  for (int64_t k = 0; i < n; ++i, ++k) {
    const float v = from_bf16(s[i]) * scale + (kBias ? bias[i] : 0.f);
    buf[i] = v;
    mx[k] = v > mx[k] ? v : mx[k];
  }
  float m = mx[0];
  for (int64_t k = 1; k < kLanes; ++k) m = mx[k] > m ? mx[k] : m;
  const float inv = 1.f / lane_sum(n, [&](int64_t j) { return buf[j] = exp_nonpos(buf[j] - m); });
  for (i = 0; i < n; ++i) p[i] = to_bf16(buf[i] * inv);
}

}  // namespace

#define LF_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

LF_CLONES void softmax_fwd_bf16(const uint16_t* s, const float* bias, float scale, int64_t rows,
                                int64_t n, uint16_t* p) {
  float buf[kSoftmaxMaxRow];
  for (int64_t r = 0; r < rows; ++r) {
    if (bias)
      fwd_row<true>(s + r * n, bias, scale, n, buf, p + r * n);
    else
      fwd_row<false>(s + r * n, nullptr, scale, n, buf, p + r * n);
  }
}

LF_CLONES void softmax_bwd_bf16(const uint16_t* p, const uint16_t* dp, float scale, int64_t rows,
                                int64_t n, uint16_t* ds) {
  for (int64_t r = 0; r < rows; ++r) {
    const uint16_t* __restrict pr = p + r * n;
    const uint16_t* __restrict dr = dp + r * n;
    uint16_t* __restrict o = ds + r * n;
    const float d = lane_sum(n, [&](int64_t i) { return from_bf16(pr[i]) * from_bf16(dr[i]); });
    for (int64_t i = 0; i < n; ++i)
      o[i] = to_bf16(scale * from_bf16(pr[i]) * (from_bf16(dr[i]) - d));
  }
}

}  // namespace lf
