// Building blocks of the MMDiT (exposed for tests; include only from torch TUs).
#pragma once
#include "core/bf16_shadow.h"
#include "lesionflow/runtime.h"
#include "models/mmdit.h"

namespace lf::mmdit_detail {
using torch::Tensor;

// One fused pass over x instead of a multiply and an add.
inline Tensor modulate(const Tensor& x, const Tensor& shift, const Tensor& scale) {
  return torch::addcmul(shift, x, 1 + scale);
}
// x + gate * y in one pass (gated residual of adaLN-Zero).
inline Tensor gated_add(const Tensor& x, const Tensor& gate, const Tensor& y) {
  return torch::addcmul(x, gate, y);
}
constexpr double kLnEps = 1e-6;  // the blocks' LayerNorms (ln() and ln_modulate())
inline Tensor ln(const Tensor& x) { return torch::layer_norm(x, {x.size(-1)}, {}, {}, kLnEps); }
// Whether the blocks' fused bf16 kernels on the residual stream (ln_modulate(),
// gated_residual()) take x: under Precision::kBF16, x a contiguous float32 [B,L,D] on the CPU
// and each modulation vector float32 with B*D elements (a [B,1,D] chunk).
inline bool bf16_residual_kernels(const Tensor& x, std::initializer_list<const Tensor*> mods) {
  bool ok = compute_precision() == Precision::kBF16 && x.device().is_cpu() &&
            x.scalar_type() == torch::kFloat32 && x.dim() == 3 && x.is_contiguous();
  for (const Tensor* v : mods)
    ok = ok && v->scalar_type() == torch::kFloat32 && v->numel() == x.size(0) * x.size(2);
  return ok;
}
// [B,N,3D] -> q,k,v [B,H,N,hd]
// (unbind, not three selects: the backward of a select zero-fills and adds a tensor of the whole
// qkv size per head group, 12% of a training step in the bf16 profile; unbind's is one stack)
inline std::tuple<Tensor, Tensor, Tensor> split_heads(const Tensor& qkv, int heads) {
  auto B = qkv.size(0), N = qkv.size(1), D = qkv.size(2) / 3;
  auto t = qkv.reshape({B, N, 3, heads, D / heads}).permute({2, 0, 3, 1, 4}).unbind(0);
  return {t[0], t[1], t[2]};
}
inline Tensor merge_heads(const Tensor& x) {  // [B,H,N,hd] -> [B,N,D]
  return x.transpose(1, 2).reshape({x.size(0), x.size(2), x.size(1) * x.size(3)});
}
// y = x W^T + b; under Precision::kBF16 the GEMM runs in bfloat16 (x cast on the fly, W and b
// taken from their kept bf16 copies, core/bf16_shadow.h; gradients flow back to the float32
// master weights through the casts) and y stays bfloat16 (for
// q, k, v: the QK-norm/RoPE kernel reads bf16 and returns bf16 q, k for the bf16 attention, which
// takes v as it is).
// Whether x goes through a bf16 GEMM: under Precision::kBF16, for float32 inputs and for bf16
// ones (the attention's output, already bf16).
inline bool bf16_gemm(const Tensor& x) {
  return compute_precision() == Precision::kBF16 &&
         (x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kBFloat16);
}
inline Tensor lin_keep(torch::nn::Linear l, const Tensor& x) {
  if (!bf16_gemm(x)) return l->forward(x);
  const auto h = torch::kBFloat16;
  return torch::linear(x.to(h), bf16_weight(l->weight), bf16_weight(l->bias));
}
// lin_keep() with y returned to float32 (under bf16; otherwise it has x's dtype already).
inline Tensor lin(torch::nn::Linear l, const Tensor& x) {  // l: a module handle (shared)
  return bf16_gemm(x) ? lin_keep(l, x).to(torch::kFloat32) : l->forward(x);
}
// mlp2(gelu_tanh(mlp1(x))). Under Precision::kBF16 the hidden activation stays bfloat16 between
// the two GEMMs (no round trip through float32 for the widest tensor of the block).
// x: float32, or bf16 already (ln_modulate()'s output under bf16).
// mlp_keep(): the same with the result left bf16 under bf16 (for gated_residual()).
inline Tensor mlp_keep(torch::nn::Linear l1, torch::nn::Linear l2, const Tensor& x) {
  if (!bf16_gemm(x)) return l2->forward(gelu_tanh(l1->forward(x)));
  const auto h = torch::kBFloat16;
  auto a = torch::linear(x.to(h), bf16_weight(l1->weight), bf16_weight(l1->bias));
  return torch::linear(gelu_tanh(a), bf16_weight(l2->weight), bf16_weight(l2->bias));
}
inline Tensor mlp_p(torch::nn::Linear l1, torch::nn::Linear l2, const Tensor& x) {
  return bf16_gemm(x) ? mlp_keep(l1, l2, x).to(torch::kFloat32) : mlp_keep(l1, l2, x);
}
inline torch::nn::Linear linear(int in, int out, bool zero = false) {
  auto l = torch::nn::Linear(in, out);
  if (zero) {
    torch::nn::init::zeros_(l->weight);
  } else {
    torch::nn::init::xavier_uniform_(l->weight);
  }
  torch::nn::init::zeros_(l->bias);
  return l;
}

// One stream's weights inside a double block.
struct StreamImpl : torch::nn::Module {
  StreamImpl(int dim, int heads, int hidden)
      : mod(register_module("mod", linear(dim, 6 * dim, true))),
        qkv(register_module("qkv", linear(dim, 3 * dim))),
        proj(register_module("proj", linear(dim, dim))),
        mlp1(register_module("mlp1", linear(dim, hidden))),
        mlp2(register_module("mlp2", linear(hidden, dim))) {
    q_norm = register_parameter("q_norm", torch::ones({dim / heads}));
    k_norm = register_parameter("k_norm", torch::ones({dim / heads}));
  }
  torch::nn::Linear mod, qkv, proj, mlp1, mlp2;
  Tensor q_norm, k_norm;
};
TORCH_MODULE(Stream);

struct DoubleBlockImpl : torch::nn::Module {
  DoubleBlockImpl(int dim, int heads, int hidden) : heads(heads) {
    img = register_module("img", Stream(dim, heads, hidden));
    txt = register_module("txt", Stream(dim, heads, hidden));
  }
  // img [B,N,D], txt [B,T,D], vec [B,D]; cos/sin for the joint sequence [T+N, hd/2]
  std::pair<Tensor, Tensor> forward(Tensor img_x, Tensor txt_x, const Tensor& vec,
                                    const Tensor& cos, const Tensor& sin, const Tensor& key_bias) {
    auto sv = torch::silu(vec);
    auto im = lin(img->mod, sv).unsqueeze(1).chunk(6, -1),
         tm = lin(txt->mod, sv).unsqueeze(1).chunk(6, -1);
    // QK norm per stream, RoPE on the joint sequence (text rows: identity), written joint.
    auto [q, k, v] = qkv_heads(lin_keep(txt->qkv, ln_modulate(txt_x, tm[0], tm[1])), txt->q_norm,
                               txt->k_norm, lin_keep(img->qkv, ln_modulate(img_x, im[0], im[1])),
                               img->q_norm, img->k_norm, cos, sin, heads);
    auto [ta, ia] = merge_heads_split(attention(q, k, v, key_bias), txt_x.size(1));
    // (the GEMM outputs stay bf16 under bf16: gated_residual() reads them as they are)
    img_x = gated_residual(img_x, im[2], lin_keep(img->proj, ia));
    img_x = gated_residual(img_x, im[5],
                           mlp_keep(img->mlp1, img->mlp2, ln_modulate(img_x, im[3], im[4])));
    txt_x = gated_residual(txt_x, tm[2], lin_keep(txt->proj, ta));
    txt_x = gated_residual(txt_x, tm[5],
                           mlp_keep(txt->mlp1, txt->mlp2, ln_modulate(txt_x, tm[3], tm[4])));
    return {img_x, txt_x};
  }
  int heads;
  Stream img{nullptr}, txt{nullptr};
};
TORCH_MODULE(DoubleBlock);

struct SingleBlockImpl : torch::nn::Module {
  SingleBlockImpl(int dim, int heads, int hidden) : dim(dim), heads(heads), hidden(hidden) {
    mod = register_module("mod", linear(dim, 3 * dim, true));
    lin1 = register_module("lin1", linear(dim, 3 * dim + hidden));
    lin2 = register_module("lin2", linear(dim + hidden, dim));
    q_norm = register_parameter("q_norm", torch::ones({dim / heads}));
    k_norm = register_parameter("k_norm", torch::ones({dim / heads}));
  }
  Tensor forward(const Tensor& x, const Tensor& vec, const Tensor& cos, const Tensor& sin,
                 const Tensor& key_bias) {
    const int64_t B = x.size(0), L = x.size(1);
    auto m = lin(mod, torch::silu(vec)).unsqueeze(1).chunk(3, -1);
    auto xm = ln_modulate(x, m[0], m[1]).reshape({B * L, dim});
    // lin1 as two GEMMs on row blocks of its weight: the attention and MLP inputs come out as
    // separate contiguous tensors (no strided split; no cat of their gradients in backward).
    // The weight member is read at call time, so a LoRA delta folded into it applies here too.
    const auto &W1 = lin1->weight, &b1 = lin1->bias;
    // Under Precision::kBF16: xm is cast once for both GEMMs, and the MLP half stays bfloat16
    // through the GELU into lin2's GEMM.
    const bool bf16 = compute_precision() == Precision::kBF16 && x.scalar_type() == torch::kFloat32;
    const auto h = torch::kBFloat16;
    Tensor qkv, mh;
    if (bf16) {  // the weight's bf16 copy is sliced (one cast node per weight, in bf16 blocks)
      auto xb = xm.to(h);
      auto W1h = bf16_weight(W1), b1h = bf16_weight(b1);
      qkv = torch::addmm(b1h.narrow(0, 0, 3 * dim), xb, W1h.narrow(0, 0, 3 * dim).t())
                .view({B, L, 3 * dim});  // stays bf16 (see lin_keep)
      mh = torch::addmm(b1h.narrow(0, 3 * dim, hidden), xb, W1h.narrow(0, 3 * dim, hidden).t());
    } else {
      qkv = torch::addmm(b1.narrow(0, 0, 3 * dim), xm, W1.narrow(0, 0, 3 * dim).t())
                .view({B, L, 3 * dim});
      mh = torch::addmm(b1.narrow(0, 3 * dim, hidden), xm, W1.narrow(0, 3 * dim, hidden).t());
    }
    // One segment: the second is empty.
    auto [q, k, v] =
        qkv_heads(qkv, q_norm, k_norm, qkv.narrow(1, L, 0), q_norm, k_norm, cos, sin, heads);
    auto a = merge_heads(attention(q, k, v, key_bias)).reshape({B * L, dim});
    // lin2 on [attention, MLP] as two GEMMs on column blocks of its weight: no cat.
    const auto& W2 = lin2->weight;
    Tensor y;
    if (bf16) {  // both halves in bf16, summed in fp32 by gated_residual()
      auto W2h = bf16_weight(W2);
      auto y1 = torch::addmm(bf16_weight(lin2->bias), a.to(h), W2h.narrow(1, 0, dim).t());
      auto y2 = torch::mm(gelu_tanh(mh), W2h.narrow(1, dim, hidden).t());
      return gated_residual(x, m[2], y1.view({B, L, dim}), y2.view({B, L, dim}));
    } else {
      y = torch::addmm(lin2->bias, a, W2.narrow(1, 0, dim).t())
              .addmm_(gelu_tanh(mh), W2.narrow(1, dim, hidden).t());
    }
    return gated_add(x, m[2], y.view({B, L, dim}));
  }
  int dim, heads, hidden;
  torch::nn::Linear mod{nullptr}, lin1{nullptr}, lin2{nullptr};
  Tensor q_norm, k_norm;
};
TORCH_MODULE(SingleBlock);

struct TextLayerImpl : torch::nn::Module {
  TextLayerImpl(int dim, int heads) : heads(heads) {
    ln1 = register_module("ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim})));
    ln2 = register_module("ln2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim})));
    qkv = register_module("qkv", linear(dim, 3 * dim));
    proj = register_module("proj", linear(dim, dim));
    mlp1 = register_module("mlp1", linear(dim, 4 * dim));
    mlp2 = register_module("mlp2", linear(4 * dim, dim));
  }
  Tensor forward(Tensor x, const Tensor& key_bias) {
    auto [q, k, v] = split_heads(lin(qkv, ln1(x)), heads);
    x = x + lin(proj, merge_heads(attention(q, k, v, key_bias)));
    return x + mlp_p(mlp1, mlp2, ln2(x));
  }
  int heads;
  torch::nn::LayerNorm ln1{nullptr}, ln2{nullptr};
  torch::nn::Linear qkv{nullptr}, proj{nullptr}, mlp1{nullptr}, mlp2{nullptr};
};
TORCH_MODULE(TextLayer);

}  // namespace lf::mmdit_detail
