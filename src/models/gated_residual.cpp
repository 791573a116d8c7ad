// gated_residual(): the gated residual add of adaLN-Zero fused for the bf16 path (kernel in
// src/core/gate_kernel.cpp). Composed from torch ops it is a cast of the GEMM's bf16 output to
// float32 and an addcmul, and their backward nodes (the gate's gradient a product and a sum over
// the rows, y's a product and a cast back to bf16).
#include "core/gate_kernel.h"
#include "models/bf16_bits.h"
#include "models/mmdit.h"
#include "models/mmdit_blocks.h"

namespace lf {
using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

namespace {

// x [B,L,D] contiguous float32; gate: a [B,1,D] view (its gradient is returned in that shape);
// y1, y2 [B,L,D] contiguous bf16 (y2 empty when there is none: autograd functions take no
// undefined inputs).
struct GatedResidualBf16Fn : public torch::autograd::Function<GatedResidualBf16Fn> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& gate_in,
                        const Tensor& y1, const Tensor& y2) {
    const int64_t B = x.size(0), L = x.size(1), D = x.size(2);
    auto gate = gate_in.reshape({B, D}).contiguous();
    auto out = torch::empty_like(x);
    const float *X = x.data_ptr<float>(), *G = gate.data_ptr<float>();
    const uint16_t *Y1 = bf16_bits(y1), *Y2 = y2.numel() ? bf16_bits(y2) : nullptr;
    float* O = out.data_ptr<float>();
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        gated_add_fwd_bf16(X + b * L * D, G + b * D, Y1 + b * L * D, Y2 ? Y2 + b * L * D : nullptr,
                           L, D, O + b * L * D);
    });
    ctx->save_for_backward({gate, y1, y2});
    ctx->saved_data["gate_shape"] = gate_in.sizes().vec();
    return out;
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    auto sv = ctx->get_saved_variables();
    const Tensor &gate = sv[0], &y1 = sv[1], &y2 = sv[2];
    auto g = grads[0].to(torch::kFloat32).contiguous();
    const int64_t B = y1.size(0), L = y1.size(1), D = y1.size(2);
    auto gy = torch::empty_like(y1);
    auto ggate = torch::zeros({B, D}, g.options());
    const float *Gr = g.data_ptr<float>(), *Gt = gate.data_ptr<float>();
    const uint16_t *Y1 = bf16_bits(y1), *Y2 = y2.numel() ? bf16_bits(y2) : nullptr;
    uint16_t* GY = bf16_bits_mut(gy);
    float* GG = ggate.data_ptr<float>();
    // One batch item per task: its gate-gradient row is summed by one thread in row order, so
    // the result does not depend on the schedule.
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        gated_add_bwd_bf16(Gr + b * L * D, Gt + b * D, Y1 + b * L * D,
                           Y2 ? Y2 + b * L * D : nullptr, L, D, GY + b * L * D, GG + b * D);
    });
    return {g, ggate.view(ctx->saved_data["gate_shape"].toIntVector()), gy,
            y2.numel() ? gy : Tensor()};
  }
};

}  // namespace

Tensor gated_residual(const Tensor& x, const Tensor& gate, const Tensor& y, const Tensor& y2) {
  auto same_bf16 = [&](const Tensor& t) {
    return t.scalar_type() == torch::kBFloat16 && t.sizes() == x.sizes() && t.is_contiguous();
  };
  const bool fused = mmdit_detail::bf16_residual_kernels(x, {&gate}) && same_bf16(y) &&
                     (!y2.defined() || same_bf16(y2));
  if (fused)
    return GatedResidualBf16Fn::apply(x, gate, y,
                                      y2.defined() ? y2 : torch::empty({0}, y.options()));
  auto yf = y.to(x.scalar_type());
  if (y2.defined()) yf = yf + y2.to(x.scalar_type());
  return mmdit_detail::gated_add(x, gate, yf);
}

}  // namespace lf
