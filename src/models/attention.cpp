// Attention for short sequences on CPU. torch::bmm runs its batch items one after another, each
// a small GEMM (here ~100x64x100) that OpenBLAS splits over all threads: thread start-up and
// barrier cost more than the arithmetic. This version splits the batch x heads items over the
// intra-op threads instead; inside a parallel region each GEMM runs single-threaded. Forward and
// backward are explicit (a custom autograd function); the math is the plain softmax attention.
// Under Precision::kBF16 the CPU path is ATen's bf16 bmm instead (see attention() below).
#include <dlfcn.h>

#include <cmath>

#include "core/softmax_kernel.h"
#include "lesionflow/runtime.h"
#include "models/bf16_bits.h"
#include "models/mmdit.h"

namespace lf {
using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

namespace {

// The process's Fortran sgemm_ (libtorch loads the system libblas.so.3: OpenBLAS after
// scripts/setup.sh). Called per batch x head item it skips what bmm does per item on CPU
// (select, as_strided, resolve_conj and a dispatch: ~3% of a training step). Looked up at run
// time so that nothing links BLAS directly; when absent, the bmm path below is used.
using SgemmFn = void (*)(const char*, const char*, const int*, const int*, const int*, const float*,
                         const float*, const int*, const float*, const int*, const float*, float*,
                         const int*);
SgemmFn blas_sgemm() {
  static const SgemmFn fn = reinterpret_cast<SgemmFn>(dlsym(RTLD_DEFAULT, "sgemm_"));
  return fn;
}

// Row-major C[M,N] = alpha * op(A) op(B) + beta * C, with lda/ldb/ldc the row strides. A
// row-major matrix is its column-major transpose, so this is C^T = op(B)^T op(A)^T for BLAS.
void gemm_rm(SgemmFn f, bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda,
             const float* B, int ldb, float beta, float* C, int ldc) {
  const char tA = ta ? 'T' : 'N', tB = tb ? 'T' : 'N';
  f(&tB, &tA, &N, &M, &K, &alpha, B, &ldb, A, &lda, &beta, C, &ldc);
}

// Runs fn(begin, end) over [0, n) in one chunk per intra-op thread. Grad mode is thread-local
// and the pool's threads do not inherit it: every chunk runs without autograd.
template <class F>
void over_items(int64_t n, const F& fn) {
  at::parallel_for(0, n, 1, [&](int64_t b0, int64_t b1) {
    torch::NoGradGuard ng;
    fn(b0, b1);
  });
}

// The direct path: float32 contiguous CPU tensors and a BLAS in the process.
SgemmFn direct_gemm(const Tensor& q) {
  if (q.scalar_type() != torch::kFloat32 || !q.is_contiguous()) return nullptr;
  return blas_sgemm();
}

struct AttentionFn : public torch::autograd::Function<AttentionFn> {
  // q [BH,L,hd], k,v [BH,S,hd] contiguous; bias [BH,1,S] additive, or empty (autograd functions
  // cannot take undefined tensors).
  static Tensor forward(AutogradContext* ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& bias, double scale) {
    const int64_t BH = q.size(0), L = q.size(1), S = k.size(1), hd = q.size(2);
    auto p = torch::empty({BH, L, S}, q.options());
    auto o = torch::empty({BH, L, hd}, q.options());
    if (auto f = direct_gemm(q)) {
      const int iL = static_cast<int>(L), iS = static_cast<int>(S), ih = static_cast<int>(hd);
      const float sc = static_cast<float>(scale);
      const float *Q = q.data_ptr<float>(), *K = k.data_ptr<float>(), *V = v.data_ptr<float>();
      float *P = p.data_ptr<float>(), *O = o.data_ptr<float>();
      const float* Bias = bias.numel() > 0 ? bias.data_ptr<float>() : nullptr;
      over_items(BH, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          float* Pb = P + b * L * S;
          if (Bias)
            for (int64_t i = 0; i < L; ++i) std::copy(Bias + b * S, Bias + (b + 1) * S, Pb + i * S);
          gemm_rm(f, false, true, iL, iS, ih, sc, Q + b * L * hd, ih, K + b * S * hd, ih,
                  Bias ? 1.f : 0.f, Pb, iS);
        }
        auto pc = p.narrow(0, b0, b1 - b0);
        at::_softmax_out(pc, pc, -1, false);
        for (int64_t b = b0; b < b1; ++b)
          gemm_rm(f, false, false, iL, ih, iS, 1.f, P + b * L * S, iS, V + b * S * hd, ih, 0.f,
                  O + b * L * hd, ih);
      });
      ctx->save_for_backward({q, k, v, p});
      ctx->saved_data["scale"] = scale;
      return o;
    }
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
    if (auto f = direct_gemm(q)) {
      const int64_t L = q.size(1), S = k.size(1), hd = q.size(2);
      const int iL = static_cast<int>(L), iS = static_cast<int>(S), ih = static_cast<int>(hd);
      const float sc = static_cast<float>(scale);
      const float *Q = q.data_ptr<float>(), *K = k.data_ptr<float>(), *V = v.data_ptr<float>();
      const float *P = p.data_ptr<float>(), *GO = go.data_ptr<float>();
      float *DQ = dq.data_ptr<float>(), *DK = dk.data_ptr<float>(), *DV = dv.data_ptr<float>(),
            *DP = dp.data_ptr<float>();
      over_items(q.size(0), [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const float *Pb = P + b * L * S, *GOb = GO + b * L * hd;
          gemm_rm(f, true, false, iS, ih, iL, 1.f, Pb, iS, GOb, ih, 0.f, DV + b * S * hd,
                  ih);  // dV = P^T dO
          gemm_rm(f, false, true, iL, iS, ih, 1.f, GOb, ih, V + b * S * hd, ih, 0.f, DP + b * L * S,
                  iS);  // dP = dO V^T
        }
        auto pc = p.narrow(0, b0, b1 - b0), dpc = dp.narrow(0, b0, b1 - b0);
        at::_softmax_backward_data_out(dpc, dpc, pc, -1,
                                       pc.scalar_type());  // dS = P (dP - sum(dP P))
        for (int64_t b = b0; b < b1; ++b) {
          const float* DSb = DP + b * L * S;
          gemm_rm(f, false, false, iL, ih, iS, sc, DSb, iS, K + b * S * hd, ih, 0.f,
                  DQ + b * L * hd, ih);  // dQ = dS K s
          gemm_rm(f, true, false, iS, ih, iL, sc, DSb, iS, Q + b * L * hd, ih, 0.f, DK + b * S * hd,
                  ih);  // dK = dS^T Q s
        }
      });
      return {dq, dk, dv, Tensor(), Tensor()};
    }
    over_items(q.size(0), [&](int64_t b0, int64_t b1) {
      const int64_t n = b1 - b0;
      auto pc = p.narrow(0, b0, n), goc = go.narrow(0, b0, n), dpc = dp.narrow(0, b0, n);
      auto dvc = dv.narrow(0, b0, n), dqc = dq.narrow(0, b0, n), dkc = dk.narrow(0, b0, n);
      at::bmm_out(dvc, pc.transpose(1, 2), goc);                  // dV = P^T dO
      at::bmm_out(dpc, goc, v.narrow(0, b0, n).transpose(1, 2));  // dP = dO V^T
      at::_softmax_backward_data_out(dpc, dpc, pc, -1,
                                     pc.scalar_type());  // dS = P (dP - sum(dP P))
      at::bmm_out(dqc, dpc, k.narrow(0, b0, n));         // dQ = dS K scale
      dqc.mul_(scale);
      at::bmm_out(dkc, dpc.transpose(1, 2), q.narrow(0, b0, n));  // dK = dS^T Q scale
      dkc.mul_(scale);
    });
    return {dq, dk, dv, Tensor(), Tensor()};
  }
};

