// Attention for short sequences on CPU. torch::bmm runs its batch items one after another, each
// a small GEMM (here ~100x64x100) that OpenBLAS splits over all threads: thread start-up and
// barrier cost more than the arithmetic. This version splits the batch x heads items over the
// intra-op threads instead; inside a parallel region each GEMM runs single-threaded. Forward and
// backward are explicit (a custom autograd function); the math is the plain softmax attention.
#include "models/mmdit.h"

#include <cmath>

namespace lf {
using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

namespace {

// Runs fn(begin, end) over [0, n) in one chunk per intra-op thread. Grad mode is thread-local
// and the pool's threads do not inherit it: every chunk runs without autograd.
template <class F>
void over_items(int64_t n, const F& fn) {
  at::parallel_for(0, n, 1, [&](int64_t b0, int64_t b1) {
    torch::NoGradGuard ng;
    fn(b0, b1);
  });
}

struct AttentionFn : public torch::autograd::Function<AttentionFn> {
  // q [BH,L,hd], k,v [BH,S,hd] contiguous; bias [BH,1,S] additive, or empty (autograd functions
  // cannot take undefined tensors).
  static Tensor forward(AutogradContext* ctx, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias,
                        double scale) {
    const int64_t BH = q.size(0), L = q.size(1), S = k.size(1), hd = q.size(2);
    auto p = torch::empty({BH, L, S}, q.options());
    auto o = torch::empty({BH, L, hd}, q.options());
    over_items(BH, [&](int64_t b0, int64_t b1) {
      const int64_t n = b1 - b0;
      auto pc = p.narrow(0, b0, n);
      if (bias.numel() > 0) {
        pc.copy_(bias.narrow(0, b0, n).expand({n, L, S}));
        at::baddbmm_out(pc, pc, q.narrow(0, b0, n), k.narrow(0, b0, n).transpose(1, 2), 1.0, scale);
      } else {
        at::bmm_out(pc, q.narrow(0, b0, n), k.narrow(0, b0, n).transpose(1, 2));
        pc.mul_(scale);
      }
      at::_softmax_out(pc, pc, -1, false);
      auto oc = o.narrow(0, b0, n);
      at::bmm_out(oc, pc, v.narrow(0, b0, n));
    });
    ctx->save_for_backward({q, k, v, p});
    ctx->saved_data["scale"] = scale;
    return o;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &q = saved[0], &k = saved[1], &v = saved[2], &p = saved[3];
    const double scale = ctx->saved_data["scale"].toDouble();
    auto go = grads[0].contiguous();
    auto dq = torch::empty_like(q), dk = torch::empty_like(k), dv = torch::empty_like(v);
    auto dp = torch::empty_like(p);
    over_items(q.size(0), [&](int64_t b0, int64_t b1) {
      const int64_t n = b1 - b0;
      auto pc = p.narrow(0, b0, n), goc = go.narrow(0, b0, n), dpc = dp.narrow(0, b0, n);
      auto dvc = dv.narrow(0, b0, n), dqc = dq.narrow(0, b0, n), dkc = dk.narrow(0, b0, n);
      at::bmm_out(dvc, pc.transpose(1, 2), goc);                       // dV = P^T dO
      at::bmm_out(dpc, goc, v.narrow(0, b0, n).transpose(1, 2));       // dP = dO V^T
      at::_softmax_backward_data_out(dpc, dpc, pc, -1, pc.scalar_type());  // dS = P (dP - sum(dP P))
      at::bmm_out(dqc, dpc, k.narrow(0, b0, n));                       // dQ = dS K scale
      dqc.mul_(scale);
      at::bmm_out(dkc, dpc.transpose(1, 2), q.narrow(0, b0, n));       // dK = dS^T Q scale
      dkc.mul_(scale);
    });
    return {dq, dk, dv, Tensor(), Tensor()};
  }
};

}  // namespace

Tensor attention_bias(const Tensor& key_mask) {
  if (!key_mask.defined() || key_mask.all().item<bool>()) return {};
  auto bias = torch::zeros(key_mask.sizes(), torch::dtype(torch::kFloat32).device(key_mask.device()))
                  .masked_fill(key_mask.logical_not(), -1e9);
  return bias.view({key_mask.size(0), 1, 1, key_mask.size(1)});
}

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_bias) {
  const int64_t B = q.size(0), H = q.size(1), L = q.size(2), S = k.size(2), hd = q.size(3);
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  if (!q.device().is_cpu()) {  // CUDA: batched GEMMs are efficient there
    auto q3 = q.reshape({B * H, L, hd}), k3t = k.reshape({B * H, S, hd}).transpose(1, 2);
    auto scores = key_bias.defined()
                      ? torch::baddbmm(key_bias.expand({B, H, L, S}).reshape({B * H, L, S}), q3, k3t, 1.0, scale)
                      : torch::bmm(q3, k3t).mul_(scale);
    return torch::bmm(torch::softmax(scores, -1), v.reshape({B * H, S, hd})).view({B, H, L, hd});
  }
  Tensor bias = torch::empty({0}, q.options());
  if (key_bias.defined()) bias = key_bias.expand({B, H, 1, S}).reshape({B * H, 1, S}).contiguous();
  auto o = AttentionFn::apply(q.reshape({B * H, L, hd}).contiguous(), k.reshape({B * H, S, hd}).contiguous(),
                              v.reshape({B * H, S, hd}).contiguous(), bias, scale);
  return o.view({B, H, L, hd});
}

}  // namespace lf
