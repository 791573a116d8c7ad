#include <cstring>
#include <nlohmann/json.hpp>

#include "lesionflow/io.h"

namespace lf {
using nlohmann::json;

const char* dtype_name(DType d) {
  switch (d) {
    case DType::kF32:
      return "F32";
    case DType::kF64:
      return "F64";
    case DType::kI64:
      return "I64";
    case DType::kI32:
      return "I32";
    case DType::kU8:
      return "U8";
    case DType::kBF16:
      return "BF16";
    case DType::kF16:
      return "F16";
  }
  return "?";
}

size_t dtype_size(DType d) {
  switch (d) {
    case DType::kF64:
    case DType::kI64:
      return 8;
    case DType::kF32:
    case DType::kI32:
      return 4;
    case DType::kBF16:
    case DType::kF16:
      return 2;
    case DType::kU8:
      return 1;
  }
  return 1;
}

static bool dtype_from_name(const std::string& s, DType* d) {
  for (DType c : {DType::kF32, DType::kF64, DType::kI64, DType::kI32, DType::kU8, DType::kBF16,
                  DType::kF16}) {
    if (s == dtype_name(c)) {
      *d = c;
      return true;
    }
  }
  return false;
}

int64_t RawTensor::numel() const {
  int64_t n = 1;
  for (auto s : shape) n *= s;
  return n;
}

std::string serialize_safetensors(const SafeTensors& st) {
  json header = json::object();
  size_t offset = 0;
  for (const auto& [name, t] : st.tensors) {
    header[name] = {{"dtype", dtype_name(t.dtype)},
                    {"shape", t.shape},
                    {"data_offsets", {offset, offset + t.data.size()}}};
    offset += t.data.size();
  }
  if (!st.metadata.empty()) header["__metadata__"] = st.metadata;
  std::string h = header.dump();
  while ((h.size() + 8) % 8 != 0) h.push_back(' ');  // align data to 8 bytes
  std::string out;
  out.reserve(8 + h.size() + offset);
  uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  out += h;
  for (const auto& [name, t] : st.tensors) out += t.data;
  return out;
}

Status save_safetensors(const std::string& path, const SafeTensors& st) {
  return write_file_atomic(path, serialize_safetensors(st));
}

Result<SafeTensors> parse_safetensors(const std::string& bytes, const std::string& name) {
  if (bytes.size() < 8)
    return Status::error(name + ": not a safetensors file (shorter than 8 bytes)");
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i)
    n |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  if (n > bytes.size() - 8)
    return Status::error(name + ": safetensors header length " + std::to_string(n) +
                         " exceeds file size");
  json header;
  try {
    header = json::parse(bytes.substr(8, n));
  } catch (const std::exception& e) {
    return Status::error(name + ": safetensors header is not valid JSON: " + e.what());
  }
  SafeTensors st;
  const size_t base = 8 + n;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      for (auto m = it->begin(); m != it->end(); ++m)
        st.metadata[m.key()] = m->is_string() ? m->get<std::string>() : m->dump();
      continue;
    }
    RawTensor t;
    try {
      if (!dtype_from_name(it->at("dtype").get<std::string>(), &t.dtype))
        return Status::error(name + ": tensor '" + it.key() + "' has unsupported dtype " +
                             it->at("dtype").dump());
      t.shape = it->at("shape").get<std::vector<int64_t>>();
      auto off = it->at("data_offsets").get<std::vector<uint64_t>>();
      if (off.size() != 2 || off[1] < off[0] || base + off[1] > bytes.size())
        return Status::error(name + ": tensor '" + it.key() +
                             "' data_offsets out of range (truncated file?)");
      if (off[1] - off[0] != static_cast<uint64_t>(t.numel()) * dtype_size(t.dtype))
        return Status::error(name + ": tensor '" + it.key() + "' byte size does not match shape");
      t.data = bytes.substr(base + off[0], off[1] - off[0]);
    } catch (const std::exception& e) {
      return Status::error(name + ": malformed entry for tensor '" + it.key() + "': " + e.what());
    }
    st.tensors.emplace(it.key(), std::move(t));
  }
  return st;
}

Result<SafeTensors> load_safetensors(const std::string& path) {
  LF_ASSIGN_OR_RETURN(std::string bytes, read_file(path));
  return parse_safetensors(bytes, path);
}

}  // namespace lf