// Under Precision::kBF16: p = softmax(scale * s + bias) from bf16 scores s [BH,L,S] to bf16 p,
// float32 arithmetic, one pass (core/softmax_kernel.h); the backward is one pass too and uses the
// bf16 p that the output GEMM used. bias: [B,S] float32 (B = BH / heads) or empty.
struct SoftmaxBf16Fn : public torch::autograd::Function<SoftmaxBf16Fn> {
  static Tensor forward(AutogradContext* ctx, const Tensor& s_in, const Tensor& bias, double scale,
                        int64_t heads) {
    auto s = s_in.contiguous();
    const int64_t BH = s.size(0), L = s.size(1), S = s.size(2);
    auto p = torch::empty_like(s);
    const uint16_t* X = bf16_bits(s);
    uint16_t* P = bf16_bits_mut(p);
    const float* Bias = bias.numel() > 0 ? bias.data_ptr<float>() : nullptr;
    const float sc = static_cast<float>(scale);
    over_items(BH, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        softmax_fwd_bf16(X + b * L * S, Bias ? Bias + (b / heads) * S : nullptr, sc, L, S,
                         P + b * L * S);
    });
    ctx->save_for_backward({p});
    ctx->saved_data["scale"] = scale;
    return p;
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    auto p = ctx->get_saved_variables()[0];
    auto dp = grads[0].to(torch::kBFloat16).contiguous();
    auto ds = torch::empty_like(p);
    const int64_t BH = p.size(0), L = p.size(1), S = p.size(2);
    const uint16_t *P = bf16_bits(p), *DP = bf16_bits(dp);
    uint16_t* DS = bf16_bits_mut(ds);
    const float sc = static_cast<float>(ctx->saved_data["scale"].toDouble());
    over_items(BH, [&](int64_t b0, int64_t b1) {
      softmax_bwd_bf16(P + b0 * L * S, DP + b0 * L * S, sc, (b1 - b0) * L, S, DS + b0 * L * S);
    });
    return {ds, Tensor(), Tensor(), Tensor()};
  }
};

}  // namespace

