// Module weights <-> safetensors (keys = named_parameters()), plus metadata.
#pragma once
#include <map>
#include <string>

#include "lesionflow/io.h"
#include "lesionflow/status.h"
#include "pch_torch.h"

namespace lf {

RawTensor to_raw(const torch::Tensor& t);
Result<torch::Tensor> from_raw(const RawTensor& r, const std::string& name_for_errors);
// Parameters (and, if with_buffers, buffers) of a module as a SafeTensors map.
SafeTensors module_to_safetensors(const torch::nn::Module& m, bool with_buffers = false);
Status save_module(const std::string& path, const torch::nn::Module& m,
                   const std::map<std::string, std::string>& metadata, bool with_buffers = false);
// Copies tensors into the module's parameters (every parameter must be present with the same
// shape) and into its buffers when the file has them.
Status load_module_tensors(const SafeTensors& st, torch::nn::Module& m, const std::string& path);

}  // namespace lf
