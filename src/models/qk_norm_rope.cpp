// Fused per-head RMS norm + rotary embedding of q or k, for two sequence segments (text and image
// rows, each with its own norm weight) written straight into one joint tensor. Composed from
// torch ops this is ~6 passes for the norm, 4 multiplies, 2 adds, a stack and two selects for
// RoPE, and a strided cat per tensor, each again in backward; here it is one pass each way. The
// arithmetic is in core/qk_kernel.cpp (vectorised clones); this file walks the tensors.
#include <cmath>
#include <vector>

#include "core/qk_kernel.h"
#include "lesionflow/runtime.h"
#include "models/bf16_bits.h"
#include "models/mmdit.h"
#include "models/mmdit_blocks.h"

namespace lf {
using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

namespace {

constexpr float kEps = 1e-6f;  // as rms_norm in mmdit_blocks.h

// Row l of the joint sequence [B,H,La+Lb,hd]: where its input lives and which weight it uses.
// T: the input element type (float, or bf16 straight from a bf16 GEMM; read as float).
template <class T>
struct Segments {
  const T *xa, *xb;
  const float *wa, *wb;
  int64_t La, Lb, H, hd;
  int64_t sa[3], sb[3];  // strides (b, h, l) of xa and xb; the last dim is unit-stride
  const T* row(int64_t b, int64_t h, int64_t l) const {
    return l < La ? xa + b * sa[0] + h * sa[1] + l * sa[2]
                  : xb + b * sb[0] + h * sb[1] + (l - La) * sb[2];
  }
  const float* weight(int64_t l) const { return l < La ? wa : wb; }
};

template <class T>
Segments<T> segments(const Tensor& xa, const Tensor& wa, const Tensor& xb, const Tensor& wb) {
  Segments<T> s{xa.data_ptr<T>(),
                xb.data_ptr<T>(),
                wa.data_ptr<float>(),
                wb.data_ptr<float>(),
                xa.size(2),
                xb.size(2),
                xa.size(1),
                xa.size(3),
                {},
                {}};
  for (int d = 0; d < 3; ++d) {
    s.sa[d] = xa.stride(d);
    s.sb[d] = xb.stride(d);
  }
  return s;
}

void fwd_run(const float* x, int64_t xs, int64_t n, int64_t hd, const float* w, const float* c,
             const float* s, float* y, float* ri) {
  qk_fwd_FF(x, xs, n, hd, w, c, s, y, ri);
}
void fwd_run(const uint16_t* x, int64_t xs, int64_t n, int64_t hd, const float* w, const float* c,
             const float* s, float* y, float* ri) {
  qk_fwd_BF(x, xs, n, hd, w, c, s, y, ri);
}
void fwd_run(const uint16_t* x, int64_t xs, int64_t n, int64_t hd, const float* w, const float* c,
             const float* s, uint16_t* y, float* ri) {
  qk_fwd_BB(x, xs, n, hd, w, c, s, y, ri);
}
void bwd_run(const float* x, int64_t xs, int64_t n, int64_t hd, const float* w, const float* c,
             const float* s, const float* ri, const float* g, float* gx, int64_t gxs, float* gw) {
  qk_bwd_FF(x, xs, n, hd, w, c, s, ri, g, gx, gxs, gw);
}
void bwd_run(const uint16_t* x, int64_t xs, int64_t n, int64_t hd, const float* w, const float* c,
             const float* s, const float* ri, const float* g, uint16_t* gx, int64_t gxs,
             float* gw) {
  qk_bwd_BF(x, xs, n, hd, w, c, s, ri, g, gx, gxs, gw);
}
void bwd_run(const uint16_t* x, int64_t xs, int64_t n, int64_t hd, const float* w, const float* c,
             const float* s, const float* ri, const uint16_t* g, uint16_t* gx, int64_t gxs,
             float* gw) {
  qk_bwd_BB(x, xs, n, hd, w, c, s, ri, g, gx, gxs, gw);
}

// The work is split into runs: one per (batch, head, segment), n = La or Lb consecutive rows.
// Runs are dealt to a fixed number of chunks (one per intra-op thread) in order, so the weight
// gradient's partial sums, and with them its value, do not depend on scheduling.
// fn(chunk, b, h, seg) runs without autograd.
template <class F>
void over_runs(int64_t B, int64_t H, int64_t chunks, const F& fn) {
  const int64_t runs = B * H * 2;
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    torch::NoGradGuard ng;
    for (int64_t c = c0; c < c1; ++c)
      for (int64_t u = runs * c / chunks; u < runs * (c + 1) / chunks; ++u)
        fn(c, u / (2 * H), (u / 2) % H, u % 2);
  });
}

