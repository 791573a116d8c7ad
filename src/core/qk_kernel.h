// Per-head RMS norm + rotary embedding of q or k rows, on raw arrays (torch-free; the autograd
// function that walks the [B,H,L,hd] tensors is src/models/qk_norm_rope.cpp). Written for the
// auto-vectoriser with x86-64-v4 / v3 clones chosen at run time, like gelu_kernel.h: the
// torch TUs are built for baseline x86-64 and c10::BFloat16's conversions do not vectorise.
//
// A run is n consecutive sequence positions of one (batch, head): input row r at x + r * xs
// (unit stride inside a row), output rows contiguous. Element types: F = float, B = bfloat16
// (raw bits, rounded to nearest even on the way out). w: the norm weight [hd]; c, s: cos and sin
// of the run's positions, [n, hd/2] contiguous; pairs (2j, 2j+1) are rotated.
#pragma once
#include <cstdint>

namespace lf {
// Longest head dimension the kernels take (their row buffers are on the stack).
constexpr int64_t kQkMaxHeadDim = 512;
// y = rope(x * rinv * w), rinv = 1 / sqrt(mean(x^2) + 1e-6), also written per row.
void qk_fwd_FF(const float* x, int64_t xs, int64_t n, int64_t hd, const float* w, const float* c,
               const float* s, float* y, float* rinv);
void qk_fwd_BF(const uint16_t* x, int64_t xs, int64_t n, int64_t hd, const float* w, const float* c,
               const float* s, float* y, float* rinv);
void qk_fwd_BB(const uint16_t* x, int64_t xs, int64_t n, int64_t hd, const float* w, const float* c,
               const float* s, uint16_t* y, float* rinv);
// Backward of the run: g the output gradient (contiguous rows, the output's type), gx the input
// gradient (the input's type; row r at gx + r * gxs); gw += the weight gradient summed over the
// run.
void qk_bwd_FF(const float* x, int64_t xs, int64_t n, int64_t hd, const float* w, const float* c,
               const float* s, const float* rinv, const float* g, float* gx, int64_t gxs,
               float* gw);
void qk_bwd_BF(const uint16_t* x, int64_t xs, int64_t n, int64_t hd, const float* w, const float* c,
               const float* s, const float* rinv, const float* g, uint16_t* gx, int64_t gxs,
               float* gw);
void qk_bwd_BB(const uint16_t* x, int64_t xs, int64_t n, int64_t hd, const float* w, const float* c,
               const float* s, const float* rinv, const uint16_t* g, uint16_t* gx, int64_t gxs,
               float* gw);
}  // namespace lf
