// GELU (tanh form) on raw float arrays, written so that the compiler vectorises it (AVX2 clone
// chosen at run time, SSE2 otherwise). Torch-free: the autograd wrapper is in src/models/.
#pragma once
#include <cstdint>

namespace lf {
// y = 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), computed as x * sigmoid(2u);
// d = dy/dx (skipped when d is null), so that the backward is one multiply. |error| of y is
// ~1e-7 relative to |x|.
void gelu_tanh_fwd(const float* x, float* y, float* d, int64_t n);
// The same on bfloat16 arrays (raw bits): computed in float32, rounded to nearest even on the way
// out; d (skipped when null) is bfloat16 too, as the gradient it multiplies is.
void gelu_tanh_fwd_bf16(const uint16_t* x, uint16_t* y, uint16_t* d, int64_t n);
// gx = g * d on bfloat16 arrays (the backward of gelu_tanh_fwd_bf16), product rounded once.
void mul_bf16(const uint16_t* g, const uint16_t* d, uint16_t* gx, int64_t n);
}  // namespace lf
