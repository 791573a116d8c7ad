// See softmax_kernel.h. Row reductions (max, sums) use kLanes partial results so that they
// vectorise without reassociating flags; exp is exp_inline (core/vec_math.h).
#include "core/softmax_kernel.h"

#include <cstring>
#include <limits>

#include "core/vec_math.h"

namespace lf {
namespace {

// exp(a) for a = v - max <= 0, exactly 0 below -87 (a padded key's -1e9 bias gives probability 0,
// as in float32 softmax); NaN stays NaN.
inline float exp_nonpos(float a) { return a < -87.f ? 0.f : exp_inline(a); }

// One row: v = scale * s + bias into buf, its max, then exp and the sum, then the bf16 output.
// buf is padded to a multiple of kLanes with -infinity (max: no effect; exp: exactly 0), so the
// max and exp passes run whole vectors with no scalar tail; the conversion pass is a plain loop
// of its own (fused with the max, GCC kept both scalar: 1.4 ns an element at 104 keys).
template <bool kBias>
inline __attribute__((always_inline)) void fwd_row(const uint16_t* __restrict s,
                                                   const float* __restrict bias, float scale,
                                                   int64_t n, float* __restrict buf,
                                                   uint16_t* __restrict p) {
  const int64_t padded = (n + kLanes - 1) / kLanes * kLanes;
  int64_t i = 0;
  for (; i < n; ++i) buf[i] = from_bf16(s[i]) * scale + (kBias ? bias[i] : 0.f);
  for (; i < padded; ++i) buf[i] = -std::numeric_limits<float>::infinity();
  // The lane maxima as a GCC vector: written as 16 scalar lanes, GCC keeps this loop scalar.
  typedef float Lanes __attribute__((vector_size(kLanes * sizeof(float))));
  Lanes mx;
  for (int64_t k = 0; k < kLanes; ++k) mx[k] = -std::numeric_limits<float>::infinity();
  for (i = 0; i < padded; i += kLanes) {
    Lanes v;
    std::memcpy(&v, buf + i, sizeof v);
    mx = v > mx ? v : mx;
  }
  float m = mx[0];
  for (int64_t k = 1; k < kLanes; ++k) m = mx[k] > m ? mx[k] : m;
  // (padded is a multiple of kLanes: lane_sum runs no scalar tail)
  const float inv =
      1.f / lane_sum(padded, [&](int64_t j) { return buf[j] = exp_nonpos(buf[j] - m); });
  for (i = 0; i < n; ++i) p[i] = to_bf16(buf[i] * inv);
}

}  // namespace

#define LF_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

LF_CLONES void softmax_fwd_bf16(const uint16_t* s, const float* bias, float scale, int64_t rows,
                                int64_t n, uint16_t* p) {
  float buf[kSoftmaxMaxRow + kLanes];
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