// Forward: output [B,H,La+Lb,hd] of type TO (float, or bf16 for the bf16 attention) and the
// inverse RMS per row (for the backward).
template <class T, class TO>
void qk_forward(const Segments<T>& sg, int64_t B, const Tensor& cos, const Tensor& sin, Tensor& out,
                Tensor& rinv) {
  const int64_t H = sg.H, L = sg.La + sg.Lb, hd = sg.hd, half = hd / 2;
  const float *C = cos.data_ptr<float>(), *S = sin.data_ptr<float>();
  TO* O = out.data_ptr<TO>();
  float* R = rinv.data_ptr<float>();
  over_runs(B, H, at::get_num_threads(), [&](int64_t, int64_t b, int64_t h, int64_t seg) {
    const int64_t l0 = seg == 0 ? 0 : sg.La, n = seg == 0 ? sg.La : sg.Lb;
    if (n == 0) return;
    const int64_t r0 = (b * H + h) * L + l0;
    fwd_run(raw_bits(sg.row(b, h, l0)), seg == 0 ? sg.sa[2] : sg.sb[2], n, hd, sg.weight(l0),
            C + l0 * half, S + l0 * half, raw_bits(O + r0 * hd), R + r0);
  });
}

// Backward: input gradients (written as T, like the inputs, into gxa and gxb: [B,H,L,hd] with a
// unit last stride, e.g. views of a qkv gradient) and the per-chunk partial sums of the two weight
// gradients (a fixed split, so their sum is deterministic); the output gradient has the output's
// type TO.
template <class T, class TO>
void qk_backward(const Segments<T>& sg, int64_t B, const Tensor& cos, const Tensor& sin,
                 const Tensor& rinv, const Tensor& go, Tensor& gxa, Tensor& gxb, int64_t chunks,
                 std::vector<double>& gw_part) {
  const int64_t H = sg.H, L = sg.La + sg.Lb, hd = sg.hd, half = hd / 2;
  const float *C = cos.data_ptr<float>(), *S = sin.data_ptr<float>(), *R = rinv.data_ptr<float>();
  const TO* G = go.data_ptr<TO>();
  T *GA = gxa.data_ptr<T>(), *GB = gxb.data_ptr<T>();
  over_runs(B, H, chunks, [&](int64_t chunk, int64_t b, int64_t h, int64_t seg) {
    const int64_t l0 = seg == 0 ? 0 : sg.La, n = seg == 0 ? sg.La : sg.Lb;
    if (n == 0) return;
    const int64_t r0 = (b * H + h) * L + l0;
    const Tensor& gt = seg == 0 ? gxa : gxb;
    T* gx = (seg == 0 ? GA : GB) + b * gt.stride(0) + h * gt.stride(1);
    float gw[kQkMaxHeadDim] = {};
    bwd_run(raw_bits(sg.row(b, h, l0)), seg == 0 ? sg.sa[2] : sg.sb[2], n, hd, sg.weight(l0),
            C + l0 * half, S + l0 * half, R + r0, raw_bits(G + r0 * hd), raw_bits(gx), gt.stride(2),
            gw);
    double* acc = gw_part.data() + chunk * 2 * hd + seg * hd;
    for (int64_t i = 0; i < hd; ++i) acc[i] += gw[i];
  });
}

