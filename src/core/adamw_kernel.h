// The optimizer step of training on raw float arrays: gradient scale (clipping), AdamW and the
// EMA of the weights in one pass over memory, written so that the compiler vectorises it (AVX-512
// / AVX2 clones chosen at run time). Torch-free: the driver that walks libtorch's AdamW state is
// clip_adamw_ema_step() in src/train/common.h.
#pragma once
#include <cstdint>

namespace lf {

// The scalars of one parameter's step, each rounded to float as libtorch rounds the Scalar
// arguments of the in-place ops that torch::optim::AdamW (1.13) runs one after another.
struct AdamWStep {
  float grad_scale = 1;   // clip coefficient: g = grad * grad_scale
  float weight_keep = 1;  // 1 - lr * weight_decay (decoupled decay, applied first)
  float beta1 = 0.9f, one_minus_beta1 = 0.1f;
  float beta2 = 0.999f, one_minus_beta2 = 0.001f;
  float sqrt_bias2 = 1;  // sqrt(1 - beta2^step)
  float eps = 1e-8f;
  float neg_step_size = 0;           // -lr / (1 - beta1^step)
  float ema_keep = 0, ema_take = 1;  // ema = ema_keep * ema + ema_take * p (when ema is given)
};

// For i < n: g = grad*s; p *= weight_keep; m = beta1 m + (1-beta1) g; v = beta2 v + (1-beta2) g^2;
// p += neg_step_size * m / (sqrt(v) / sqrt_bias2 + eps); then the EMA of the new p (ema may be
// null), and p rounded to bfloat16 into p_bf16 (raw bits; may be null: the kept bf16 copy of a
// weight, core/bf16_shadow.h). NaN and infinity propagate as in the unfused ops.
void adamw_ema_update(float* p, const float* grad, float* m, float* v, float* ema, uint16_t* p_bf16,
                      int64_t n, const AdamWStep& s);
// Sum of x[i]^2 in double.
double sum_squares(const float* x, int64_t n);

}  // namespace lf
