// LayerNorm (no affine) followed by adaLN modulation, y = LN(x) * (1 + scale) + shift, on raw
// arrays (torch-free; the autograd function is ln_modulate() in src/models/ln_modulate.cpp).
// float32 rows in, bfloat16 rows out (raw bits, rounded to nearest even): the input of a bf16
// GEMM. x86-64-v4 / v3 clones chosen at run time, like gelu_kernel.h.
#pragma once
#include <cstdint>

namespace lf {
// n rows of length d sharing one shift and scale [d]; writes y, and mean and 1/std per row.
void ln_mod_fwd_bf16(const float* x, int64_t n, int64_t d, const float* shift, const float* scale,
                     float eps, uint16_t* y, float* mean, float* rstd);
// Backward of the same n rows from the output gradient gy (bf16): gx (float32 rows), and
// gshift += sum of gy, gscale += sum of gy * LN(x) over the rows.
void ln_mod_bwd_bf16(const float* x, const uint16_t* gy, int64_t n, int64_t d, const float* scale,
                     const float* mean, const float* rstd, float* gx, float* gshift, float* gscale);
}  // namespace lf
