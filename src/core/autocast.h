// bf16 autocast on the CPU for a scope: convolutions, linears and matmuls inside run in bfloat16
// (libtorch's CPU autocast op lists); everything else, weights and gradients stay float32.
// Used by the networks whose layers are library modules (classifiers); the MMDiT casts its own
// GEMMs (models/mmdit_blocks.h).
#pragma once

namespace lf {

class ScopedBf16Autocast {
 public:
  explicit ScopedBf16Autocast(bool enable);  // enable = false: does nothing
  ~ScopedBf16Autocast();
  ScopedBf16Autocast(const ScopedBf16Autocast&) = delete;
  ScopedBf16Autocast& operator=(const ScopedBf16Autocast&) = delete;

 private:
  bool on_ = false, prev_enabled_ = false;
  int prev_dtype_ = 0;
};

}  // namespace lf
