// The torch device a run asked for with --device.
#pragma once
#include <string>

#include "lesionflow/status.h"
#include "pch_torch.h"

namespace lf {

// "cpu" or "cuda[:N]" (only where this libtorch build sees a CUDA device; check_device's
// error otherwise) -> the torch device.
Result<torch::Device> parse_device(const std::string& name);

}  // namespace lf