// The fused forward of one of q, k: [B,H,La+Lb,hd] (float32, or bf16 when out_bf16) and the
// inverse RMS per row.
std::pair<Tensor, Tensor> qk_fused_forward(const Tensor& xa, const Tensor& wa, const Tensor& xb,
                                           const Tensor& wb, const Tensor& cos, const Tensor& sin,
                                           bool out_bf16) {
  const int64_t B = xa.size(0), L = xa.size(2) + xb.size(2), hd = xa.size(3);
  auto out = torch::empty({B, xa.size(1), L, hd},
                          xa.options().dtype(out_bf16 ? torch::kBFloat16 : torch::kFloat32));
  auto rinv = torch::empty({B, xa.size(1), L}, xa.options().dtype(torch::kFloat32));
  if (out_bf16)
    qk_forward<c10::BFloat16, c10::BFloat16>(segments<c10::BFloat16>(xa, wa, xb, wb), B, cos, sin,
                                             out, rinv);
  else if (xa.scalar_type() == torch::kBFloat16)
    qk_forward<c10::BFloat16, float>(segments<c10::BFloat16>(xa, wa, xb, wb), B, cos, sin, out,
                                     rinv);
  else
    qk_forward<float, float>(segments<float>(xa, wa, xb, wb), B, cos, sin, out, rinv);
  return {out, rinv};
}

// Its backward from the output gradient grad: the input gradients into gxa, gxb (see
// qk_backward), and the two weight gradients returned.
std::pair<Tensor, Tensor> qk_fused_backward(const Tensor& xa, const Tensor& wa, const Tensor& xb,
                                            const Tensor& wb, const Tensor& cos, const Tensor& sin,
                                            const Tensor& rinv, const Tensor& grad, bool out_bf16,
                                            Tensor& gxa, Tensor& gxb) {
  const int64_t B = xa.size(0), hd = xa.size(3);
  auto go = grad.to(out_bf16 ? torch::kBFloat16 : torch::kFloat32).contiguous();
  const int64_t chunks = at::get_num_threads();
  std::vector<double> gw_part(static_cast<size_t>(chunks * 2 * hd), 0.0);
  if (out_bf16)
    qk_backward<c10::BFloat16, c10::BFloat16>(segments<c10::BFloat16>(xa, wa, xb, wb), B, cos, sin,
                                              rinv, go, gxa, gxb, chunks, gw_part);
  else if (xa.scalar_type() == torch::kBFloat16)
    qk_backward<c10::BFloat16, float>(segments<c10::BFloat16>(xa, wa, xb, wb), B, cos, sin, rinv,
                                      go, gxa, gxb, chunks, gw_part);
  else
    qk_backward<float, float>(segments<float>(xa, wa, xb, wb), B, cos, sin, rinv, go, gxa, gxb,
                              chunks, gw_part);
  auto gwa = torch::zeros({hd}, torch::kFloat64), gwb = torch::zeros({hd}, torch::kFloat64);
  for (int64_t c = 0; c < chunks; ++c) {
    gwa += torch::from_blob(gw_part.data() + c * 2 * hd, {hd}, torch::kFloat64);
    gwb += torch::from_blob(gw_part.data() + c * 2 * hd + hd, {hd}, torch::kFloat64);
  }
  return {gwa.to(wa.scalar_type()), gwb.to(wb.scalar_type())};
}

// xa, xb: float32 or bfloat16 (both the same); the output is float32, or bfloat16 for bf16
// inputs under Precision::kBF16 (the attention then runs in bf16: no cast pass between), the
// input gradients have the inputs' type.
struct QkNormRopeFn : public torch::autograd::Function<QkNormRopeFn> {
  static Tensor forward(AutogradContext* ctx, const Tensor& xa, const Tensor& wa, const Tensor& xb,
                        const Tensor& wb, const Tensor& cos, const Tensor& sin) {
    const bool out_bf16 =
        xa.scalar_type() == torch::kBFloat16 && compute_precision() == Precision::kBF16;
    auto [out, rinv] = qk_fused_forward(xa, wa, xb, wb, cos, sin, out_bf16);
    ctx->save_for_backward({xa, wa, xb, wb, cos, sin, rinv});
    ctx->saved_data["out_bf16"] = out_bf16;
    return out;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    auto sv = ctx->get_saved_variables();
    const Tensor &xa = sv[0], &wa = sv[1], &xb = sv[2], &wb = sv[3];
    auto gxa = torch::empty(xa.sizes(), xa.options()), gxb = torch::empty(xb.sizes(), xb.options());
    auto [gwa, gwb] = qk_fused_backward(xa, wa, xb, wb, sv[4], sv[5], sv[6], grads[0],
                                        ctx->saved_data["out_bf16"].toBool(), gxa, gxb);
    return {gxa, gwa, gxb, gwb, Tensor(), Tensor()};
  }
};

