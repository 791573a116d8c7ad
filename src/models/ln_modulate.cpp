// ln_modulate(): LayerNorm + adaLN modulation fused for the bf16 path (kernel in
// src/core/ln_mod_kernel.cpp). Composed from torch ops it is a LayerNorm, an addcmul and a cast
// to bf16 for the GEMM that follows, and their three backward nodes plus a cast back.
#include "core/ln_mod_kernel.h"
#include "models/bf16_bits.h"
#include "models/mmdit.h"
#include "models/mmdit_blocks.h"

namespace lf {
using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

namespace {

// x [B,L,D] contiguous float32; shift, scale [B,D] contiguous float32 (the function's inputs are
// the [B,1,D] views; their gradients are returned in that shape).
struct LnModulateBf16Fn : public torch::autograd::Function<LnModulateBf16Fn> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& shift_in,
                        const Tensor& scale_in) {
    const int64_t B = x.size(0), L = x.size(1), D = x.size(2);
    auto shift = shift_in.reshape({B, D}).contiguous(),
         scale = scale_in.reshape({B, D}).contiguous();
    auto y = torch::empty(x.sizes(), x.options().dtype(torch::kBFloat16));
    auto mean = torch::empty({B, L}, x.options()), rstd = torch::empty({B, L}, x.options());
    const float *X = x.data_ptr<float>(), *Sh = shift.data_ptr<float>(),
                *Sc = scale.data_ptr<float>();
    uint16_t* Y = bf16_bits_mut(y);
    float *M = mean.data_ptr<float>(), *R = rstd.data_ptr<float>();
    at::parallel_for(0, B * L, 64, [&](int64_t r0, int64_t r1) {
      // rows r0..r1 may span batch items: one call per item's stretch
      for (int64_t r = r0; r < r1;) {
        const int64_t b = r / L, e = std::min(r1, (b + 1) * L);
        ln_mod_fwd_bf16(X + r * D, e - r, D, Sh + b * D, Sc + b * D,
                        static_cast<float>(mmdit_detail::kLnEps), Y + r * D, M + r, R + r);
        r = e;
      }
    });
    ctx->save_for_backward({x, scale, mean, rstd});
    ctx->saved_data["shift_shape"] = shift_in.sizes().vec();
    ctx->saved_data["scale_shape"] = scale_in.sizes().vec();
    return y;
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    auto sv = ctx->get_saved_variables();
    const Tensor &x = sv[0], &scale = sv[1], &mean = sv[2], &rstd = sv[3];
    auto gy = grads[0].to(torch::kBFloat16).contiguous();
    const int64_t B = x.size(0), L = x.size(1), D = x.size(2);
    auto gx = torch::empty_like(x);
    auto gshift = torch::zeros({B, D}, x.options()), gscale = torch::zeros({B, D}, x.options());
    const float *X = x.data_ptr<float>(), *Sc = scale.data_ptr<float>(),
                *M = mean.data_ptr<float>(), *R = rstd.data_ptr<float>();
    const uint16_t* GY = bf16_bits(gy);
    float *GX = gx.data_ptr<float>(), *GSh = gshift.data_ptr<float>(),
          *GSc = gscale.data_ptr<float>();
    // One batch item per task: its shift/scale gradient rows are written by one thread, in row
    // order, so the sums do not depend on the schedule.
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        ln_mod_bwd_bf16(X + b * L * D, GY + b * L * D, L, D, Sc + b * D, M + b * L, R + b * L,
                        GX + b * L * D, GSh + b * D, GSc + b * D);
    });
    return {gx, gshift.view(ctx->saved_data["shift_shape"].toIntVector()),
            gscale.view(ctx->saved_data["scale_shape"].toIntVector())};
  }
};

}  // namespace

Tensor ln_modulate(const Tensor& x, const Tensor& shift, const Tensor& scale) {
  if (!mmdit_detail::bf16_residual_kernels(x, {&shift, &scale}))
    return mmdit_detail::modulate(mmdit_detail::ln(x), shift, scale);
  return LnModulateBf16Fn::apply(x, shift, scale);
}

}  // namespace lf
