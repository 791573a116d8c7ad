// Shipping weights: float tensors of a checkpoint converted to fp16 or bf16 (metadata kept); a
// latent generator is exported together with its autoencoder, whose new hash and file name the
// exported generator records.
#pragma once
#include <string>

#include "lesionflow/status.h"

namespace lf {

// dtype: "fp16" | "bf16" | "fp32". Non-float tensors are copied unchanged.
Status convert_safetensors(const std::string& in, const std::string& out, const std::string& dtype);
// Writes OUT (generator) and, for a latent generator, OUT's stem + "_ae.safetensors" beside it.
Status export_generator(const std::string& checkpoint, const std::string& out,
                        const std::string& dtype, const std::string& ae_path = "");

}  // namespace lf