Tensor attention_bias(const Tensor& key_mask) {
  if (!key_mask.defined()) return {};
  // Off the CPU the bias is always built (adding zeros is exact) to save a device sync.
  if (key_mask.device().is_cpu() && key_mask.all().item<bool>()) return {};
  auto bias = (key_mask.to(torch::kFloat32) - 1.0) * 1e9;  // 0 where attended, -1e9 elsewhere
  return bias.view({key_mask.size(0), 1, 1, key_mask.size(1)});
}

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v_in, const Tensor& key_bias) {
  const int64_t B = q.size(0), H = q.size(1), L = q.size(2), S = k.size(2), hd = q.size(3);
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  if (compute_precision() == Precision::kBF16 && q.device().is_cpu()) {
    // bf16: the two batched GEMMs of the forward and the four of the backward in bfloat16 through
    // ATen's bmm (oneDNN:
    // ~400 GFLOP/s at [128,104,64] where float32 bmm runs at ~40 and the float32 per-item kernel
    // below at ~100). Scale, bias and softmax in float32 arithmetic, in one pass each way from
    // bf16 scores to bf16 probabilities (SoftmaxBf16Fn). The output stays bf16: lin_keep() and
    // the single block's addmm take it straight into the projection's bf16 GEMM.
    const auto h = torch::kBFloat16;
    auto q3 = q.to(h).reshape({B * H, L, hd}), k3 = k.to(h).reshape({B * H, S, hd});
    auto scores = torch::bmm(q3, k3.transpose(1, 2));
    Tensor p;
    const bool bias_per_key =
        !key_bias.defined() ||
        (key_bias.dim() == 4 && key_bias.size(0) == B && key_bias.size(1) == 1 &&
         key_bias.size(2) == 1 && key_bias.size(3) == S);
    if (S <= kSoftmaxMaxRow && bias_per_key) {  // (attention_bias() makes [B,1,1,S])
      Tensor bias = torch::empty({0}, q.options().dtype(torch::kFloat32));
      if (key_bias.defined()) bias = key_bias.to(torch::kFloat32).reshape({B, S}).contiguous();
      p = SoftmaxBf16Fn::apply(scores, bias, scale, H);
    } else {
      auto sf = scores.to(torch::kFloat32).mul_(scale);
      if (key_bias.defined()) sf = (sf.view({B, H, L, S}) + key_bias).view({B * H, L, S});
      p = torch::softmax(sf, -1).to(h);
    }
    return torch::bmm(p, v_in.to(h).reshape({B * H, S, hd})).view({B, H, L, hd});
  }
  // v straight from a bf16 GEMM (float32 paths): cast and made contiguous in one pass.
  const Tensor v = v_in.scalar_type() == q.scalar_type()
                       ? v_in
                       : v_in.to(q.scalar_type(), false, false, c10::MemoryFormat::Contiguous);
  if (!q.device().is_cpu()) {  // CUDA: batched GEMMs are efficient there
    auto q3 = q.reshape({B * H, L, hd}), k3t = k.reshape({B * H, S, hd}).transpose(1, 2);
    auto scores = key_bias.defined()
                      ? torch::baddbmm(key_bias.expand({B, H, L, S}).reshape({B * H, L, S}), q3,
                                       k3t, 1.0, scale)
                      : torch::bmm(q3, k3t).mul_(scale);
    return torch::bmm(torch::softmax(scores, -1), v.reshape({B * H, S, hd})).view({B, H, L, hd});
  }
  Tensor bias = torch::empty({0}, q.options());
  if (key_bias.defined()) bias = key_bias.expand({B, H, 1, S}).reshape({B * H, 1, S}).contiguous();
  auto o = AttentionFn::apply(q.reshape({B * H, L, hd}).contiguous(),
                              k.reshape({B * H, S, hd}).contiguous(),
                              v.reshape({B * H, S, hd}).contiguous(), bias, scale);
  return o.view({B, H, L, hd});
}

}  // namespace lf
