// See gelu_kernel.h. exp is evaluated in-line (exp_inline in core/vec_math.h), so the loops have
// no library calls and vectorise.
#include "core/gelu_kernel.h"

#include "core/vec_math.h"

namespace lf {

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
