// Generator checkpoints (lesionflow.mmdit.v1): the MMDiT's weights with its config, flow
// settings, embedded tokenizer and, for a latent generator, the identity of its autoencoder.
// Next to the model, so LoRA merge, export and the trainer share one implementation.
#pragma once
#include <map>
#include <memory>
#include <string>

#include "flow/flow.h"
#include "lesionflow/status.h"
#include "lesionflow/tokenizer.h"
#include "models/autoencoder.h"
#include "models/mmdit.h"

namespace lf {

Status save_generator(const std::string& path, MMDiT& model, const Tokenizer& tok, int64_t step,
                      const FlowConfig& flow, const std::string& kind,
                      const std::map<std::string, std::string>& extra_metadata = {});
// Metadata value "ae" of a latent generator: {"hash": <AE file hash>, "file": <AE file name>}.
std::string ae_metadata(const std::string& ae_hash, const std::string& ae_file);
struct LoadedGenerator {
  MMDiT model{nullptr};
  std::shared_ptr<Tokenizer> tok;
  FlowConfig flow;
  int64_t step = 0;
  std::string hash;  // content hash of the checkpoint file
  std::map<std::string, std::string> metadata;
  Autoencoder ae{nullptr};  // latent generators: the decoder (checked against the "ae" hash)
  std::string ae_path, ae_hash;
  bool latent() const { return !ae.is_empty(); }
  void to(torch::Device d) {  // the generator and its decoder
    model->to(d);
    if (latent()) ae->to(d);
  }
};
// A latent generator's autoencoder is `ae_path` when given, else the file named in its metadata
// next to the checkpoint; one whose hash differs from the checkpoint's record is refused.
Result<LoadedGenerator> load_generator(const std::string& path, const std::string& ae_path = "");

}  // namespace lf
