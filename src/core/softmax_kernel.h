// Softmax over the rows of bfloat16 attention scores, on raw arrays (torch-free; the autograd
// function is in src/models/attention.cpp). Written for the auto-vectoriser with x86-64-v4 / v3
// clones chosen at run time, like gelu_kernel.h. Arithmetic in float32; bf16 in and out (raw
// bits, rounded to nearest even).
#pragma once
#include <cstdint>

namespace lf {
// Longest row the kernels take (a row buffer on the stack).
constexpr int64_t kSoftmaxMaxRow = 4096;
// p[r] = softmax(scale * s[r] + bias) for `rows` rows of length n; bias [n] (float32, additive,
// e.g. -1e9 on padded keys) or null. A NaN in a row makes that row NaN.
void softmax_fwd_bf16(const uint16_t* s, const float* bias, float scale, int64_t rows, int64_t n,
                      uint16_t* p);
// The backward with respect to s: ds = scale * p * (dp - sum(dp * p)) per row.
void softmax_bwd_bf16(const uint16_t* p, const uint16_t* dp, float scale, int64_t rows, int64_t n,
                      uint16_t* ds);
}  // namespace lf
