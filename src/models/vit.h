// Vision transformer feature extractor of the classifiers: patch embedding, a class token,
// learned positions, pre-norm blocks (multi-head self-attention + GELU MLP), final LayerNorm of
// the class token.
#pragma once
#include "pch_torch.h"

namespace lf {

// One pre-norm transformer block: t + attn(ln1(t)), then t + mlp(ln2(t)).
class ViTBlockImpl : public torch::nn::Module {
 public:
  ViTBlockImpl(int dim, int heads);
  torch::Tensor forward(const torch::Tensor& t);  // [N,L,D] -> [N,L,D]

 private:
  int heads_;
  torch::nn::LayerNorm ln1_{nullptr}, ln2_{nullptr};
  torch::nn::Linear qkv_{nullptr}, proj_{nullptr}, fc1_{nullptr}, fc2_{nullptr};
};
TORCH_MODULE(ViTBlock);

class ViTFeaturesImpl : public torch::nn::Module {
 public:
  ViTFeaturesImpl(int image_size, int patch, int dim, int depth, int heads);
  torch::Tensor forward(const torch::Tensor& x);  // [N,3,S,S] -> [N,D] (the class token)

 private:
  int dim_;
  torch::nn::Conv2d patch_embed_{nullptr};
  torch::Tensor cls_, pos_;
  torch::nn::ModuleList blocks_{nullptr};
  torch::nn::LayerNorm norm_{nullptr};
};
TORCH_MODULE(ViTFeatures);

}  // namespace lf