// q, k or v of a stream's qkv GEMM output [B,L,3D] as a [B,H,L,hd] view (part 0, 1, 2).
Tensor head_view(const Tensor& qkv, int64_t part, int64_t H) {
  const int64_t B = qkv.size(0), L = qkv.size(1), D = qkv.size(2) / 3;
  return qkv.view({B, L, 3, H, D / H}).select(2, part).permute({0, 2, 1, 3});
}

// q, k and v of the joint sequence from the two streams' qkv GEMM outputs qa [B,La,3D] and
// qb [B,Lb,3D] (contiguous; the same type): q and k through the fused norm + RoPE, v copied.
// The backward writes the qkv gradients directly (no stack of q, k, v gradients and copy back
// to [B,L,3D], as unbinding the views would take).
struct QkvHeadsFn : public torch::autograd::Function<QkvHeadsFn> {
  static tensor_list forward(AutogradContext* ctx, const Tensor& qa, const Tensor& wqa,
                             const Tensor& wka, const Tensor& qb, const Tensor& wqb,
                             const Tensor& wkb, const Tensor& cos, const Tensor& sin, int64_t H) {
    const bool out_bf16 =
        qa.scalar_type() == torch::kBFloat16 && compute_precision() == Precision::kBF16;
    auto [q, rq] =
        qk_fused_forward(head_view(qa, 0, H), wqa, head_view(qb, 0, H), wqb, cos, sin, out_bf16);
    auto [k, rk] =
        qk_fused_forward(head_view(qa, 1, H), wka, head_view(qb, 1, H), wkb, cos, sin, out_bf16);
    auto v = torch::cat({head_view(qa, 2, H), head_view(qb, 2, H)}, 2);
    ctx->save_for_backward({qa, wqa, wka, qb, wqb, wkb, cos, sin, rq, rk});
    ctx->saved_data["out_bf16"] = out_bf16;
    ctx->saved_data["H"] = H;
    return {q, k, v};
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    auto sv = ctx->get_saved_variables();
    const Tensor &qa = sv[0], &qb = sv[3], &cos = sv[6], &sin = sv[7];
    const int64_t H = ctx->saved_data["H"].toInt(), La = qa.size(1), Lb = qb.size(1);
    const bool out_bf16 = ctx->saved_data["out_bf16"].toBool();
    auto ga = torch::empty_like(qa), gb = torch::empty_like(qb);
    std::vector<Tensor> gw;
    for (int64_t part = 0; part < 2; ++part) {  // q, k: their gradients into ga, gb
      auto gxa = head_view(ga, part, H), gxb = head_view(gb, part, H);
      const Tensor& grad = grads[part];
      if (!grad.defined()) {
        gxa.zero_();
        gxb.zero_();
        gw.push_back(torch::zeros_like(sv[1 + part]));
        gw.push_back(torch::zeros_like(sv[4 + part]));
        continue;
      }
      auto [gwa, gwb] =
          qk_fused_backward(head_view(qa, part, H), sv[1 + part], head_view(qb, part, H),
                            sv[4 + part], cos, sin, sv[8 + part], grad, out_bf16, gxa, gxb);
      gw.push_back(gwa);
      gw.push_back(gwb);
    }
    auto gva = head_view(ga, 2, H), gvb = head_view(gb, 2, H);
    if (grads[2].defined()) {
      gva.copy_(grads[2].narrow(2, 0, La));
      gvb.copy_(grads[2].narrow(2, La, Lb));
    } else {
      gva.zero_();
      gvb.zero_();
    }
    // An empty stream (the single block's) gets no gradient: undefined, its slice's backward
    // does not zero-fill and add a tensor of the whole qkv size.
    return {La ? ga : Tensor(), gw[0],    gw[2],   Lb ? gb : Tensor(), gw[1], gw[3],
            Tensor(),           Tensor(), Tensor()};
  }
};

