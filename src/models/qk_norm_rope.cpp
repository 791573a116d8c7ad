// Fused per-head RMS norm + rotary embedding of q or k, for two sequence segments (text and image
// rows, each with its own norm weight) written straight into one joint tensor. Composed from
// torch ops this is ~6 passes for the norm, 4 multiplies, 2 adds, a stack and two selects for
// RoPE, and a strided cat per tensor, each again in backward; here it is one pass each way.
#include <cmath>

#include "models/mmdit.h"

namespace lf {
using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

namespace {

constexpr float kEps = 1e-6f;  // as rms_norm in mmdit_blocks.h

// Row l of the joint sequence [B,H,La+Lb,hd]: where its input lives and which weight it uses.
struct Segments {
  const float *xa, *xb, *wa, *wb;
  int64_t La, Lb, H, hd;
  int64_t sa[3], sb[3];  // strides (b, h, l) of xa and xb; the last dim is unit-stride
  const float* row(int64_t b, int64_t h, int64_t l) const {
    return l < La ? xa + b * sa[0] + h * sa[1] + l * sa[2]
                  : xb + b * sb[0] + h * sb[1] + (l - La) * sb[2];
  }
  const float* weight(int64_t l) const { return l < La ? wa : wb; }
};

Segments segments(const Tensor& xa, const Tensor& wa, const Tensor& xb, const Tensor& wb) {
  Segments s{xa.data_ptr<float>(),
             xb.data_ptr<float>(),
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

// Splits [0, rows) into one chunk per intra-op thread; fn(chunk, begin, end) runs without autograd.
template <class F>
void over_row_chunks(int64_t rows, int64_t chunks, const F& fn) {
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    torch::NoGradGuard ng;
    for (int64_t c = c0; c < c1; ++c) fn(c, rows * c / chunks, rows * (c + 1) / chunks);
  });
}

struct QkNormRopeFn : public torch::autograd::Function<QkNormRopeFn> {
  static Tensor forward(AutogradContext* ctx, const Tensor& xa, const Tensor& wa, const Tensor& xb,
                        const Tensor& wb, const Tensor& cos, const Tensor& sin) {
    const auto sg = segments(xa, wa, xb, wb);
    const int64_t B = xa.size(0), L = sg.La + sg.Lb, hd = sg.hd, half = hd / 2;
    auto out = torch::empty({B, sg.H, L, hd}, xa.options());
    auto rinv = torch::empty({B, sg.H, L}, xa.options());
    const float *C = cos.data_ptr<float>(), *S = sin.data_ptr<float>();
    float *O = out.data_ptr<float>(), *R = rinv.data_ptr<float>();
    over_row_chunks(B * sg.H * L, at::get_num_threads(), [&](int64_t, int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t l = r % L, h = (r / L) % sg.H, b = r / (L * sg.H);
        const float *x = sg.row(b, h, l), *w = sg.weight(l), *c = C + l * half, *s = S + l * half;
        float ss = 0;
        for (int64_t i = 0; i < hd; ++i) ss += x[i] * x[i];
        const float ri = 1.f / std::sqrt(ss / static_cast<float>(hd) + kEps);
        R[r] = ri;
        float* o = O + r * hd;
        for (int64_t j = 0; j < half; ++j) {
          const float y0 = x[2 * j] * ri * w[2 * j], y1 = x[2 * j + 1] * ri * w[2 * j + 1];
          o[2 * j] = y0 * c[j] - y1 * s[j];
          o[2 * j + 1] = y0 * s[j] + y1 * c[j];
        }
      }
    });
    ctx->save_for_backward({xa, wa, xb, wb, cos, sin, rinv});
    return out;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    auto sv = ctx->get_saved_variables();
    const Tensor &xa = sv[0], &wa = sv[1], &xb = sv[2], &wb = sv[3], &cos = sv[4], &sin = sv[5],
                 &rinv = sv[6];
    const auto sg = segments(xa, wa, xb, wb);
    const int64_t B = xa.size(0), H = sg.H, L = sg.La + sg.Lb, hd = sg.hd, half = hd / 2;
    auto go = grads[0].contiguous();
    auto gxa = torch::empty(xa.sizes(), xa.options()), gxb = torch::empty(xb.sizes(), xb.options());
    const int64_t chunks = at::get_num_threads();
    // Weight gradients: one partial sum per chunk (fixed split, so the sum is deterministic).
    std::vector<double> gw_part(static_cast<size_t>(chunks * 2 * hd), 0.0);
    const float *C = cos.data_ptr<float>(), *S = sin.data_ptr<float>(), *R = rinv.data_ptr<float>();
    const float* G = go.data_ptr<float>();
    float *GA = gxa.data_ptr<float>(), *GB = gxb.data_ptr<float>();
    over_row_chunks(B * H * L, chunks, [&](int64_t chunk, int64_t r0, int64_t r1) {
      std::vector<float> gn(static_cast<size_t>(hd)), n(static_cast<size_t>(hd));
      double* gw_acc = gw_part.data() + chunk * 2 * hd;
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t l = r % L, h = (r / L) % H, b = r / (L * H);
        const bool in_a = l < sg.La;
        const float *x = sg.row(b, h, l), *w = sg.weight(l), *c = C + l * half, *s = S + l * half,
                    *g = G + r * hd;
        double* gw = gw_acc + (in_a ? 0 : hd);
        const float ri = R[r];
        float dot = 0;
        for (int64_t j = 0; j < half; ++j) {  // undo the rotation, then through the weight
          const float gy0 = g[2 * j] * c[j] + g[2 * j + 1] * s[j],
                      gy1 = -g[2 * j] * s[j] + g[2 * j + 1] * c[j];
          const float n0 = x[2 * j] * ri, n1 = x[2 * j + 1] * ri;
          gw[2 * j] += gy0 * n0;
          gw[2 * j + 1] += gy1 * n1;
          gn[2 * j] = gy0 * w[2 * j];
          gn[2 * j + 1] = gy1 * w[2 * j + 1];
          n[2 * j] = n0;
          n[2 * j + 1] = n1;
          dot += gn[2 * j] * n0 + gn[2 * j + 1] * n1;
        }
        dot /= static_cast<float>(hd);
        float* gx = in_a ? GA + ((b * H + h) * sg.La + l) * hd
                         : GB + ((b * H + h) * sg.Lb + (l - sg.La)) * hd;
        for (int64_t i = 0; i < hd; ++i) gx[i] = ri * (gn[i] - n[i] * dot);
      }
    });
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
  const bool fused = xa.device().is_cpu() && xa.scalar_type() == torch::kFloat32 &&
                     xb.scalar_type() == torch::kFloat32 && xa.stride(3) == 1 &&
                     xb.stride(3) == 1 && wa.is_contiguous() && wb.is_contiguous() &&
                     cos.is_contiguous() && sin.is_contiguous() &&
                     cos.scalar_type() == torch::kFloat32;
  if (!fused)
    return apply_rope(torch::cat({rms_norm_ref(xa, wa), rms_norm_ref(xb, wb)}, 2), cos, sin);
  return QkNormRopeFn::apply(xa, wa, xb, wb, cos, sin);
}

}  // namespace lf
