// Vision transformer feature extractor (see vit.h).
#include "models/vit.h"

#include "models/mmdit.h"  // attention()

namespace lf {
namespace nn = torch::nn;
using torch::Tensor;

ViTBlockImpl::ViTBlockImpl(int D, int heads) : heads_(heads) {
  ln1_ = register_module("ln1", nn::LayerNorm(nn::LayerNormOptions({D})));
  qkv_ = register_module("qkv", nn::Linear(D, 3 * D));
  proj_ = register_module("proj", nn::Linear(D, D));
  ln2_ = register_module("ln2", nn::LayerNorm(nn::LayerNormOptions({D})));
  fc1_ = register_module("fc1", nn::Linear(D, 4 * D));
  fc2_ = register_module("fc2", nn::Linear(4 * D, D));
}

Tensor ViTBlockImpl::forward(const Tensor& t) {
  const int64_t N = t.size(0), L = t.size(1), D = t.size(2), H = heads_, dh = D / H;
  auto qkv = qkv_->forward(ln1_->forward(t)).view({N, L, 3, H, dh}).permute({2, 0, 3, 1, 4});
  auto o = attention(qkv[0], qkv[1], qkv[2], Tensor()).transpose(1, 2).reshape({N, L, D});
  auto h = t + proj_->forward(o);
  return h + fc2_->forward(torch::gelu(fc1_->forward(ln2_->forward(h))));
}

ViTFeaturesImpl::ViTFeaturesImpl(int image_size, int patch, int D, int depth, int heads) : dim_(D) {
  const int T = (image_size / patch) * (image_size / patch);
  patch_embed_ =
      register_module("patch_embed", nn::Conv2d(nn::Conv2dOptions(3, D, patch).stride(patch)));
  cls_ = register_parameter("cls", torch::zeros({1, 1, D}));
  pos_ = register_parameter("pos", torch::randn({1, T + 1, D}) * 0.02);
  blocks_ = register_module("blocks", nn::ModuleList());
  for (int l = 0; l < depth; ++l) blocks_->push_back(ViTBlock(D, heads));
  norm_ = register_module("norm", nn::LayerNorm(nn::LayerNormOptions({D})));
}

Tensor ViTFeaturesImpl::forward(const Tensor& x) {
  const int64_t N = x.size(0);
  auto t = patch_embed_->forward(x).flatten(2).transpose(1, 2);  // [N,T,D]
  t = torch::cat({cls_.expand({N, 1, dim_}), t}, 1) + pos_;
  for (auto& b : *blocks_) t = b->as<ViTBlock>()->forward(t);
  return norm_->forward(t.select(1, 0));
}

}  // namespace lf
