#include "pipeline/export.h"

#include <filesystem>

#include "lesionflow/io.h"
#include "models/checkpoint.h"
#include "train/generator.h"

namespace lf {
namespace {
Result<SafeTensors> converted(const std::string& in, const std::string& dtype) {
  if (dtype != "fp16" && dtype != "bf16" && dtype != "fp32")
    return Status::error("export: dtype must be fp16, bf16 or fp32 (got '" + dtype + "')");
  LF_ASSIGN_OR_RETURN(SafeTensors st, load_safetensors(in));
  const auto to = dtype == "fp16"   ? torch::kFloat16
                  : dtype == "bf16" ? torch::kBFloat16
                                    : torch::kFloat32;
  for (auto& [name, raw] : st.tensors) {
    if (raw.dtype != DType::kF32 && raw.dtype != DType::kF16 && raw.dtype != DType::kBF16) continue;
    LF_ASSIGN_OR_RETURN(torch::Tensor t, from_raw(raw, in + ": '" + name + "'"));
    if (to == torch::kFloat16 && t.to(torch::kFloat32).abs().max().item<double>() > 65000)
      return Status::error(in + ": tensor '" + name + "' exceeds the fp16 range; export as bf16");
    raw = to_raw(t.to(to));
  }
  return st;
}
}  // namespace

Status convert_safetensors(const std::string& in, const std::string& out,
                           const std::string& dtype) {
  LF_ASSIGN_OR_RETURN(SafeTensors st, converted(in, dtype));
  st.metadata["exported_dtype"] = dtype;
  return save_safetensors(out, st);
}

Status export_generator(const std::string& checkpoint, const std::string& out,
                        const std::string& dtype, const std::string& ae_path) {
  LF_ASSIGN_OR_RETURN(LoadedGenerator g, load_generator(checkpoint, ae_path));  // checks the AE
  LF_ASSIGN_OR_RETURN(SafeTensors st, converted(checkpoint, dtype));
  st.metadata["exported_dtype"] = dtype;
  st.metadata["exported_from"] =
      nlohmann::json{{"checkpoint", checkpoint}, {"hash", g.hash}}.dump();
  if (g.latent()) {
    const auto p = std::filesystem::path(out);
    const std::string ae_file = p.stem().string() + "_ae.safetensors";
    const std::string ae_out = (p.parent_path() / ae_file).string();
    LF_RETURN_IF_ERROR(convert_safetensors(g.ae_path, ae_out, dtype));
    // The converted file's latent space: its own hash, or the latent_hash a decoder-only
    // fine-tune recorded (kept by the conversion).
    LF_ASSIGN_OR_RETURN(LoadedAutoencoder la, load_autoencoder(ae_out));
    st.metadata["ae"] = ae_metadata(la.latent_hash, ae_file);
  }
  return save_safetensors(out, st);
}

}  // namespace lf
