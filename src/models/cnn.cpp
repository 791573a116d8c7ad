// ResNet-style CNN feature extractor (see cnn.h).
#include "models/cnn.h"

namespace lf {
namespace nn = torch::nn;

namespace {
void add_conv_bn(nn::Sequential& s, int in, int out, int stride, bool relu) {
  s->push_back(nn::Conv2d(nn::Conv2dOptions(in, out, 3).stride(stride).padding(1).bias(false)));
  s->push_back(nn::BatchNorm2d(out));
  if (relu) s->push_back(nn::ReLU(nn::ReLUOptions(true)));
}
}  // namespace

ResNetFeaturesImpl::ResNetFeaturesImpl(int width, int stem_stride) {
  stem_ = nn::Sequential();
  add_conv_bn(stem_, 3, width, stem_stride, true);
  register_module("stem", stem_);
  int in = width;
  for (int s = 0; s < 4; ++s) {
    int out = width << s, stride = s == 0 ? 1 : 2;
    nn::Sequential body;
    add_conv_bn(body, in, out, stride, true);
    add_conv_bn(body, out, out, 1, false);
    blocks_.push_back(register_module("block" + std::to_string(s), body));
    nn::Sequential sc;
    if (in != out || stride != 1)
      sc = nn::Sequential(nn::Conv2d(nn::Conv2dOptions(in, out, 1).stride(stride).bias(false)),
                          nn::BatchNorm2d(out));
    shortcuts_.push_back(register_module("shortcut" + std::to_string(s), sc));
    in = out;
  }
  feature_dim_ = in;
}

torch::Tensor ResNetFeaturesImpl::forward(const torch::Tensor& x) {
  auto h = stem_->forward(x);
  for (size_t s = 0; s < blocks_.size(); ++s) {
    auto sc = shortcuts_[s]->size() ? shortcuts_[s]->forward(h) : h;
    h = torch::relu(blocks_[s]->forward(h) + sc);
  }
  return h.mean({2, 3});
}

}  // namespace lf
