// ResNet-style CNN feature extractor of the classifiers: stem, four stages of one basic block
// each (widths w, 2w, 4w, 8w; stride 2 from the second stage), global average pooling.
#pragma once
#include <vector>

#include "pch_torch.h"

namespace lf {

class ResNetFeaturesImpl : public torch::nn::Module {
 public:
  // stem_stride 1 or 2; features of width 8 * width.
  ResNetFeaturesImpl(int width, int stem_stride);
  torch::Tensor forward(const torch::Tensor& x);  // [N,3,S,S] -> [N, 8*width]
  int64_t feature_dim() const { return feature_dim_; }

 private:
  torch::nn::Sequential stem_{nullptr};
  std::vector<torch::nn::Sequential> blocks_, shortcuts_;
  int64_t feature_dim_ = 0;
};
TORCH_MODULE(ResNetFeatures);

}  // namespace lf