// What the fused kernels take, for both entry points: inputs a and b on the CPU, float32 or bf16
// (the same), head dimension up to kQkMaxHeadDim, contiguous float32 norm weights, contiguous
// cos/sin (float32).
bool qk_kernels_take(const Tensor& a, const Tensor& b, int64_t hd,
                     std::initializer_list<const Tensor*> weights, const Tensor& cos,
                     const Tensor& sin) {
  const auto dt = a.scalar_type();
  bool ok = a.device().is_cpu() && (dt == torch::kFloat32 || dt == torch::kBFloat16) &&
            b.scalar_type() == dt && hd <= kQkMaxHeadDim && cos.is_contiguous() &&
            sin.is_contiguous() && cos.scalar_type() == torch::kFloat32;
  for (const Tensor* w : weights)
    ok = ok && w->scalar_type() == torch::kFloat32 && w->is_contiguous();
  return ok;
}

Tensor rms_norm_ref(const Tensor& x, const Tensor& w) {
  return x * torch::rsqrt(x.pow(2).mean(-1, true) + kEps) * w;
}

}  // namespace

Tensor qk_norm_rope(const Tensor& xa, const Tensor& wa, const Tensor& xb, const Tensor& wb,
                    const Tensor& cos, const Tensor& sin) {
  TORCH_CHECK(xa.dim() == 4 && xb.dim() == 4 && xa.size(3) % 2 == 0,
              "qk_norm_rope: q/k are [B,H,L,hd], hd even");
  TORCH_CHECK(cos.size(0) == xa.size(2) + xb.size(2),
              "qk_norm_rope: cos/sin need one row per sequence position");
  const bool fused = qk_kernels_take(xa, xb, xa.size(3), {&wa, &wb}, cos, sin) &&
                     xa.stride(3) == 1 && xb.stride(3) == 1;
  if (!fused) {  // composed ops, in float32 like the fused path
    auto f32 = [](const Tensor& t) { return t.to(torch::kFloat32); };
    return apply_rope(torch::cat({rms_norm_ref(f32(xa), wa), rms_norm_ref(f32(xb), wb)}, 2), cos,
                      sin);
  }
  return QkNormRopeFn::apply(xa, wa, xb, wb, cos, sin);
}

std::tuple<Tensor, Tensor, Tensor> qkv_heads(const Tensor& qkv_a, const Tensor& wq_a,
                                             const Tensor& wk_a, const Tensor& qkv_b,
                                             const Tensor& wq_b, const Tensor& wk_b,
                                             const Tensor& cos, const Tensor& sin, int heads) {
  const int64_t D = qkv_a.size(2) / 3;
  const bool fused =
      qk_kernels_take(qkv_a, qkv_b, D / heads, {&wq_a, &wk_a, &wq_b, &wk_b}, cos, sin) &&
      qkv_a.is_contiguous() && qkv_b.is_contiguous() && qkv_a.dim() == 3 && qkv_b.dim() == 3 &&
      qkv_b.size(2) == 3 * D && D % heads == 0 && (D / heads) % 2 == 0 &&
      cos.size(0) == qkv_a.size(1) + qkv_b.size(1);
  if (!fused) {  // the views, the norm + RoPE per tensor and a cat of v
    auto [qa, ka, va] = mmdit_detail::split_heads(qkv_a, heads);
    auto [qb, kb, vb] = mmdit_detail::split_heads(qkv_b, heads);
    return {qk_norm_rope(qa, wq_a, qb, wq_b, cos, sin), qk_norm_rope(ka, wk_a, kb, wk_b, cos, sin),
            torch::cat({va, vb}, 2)};
  }
  auto r = QkvHeadsFn::apply(qkv_a, wq_a, wk_a, qkv_b, wq_b, wk_b, cos, sin,
                             static_cast<int64_t>(heads));
  return {r[0], r[1], r[2]};
}

}  // namespace lf
