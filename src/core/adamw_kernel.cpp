// See adamw_kernel.h. One loop per case (with and without the EMA) and __restrict, so that GCC
// vectorises them (a store that depends on a run-time flag inside the loop keeps it scalar).
#include "core/adamw_kernel.h"

#include <cmath>

#include "core/vec_math.h"

namespace lf {
namespace {

// The element-wise step, in the order of libtorch's ops: grad.mul_(coef); p.mul_(1 - lr wd);
// exp_avg.mul_(b1).add_(g, 1 - b1); exp_avg_sq.mul_(b2).addcmul_(g, g, 1 - b2);
// denom = (exp_avg_sq.sqrt() / sqrt(bc2)).add_(eps); p.addcdiv_(exp_avg, denom, -step_size).
inline float step_one(float& p, float gi, float& m, float& v, const AdamWStep& s) {
  const float g = gi * s.grad_scale;
  const float mi = m * s.beta1 + s.one_minus_beta1 * g;
  const float vi = v * s.beta2 + s.one_minus_beta2 * (g * g);
  m = mi;
  v = vi;
  const float pi =
      p * s.weight_keep + s.neg_step_size * (mi / (std::sqrt(vi) / s.sqrt_bias2 + s.eps));
  p = pi;
  return pi;
}

// One loop per case, each vectorised (see the file comment).
template <bool kEma, bool kBf16>
inline __attribute__((always_inline)) void step_all(
    float* __restrict p, const float* __restrict grad, float* __restrict m, float* __restrict v,
    float* __restrict ema, uint16_t* __restrict p_bf16, int64_t n, const AdamWStep& s) {
  for (int64_t i = 0; i < n; ++i) {
    const float pi = step_one(p[i], grad[i], m[i], v[i], s);
    if (kEma) ema[i] = ema[i] * s.ema_keep + s.ema_take * pi;
    if (kBf16) p_bf16[i] = to_bf16(pi);
  }
}

}  // namespace

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) void adamw_ema_update(
    float* p, const float* grad, float* m, float* v, float* ema, uint16_t* p_bf16, int64_t n,
    const AdamWStep& s_in) {
  const AdamWStep s = s_in;  // a local copy: the compiler keeps the scalars in registers
  if (ema && p_bf16)
    step_all<true, true>(p, grad, m, v, ema, p_bf16, n, s);
  else if (ema)
    step_all<true, false>(p, grad, m, v, ema, p_bf16, n, s);
  else if (p_bf16)
    step_all<false, true>(p, grad, m, v, ema, p_bf16, n, s);
  else
    step_all<false, false>(p, grad, m, v, ema, p_bf16, n, s);
}

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) double sum_squares(
    const float* __restrict x, int64_t n) {
  // 16 float lanes per block of 4,096 elements (vectorised without reassociation flags: each lane
  // is its own sum), gathered in double between blocks.
  constexpr int kLanes = 16;
  double total = 0;
  int64_t b = 0;
  for (; b + 4096 <= n; b += 4096) {
    float acc[kLanes] = {};
    for (int64_t i = b; i < b + 4096; i += kLanes)
      for (int j = 0; j < kLanes; ++j) acc[j] += x[i + j] * x[i + j];
    for (float a : acc) total += a;
  }
  for (; b < n; ++b) total += static_cast<double>(x[b]) * x[b];
  return total;
}

}  // namespace lf
