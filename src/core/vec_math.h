// Inline scalar helpers for the element-wise kernels written for the auto-vectoriser
// (gelu_kernel.cpp, qk_kernel.cpp, softmax_kernel.cpp, ln_mod_kernel.cpp): bfloat16 <-> float on
// raw bits, lane-partial sums and exp.
#pragma once
#include <cstdint>
#include <cstring>

namespace lf {
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
// sum over i < n of f(i) in kLanes partial sums, then the lanes in order: a float reduction that
// vectorises without reassociating flags, with the same order in every clone and type.
constexpr int64_t kLanes = 16;
template <class F>
inline float lane_sum(int64_t n, const F& f) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t k = 0; k < kLanes; ++k) acc[k] += f(i + k);
  for (int64_t k = 0; i < n; ++i, ++k) acc[k] += f(i);
  float s = 0;
  for (int64_t k = 0; k < kLanes; ++k) s += acc[k];
  return s;
}
// exp by range reduction to r in [-ln2/2, ln2/2], a degree-6 Taylor polynomial (relative error
// < 2e-7) and scaling by 2^n through the exponent bits: no library call, so loops vectorise. The
// argument is clamped to [-87, 88] (exp(-87) ~ 1.6e-38 stands in for underflow to 0).
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

}  // namespace lf
