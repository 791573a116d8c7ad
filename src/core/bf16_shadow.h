// bfloat16 copies of float32 weights for the bf16 GEMMs (Precision::kBF16), made once per weight
// update instead of once per use. In training the fused optimizer step writes a weight's copy in
// the same pass that updates the weight (clip_adamw_ema_step in src/train/common.cpp); in
// sampling a weight is cast once for all the steps and prompts.
//
// A copy is reused while its weight is unchanged: same TensorImpl (held weakly), same data
// pointer, same version counter. Every in-place torch op on the weight bumps the counter (so
// copy_, a LoRA merge or a checkpoint load make the copy stale); a writer through raw pointers
// must bump it itself and then refresh the copy (bf16_shadow_for_update) or leave it stale.
#pragma once
#include <cstdint>

#include "pch_torch.h"

namespace lf {

// w rounded to bfloat16, bit for bit w.to(kBFloat16), taken from the kept copy when it is
// current. In the autograd graph of w like the cast it replaces: the gradient flows back to w as
// float32. Weights that are not kept (not float32, not on the CPU, not contiguous, or computed
// by a graph, e.g. a LoRA delta added on the fly) are cast as before.
torch::Tensor bf16_weight(const torch::Tensor& w);

// For a writer that is about to update w in place through raw pointers (the fused optimizer
// step): bumps w's version counter (the update is a change that torch cannot see) and returns
// the kept copy's bits to write bf16(new w) into, then marked current; null when w has no copy
// (it is made at its next use). Call before writing, from one thread.
uint16_t* bf16_shadow_for_update(const torch::Tensor& w);

// For tests: the number of kept copies (after dropping those whose weight is gone) and of the
// casts made so far (a reuse or an optimizer-written copy is not a cast).
struct Bf16ShadowStats {
  size_t kept = 0;
  uint64_t casts = 0;
};
Bf16ShadowStats bf16_shadow_stats();

}  // namespace lf
