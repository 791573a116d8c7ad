// The gated residual of adaLN-Zero, out = x + gate * y, with y the bfloat16 output of a GEMM (or
// the sum of two), on raw arrays (torch-free; the autograd function is gated_residual() in
// src/models/gated_residual.cpp). x86-64-v4 / v3 clones chosen at run time, like gelu_kernel.h.
#pragma once
#include <cstdint>

namespace lf {
// For n rows of length d sharing one gate [d]: out = x + gate * (y1 + y2), float32, with y1 and
// y2 bf16 (raw bits) converted to float32 (y2 may be null). Bit for bit what addcmul(x, gate,
// y1 + y2) gives in float32 (FMA in the AVX clones, as in ATen's; see CMakeLists.txt).
void gated_add_fwd_bf16(const float* x, const float* gate, const uint16_t* y1, const uint16_t* y2,
                        int64_t n, int64_t d, float* out);
// Backward of the same rows from the output gradient g (float32): gy = bf16(g * gate) (the
// gradient of y1 and of y2), and ggate += sum over the rows of g * (y1 + y2), in row order.
// (x's gradient is g itself.)
void gated_add_bwd_bf16(const float* g, const float* gate, const uint16_t* y1, const uint16_t* y2,
                        int64_t n, int64_t d, uint16_t* gy, float* ggate);
}  // namespace lf
