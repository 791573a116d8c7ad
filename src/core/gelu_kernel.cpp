// See gelu_kernel.h. exp is evaluated in-line (range reduction to r in [-ln2/2, ln2/2], a
// degree-6 Taylor polynomial: relative error < 2e-7, then scaling by 2^n through the exponent
// bits), so the loop has no library calls and vectorises.
#include "core/gelu_kernel.h"

#include <cstring>

namespace lf {
namespace {

inline float exp_inline(float x) {
  x = x < -87.f ? -87.f : (x > 88.f ? 88.f : x);
  const float kLog2e = 1.44269504f, kLn2Hi = 0.693145752f, kLn2Lo = 1.42860677e-6f,
              kRound = 12582912.f;                 // 1.5*2^23
  const float n = (x * kLog2e + kRound) - kRound;  // round to nearest
  const float r = (x - n * kLn2Hi) - n * kLn2Lo;
  const float p =
      1.f +
      r * (1.f + r * (0.5f + r * (1.f / 6 + r * (1.f / 24 + r * (1.f / 120 + r * (1.f / 720))))));
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

inline float from_bf16(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
// Round to nearest even (NaN and infinity keep their class: the carry cannot leave the exponent
// field of a NaN, and infinity has a zero mantissa).
inline uint16_t to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

}  // namespace

// __restrict and one loop per case (with and without the derivative): with a store that depends
// on `d` inside the loop, or pointers that may alias, GCC keeps the loop scalar.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) void
gelu_tanh_fwd_bf16(const uint16_t* __restrict x, uint16_t* __restrict y, uint16_t* __restrict d,
                   int64_t n) {
  const float kA = 0.7978845608f, kB = 0.044715f;
  if (!d) {
    for (int64_t i = 0; i < n; ++i) {
      const float v = from_bf16(x[i]);
      y[i] = to_bf16(v / (1.f + exp_inline(-2.f * kA * v * (1.f + kB * v * v))));
    }
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    const float v = from_bf16(x[i]), v2 = v * v;
    const float u2 = 2.f * kA * v * (1.f + kB * v2);
    const float s = 1.f / (1.f + exp_inline(-u2));
    y[i] = to_bf16(v * s);
    d[i] = to_bf16(s + v * s * (1.f - s) * 2.f * kA * (1.f + 3.f * kB * v2));
  }
}

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) void mul_bf16(
    const uint16_t* __restrict g, const uint16_t* __restrict d, uint16_t* __restrict gx,
    int64_t n) {
  for (int64_t i = 0; i < n; ++i) gx[i] = to_bf16(from_bf16(g[i]) * from_bf16(d[i]));
}

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) void gelu_tanh_fwd(
    const float* x, float* y, float* d, int64_t n) {
  const float kA = 0.7978845608f, kB = 0.044715f;  // sqrt(2/pi)
  if (!d) {                                        // inference: no derivative
    for (int64_t i = 0; i < n; ++i) {
      const float v = x[i];
      y[i] = v / (1.f + exp_inline(-2.f * kA * v * (1.f + kB * v * v)));
    }
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i], v2 = v * v;
    const float u2 = 2.f * kA * v * (1.f + kB * v2);  // 2u
    const float s = 1.f / (1.f + exp_inline(-u2));    // sigmoid(2u) = (1 + tanh(u)) / 2
    y[i] = v * s;
    d[i] = s + v * s * (1.f - s) * 2.f * kA * (1.f + 3.f * kB * v2);
  }
}

}  // namespace lf
