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
             const float* s, const float* ri, const float* g, float* gx, float* gw) {
  qk_bwd_FF(x, xs, n, hd, w, c, s, ri, g, gx, gw);
}
void bwd_run(const uint16_t* x, int64_t xs, int64_t n, int64_t hd, const float* w, const float* c,
             const float* s, const float* ri, const float* g, uint16_t* gx, float* gw) {
  qk_bwd_BF(x, xs, n, hd, w, c, s, ri, g, gx, gw);
}
void bwd_run(const uint16_t* x, int64_t xs, int64_t n, int64_t hd, const float* w, const float* c,
             const float* s, const float* ri, const uint16_t* g, uint16_t* gx, float* gw) {
  qk_bwd_BB(x, xs, n, hd, w, c, s, ri, g, gx, gw);
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

// Backward: input gradients (written as T, like the inputs) and the per-chunk partial sums of
// the two weight gradients (a fixed split, so their sum is deterministic); the output gradient
// has the output's type TO.
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
    T* gx = seg == 0 ? GA + (b * H + h) * sg.La * hd : GB + (b * H + h) * sg.Lb * hd;
    float gw[kQkMaxHeadDim] = {};
    bwd_run(raw_bits(sg.row(b, h, l0)), seg == 0 ? sg.sa[2] : sg.sb[2], n, hd, sg.weight(l0),
            C + l0 * half, S + l0 * half, R + r0, raw_bits(G + r0 * hd), raw_bits(gx), gw);
    double* acc = gw_part.data() + chunk * 2 * hd + seg * hd;
    for (int64_t i = 0; i < hd; ++i) acc[i] += gw[i];
  });
}

// xa, xb: float32 or bfloat16 (both the same); the output is float32, or bfloat16 for bf16
// inputs under Precision::kBF16 (the attention then runs in bf16: no cast pass between), the
// input gradients have the inputs' type.
struct QkNormRopeFn : public torch::autograd::Function<QkNormRopeFn> {
  static Tensor forward(AutogradContext* ctx, const Tensor& xa, const Tensor& wa, const Tensor& xb,
                        const Tensor& wb, const Tensor& cos, const Tensor& sin) {
    const int64_t B = xa.size(0), L = xa.size(2) + xb.size(2), hd = xa.size(3);
    const bool in_bf16 = xa.scalar_type() == torch::kBFloat16;
    const bool out_bf16 = in_bf16 && compute_precision() == Precision::kBF16;
    auto out = torch::empty({B, xa.size(1), L, hd},
                            xa.options().dtype(out_bf16 ? torch::kBFloat16 : torch::kFloat32));
    auto rinv = torch::empty({B, xa.size(1), L}, xa.options().dtype(torch::kFloat32));
    if (out_bf16)
      qk_forward<c10::BFloat16, c10::BFloat16>(segments<c10::BFloat16>(xa, wa, xb, wb), B, cos, sin,
                                               out, rinv);
    else if (in_bf16)
      qk_forward<c10::BFloat16, float>(segments<c10::BFloat16>(xa, wa, xb, wb), B, cos, sin, out,
                                       rinv);
    else
      qk_forward<float, float>(segments<float>(xa, wa, xb, wb), B, cos, sin, out, rinv);
    ctx->save_for_backward({xa, wa, xb, wb, cos, sin, rinv});
    ctx->saved_data["out_bf16"] = out_bf16;
    return out;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    auto sv = ctx->get_saved_variables();
    const Tensor &xa = sv[0], &wa = sv[1], &xb = sv[2], &wb = sv[3], &cos = sv[4], &sin = sv[5],
                 &rinv = sv[6];
    const int64_t B = xa.size(0), hd = xa.size(3);
    const bool out_bf16 = ctx->saved_data["out_bf16"].toBool();
    auto go = grads[0].to(out_bf16 ? torch::kBFloat16 : torch::kFloat32).contiguous();
    auto gxa = torch::empty(xa.sizes(), xa.options()), gxb = torch::empty(xb.sizes(), xb.options());
    const int64_t chunks = at::get_num_threads();
    std::vector<double> gw_part(static_cast<size_t>(chunks * 2 * hd), 0.0);
    if (out_bf16)
      qk_backward<c10::BFloat16, c10::BFloat16>(segments<c10::BFloat16>(xa, wa, xb, wb), B, cos,
                                                sin, rinv, go, gxa, gxb, chunks, gw_part);
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
    return {gxa, gwa.to(wa.scalar_type()), gxb, gwb.to(wb.scalar_type()), Tensor(), Tensor()};
  }
};

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
  const auto dt = xa.scalar_type();
  const bool fused = xa.device().is_cpu() && (dt == torch::kFloat32 || dt == torch::kBFloat16) &&
                     xb.scalar_type() == dt && xa.stride(3) == 1 && xb.stride(3) == 1 &&
                     xa.size(3) <= kQkMaxHeadDim && wa.scalar_type() == torch::kFloat32 &&
                     wb.scalar_type() == torch::kFloat32 && wa.is_contiguous() &&
                     wb.is_contiguous() && cos.is_contiguous() && sin.is_contiguous() &&
                     cos.scalar_type() == torch::kFloat32;
  if (!fused) {  // composed ops, in float32 like the fused path
    auto f32 = [](const Tensor& t) { return t.to(torch::kFloat32); };
    return apply_rope(torch::cat({rms_norm_ref(f32(xa), wa), rms_norm_ref(f32(xb), wb)}, 2), cos,
                      sin);
  }
  return QkNormRopeFn::apply(xa, wa, xb, wb, cos, sin);
}

}  // namespace lf
