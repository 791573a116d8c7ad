// uint8 RGB images <-> model tensors: the one conversion every network of the project uses.
#pragma once
#include <cstdint>
#include <vector>

#include "pch_torch.h"

namespace lf {

// Square uint8 NHWC RGB images of side `size` -> [N,3,S,S] float in [-1,1] (on the CPU).
torch::Tensor images_to_tensor(const std::vector<const uint8_t*>& px, int size);
// [-1,1] float [N,3,S,S] (any device) -> uint8 NHWC RGB
std::vector<uint8_t> tensor_to_images(const torch::Tensor& x);

}  // namespace lf
