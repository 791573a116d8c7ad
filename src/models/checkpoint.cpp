#include "models/checkpoint.h"

namespace lf {

RawTensor to_raw(const torch::Tensor& t0) {
  auto t = t0.detach().to(torch::kCPU).contiguous();
  RawTensor r;
  if (t.scalar_type() == torch::kFloat32)
    r.dtype = DType::kF32;
  else if (t.scalar_type() == torch::kInt64)
    r.dtype = DType::kI64;
  else if (t.scalar_type() == torch::kUInt8)
    r.dtype = DType::kU8;
  else if (t.scalar_type() == torch::kInt32)
    r.dtype = DType::kI32;
  else if (t.scalar_type() == torch::kFloat64)
    r.dtype = DType::kF64;
  else if (t.scalar_type() == torch::kFloat16)
    r.dtype = DType::kF16;  // shipped weights
  else if (t.scalar_type() == torch::kBFloat16)
    r.dtype = DType::kBF16;
  else {
    t = t.to(torch::kFloat32);
    r.dtype = DType::kF32;
  }
  r.shape = t.sizes().vec();
  r.data.assign(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
  return r;
}

Result<torch::Tensor> from_raw(const RawTensor& r, const std::string& name) {
  torch::ScalarType st;
  switch (r.dtype) {
    case DType::kF32:
      st = torch::kFloat32;
      break;
    case DType::kF64:
      st = torch::kFloat64;
      break;
    case DType::kI64:
      st = torch::kInt64;
      break;
    case DType::kI32:
      st = torch::kInt32;
      break;
    case DType::kU8:
      st = torch::kUInt8;
      break;
    case DType::kBF16:
      st = torch::kBFloat16;
      break;
    case DType::kF16:
      st = torch::kFloat16;
      break;
    default:
      return Status::error(name + ": unsupported dtype");
  }
  auto t = torch::empty(r.shape, torch::TensorOptions().dtype(st));
  if (static_cast<size_t>(t.numel() * t.element_size()) != r.data.size())
    return Status::error(name + ": byte size does not match shape");
  std::memcpy(t.data_ptr(), r.data.data(), r.data.size());
  return t;
}

SafeTensors module_to_safetensors(const torch::nn::Module& m, bool with_buffers) {
  SafeTensors st;
  for (const auto& p : m.named_parameters()) st.tensors[p.key()] = to_raw(p.value());
  if (with_buffers)
    for (const auto& b : m.named_buffers()) st.tensors[b.key()] = to_raw(b.value());
  return st;
}

Status save_module(const std::string& path, const torch::nn::Module& m,
                   const std::map<std::string, std::string>& metadata, bool with_buffers) {
  SafeTensors st = module_to_safetensors(m, with_buffers);
  st.metadata = metadata;
  return save_safetensors(path, st);
}

Status load_module_tensors(const SafeTensors& st, torch::nn::Module& m, const std::string& path) {
  torch::NoGradGuard ng;
  for (auto& p : m.named_parameters()) {
    auto it = st.tensors.find(p.key());
    if (it == st.tensors.end()) return Status::error(path + ": missing tensor '" + p.key() + "'");
    LF_ASSIGN_OR_RETURN(torch::Tensor t, from_raw(it->second, path + ": '" + p.key() + "'"));
    if (t.sizes() != p.value().sizes()) {
      std::ostringstream os;
      os << path << ": tensor '" << p.key() << "' has shape " << t.sizes() << ", model expects "
         << p.value().sizes();
      return Status::error(os.str());
    }
    p.value().copy_(t.to(p.value().dtype()));
  }
  for (auto& b : m.named_buffers()) {  // running statistics etc.: restored when saved
    auto it = st.tensors.find(b.key());
    if (it == st.tensors.end()) continue;
    LF_ASSIGN_OR_RETURN(torch::Tensor t, from_raw(it->second, path + ": '" + b.key() + "'"));
    if (t.sizes() != b.value().sizes())
      return Status::error(path + ": buffer '" + b.key() + "' has the wrong shape");
    b.value().copy_(t.to(b.value().dtype()));
  }
  return Status::ok_status();
}

}  // namespace lf
