// uint8 RGB images <-> model tensors (see images_torch.h).
#include "data/images_torch.h"

#include <cstring>

namespace lf {

torch::Tensor images_to_tensor(const std::vector<const uint8_t*>& px, int S) {
  auto out = torch::empty({static_cast<int64_t>(px.size()), S, S, 3}, torch::kUInt8);
  for (size_t i = 0; i < px.size(); ++i) std::memcpy(out[i].data_ptr(), px[i], S * S * 3);
  return out.permute({0, 3, 1, 2}).to(torch::kFloat32).div_(127.5).sub_(1.0).contiguous();
}

std::vector<uint8_t> tensor_to_images(const torch::Tensor& x) {
  auto u = x.detach()
               .to(torch::kCPU)
               .clamp(-1, 1)
               .add(1)
               .mul(127.5)
               .round()
               .to(torch::kUInt8)
               .permute({0, 2, 3, 1})
               .contiguous();
  return std::vector<uint8_t>(u.data_ptr<uint8_t>(), u.data_ptr<uint8_t>() + u.numel());
}

}  // namespace lf
