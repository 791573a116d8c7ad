// merge_heads_split(): the attention output [B,H,L,hd] to the text and image streams' [B,T,D]
// and [B,L-T,D] rows in one copy each way. Composed from torch ops it is a transpose + reshape
// (a copy), two row slices that the projection GEMMs copy again to make them contiguous, and in
// the backward two zero-filled [B,L,D] gradients of the slices, their sum and a copy back to
// [B,H,L,hd].
#include <cstring>

#include "models/mmdit.h"

namespace lf {
using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

namespace {

// Copies rows of hd elements (es bytes each) between o [B,H,L,hd] and the pair a [B,T,H*hd],
// b [B,L-T,H*hd]; to_streams: o -> (a, b), else (a, b) -> o (a null side: zeros).
void copy_heads(char* o, char* a, char* b, int64_t B, int64_t H, int64_t L, int64_t T, int64_t hd,
                int64_t es, bool to_streams) {
  const int64_t row = hd * es, D = H * hd;
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t bi = b0; bi < b1; ++bi)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t l = 0; l < L; ++l) {
          char* src = o + ((bi * H + h) * L + l) * row;
          char* s = l < T ? a : b;
          const int64_t n = l < T ? T : L - T, r = l < T ? l : l - T;
          if (!s) {
            if (!to_streams) std::memset(src, 0, row);
            continue;
          }
          char* dst = s + ((bi * n + r) * D + h * hd) * es;
          if (to_streams)
            std::memcpy(dst, src, row);
          else
            std::memcpy(src, dst, row);
        }
  });
}

struct MergeHeadsSplitFn : public torch::autograd::Function<MergeHeadsSplitFn> {
  static tensor_list forward(AutogradContext* ctx, const Tensor& o_in, int64_t T) {
    auto o = o_in.contiguous();
    const int64_t B = o.size(0), H = o.size(1), L = o.size(2), hd = o.size(3);
    auto a = torch::empty({B, T, H * hd}, o.options()),
         b = torch::empty({B, L - T, H * hd}, o.options());
    copy_heads(static_cast<char*>(o.data_ptr()), static_cast<char*>(a.data_ptr()),
               static_cast<char*>(b.data_ptr()), B, H, L, T, hd, o.element_size(), true);
    ctx->saved_data["T"] = T;
    ctx->saved_data["shape"] = o.sizes().vec();
    return {a, b};
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto shape = ctx->saved_data["shape"].toIntVector();
    const int64_t T = ctx->saved_data["T"].toInt();
    const Tensor& ref = grads[0].defined() ? grads[0] : grads[1];
    auto go = torch::empty(shape, ref.options());
    auto ga = grads[0].defined() ? grads[0].to(ref.scalar_type()).contiguous() : Tensor();
    auto gb = grads[1].defined() ? grads[1].to(ref.scalar_type()).contiguous() : Tensor();
    copy_heads(static_cast<char*>(go.data_ptr()),
               ga.defined() ? static_cast<char*>(ga.data_ptr()) : nullptr,
               gb.defined() ? static_cast<char*>(gb.data_ptr()) : nullptr, shape[0], shape[1],
               shape[2], T, shape[3], go.element_size(), false);
    return {go, Tensor()};
  }
};

}  // namespace

std::pair<Tensor, Tensor> merge_heads_split(const Tensor& o, int64_t T) {
  const int64_t B = o.size(0), H = o.size(1), L = o.size(2), hd = o.size(3);
  if (!o.device().is_cpu() || T <= 0 || T >= L) {
    auto a = o.transpose(1, 2).reshape({B, L, H * hd});
    return {a.narrow(1, 0, T), a.narrow(1, T, L - T)};
  }
  auto r = MergeHeadsSplitFn::apply(o, T);
  return {r[0], r[1]};
}

}  // namespace lf
