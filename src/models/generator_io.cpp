// Generator checkpoints (see generator_io.h).
#include "models/generator_io.h"

#include <filesystem>

#include "lesionflow/io.h"
#include "models/checkpoint.h"

namespace lf {
namespace {

std::map<std::string, std::string> generator_metadata(const MMDiT& model, const Tokenizer& tok,
                                                      int64_t step, const FlowConfig& flow,
                                                      const std::string& kind) {
  return {{"format", "lesionflow.mmdit.v1"},
          {"config", model->config().to_json().dump()},
          {"flow", flow.to_json().dump()},
          {"tokenizer_model", base64_encode(tok.model_bytes())},
          {"tokenizer_hash", tok.hash()},
          {"step", std::to_string(step)},
          {"weights", kind}};
}

}  // namespace

Status save_generator(const std::string& path, MMDiT& model, const Tokenizer& tok, int64_t step,
                      const FlowConfig& flow, const std::string& kind,
                      const std::map<std::string, std::string>& extra_metadata) {
  auto md = generator_metadata(model, tok, step, flow, kind);
  for (const auto& [k, v] : extra_metadata) md[k] = v;
  return save_module(path, *model, md);
}

std::string ae_metadata(const std::string& ae_hash, const std::string& ae_file) {
  return nlohmann::json{{"hash", ae_hash}, {"file", ae_file}}.dump();
}

Result<LoadedGenerator> load_generator(const std::string& path, const std::string& ae_path) {
  LF_ASSIGN_OR_RETURN(std::string bytes, read_file(path));
  LF_ASSIGN_OR_RETURN(SafeTensors st, parse_safetensors(bytes, path));
  if (st.metadata["format"] != "lesionflow.mmdit.v1")
    return Status::error(path + ": not a lesionflow generator checkpoint (format '" +
                         st.metadata["format"] + "')");
  LoadedGenerator g;
  MMDiTConfig cfg;
  try {
    cfg = MMDiTConfig::from_json(nlohmann::json::parse(st.metadata["config"]));
    g.flow = FlowConfig::from_json(nlohmann::json::parse(st.metadata["flow"]));
    g.step = std::stoll(st.metadata["step"]);
  } catch (const std::exception& e) {
    return Status::error(path + ": bad metadata: " + e.what());
  }
  // Tokenizer model is embedded (base64) so the checkpoint alone rebuilds everything.
  const std::string raw = base64_decode(st.metadata["tokenizer_model"]);
  auto tok = Tokenizer::from_bytes(raw);
  if (!tok.ok()) return tok.status().with_context(path);
  g.tok = std::make_shared<Tokenizer>(std::move(tok).value());
  g.model = MMDiT(cfg);
  LF_RETURN_IF_ERROR(load_module_tensors(st, *g.model, path));
  g.model->eval();
  g.hash = hash_bytes(bytes);
  g.metadata = st.metadata;
  if (st.metadata.count("ae")) {
    auto aj = nlohmann::json::parse(st.metadata["ae"], nullptr, false);
    if (aj.is_discarded() || !aj.contains("hash"))
      return Status::error(path +
                           ": bad 'ae' metadata (the autoencoder record of a latent generator)");
    const std::string want = aj["hash"].get<std::string>(),
                      file = aj.value("file", "ae.safetensors");
    std::string ap = ae_path;
    if (ap.empty()) ap = (std::filesystem::path(path).parent_path() / file).string();
    if (!file_exists(ap))
      return Status::error(path + ": a latent generator needs its autoencoder '" + file +
                           "' (hash " + want + "); it is not at " + ap + ": pass --ae FILE");
    LF_ASSIGN_OR_RETURN(LoadedAutoencoder la, load_autoencoder(ap));
    if (la.latent_hash != want)
      return Status::error(ap + ": wrong autoencoder for " + path +
                           " (the generator was trained on the latents of hash " + want +
                           ", this file's latent space has hash " + la.latent_hash + ")");
    if (la.model->config().latent_channels != cfg.channels ||
        la.model->config().latent_size() != cfg.image_size)
      return Status::error(ap + ": autoencoder latents do not match the generator's input shape");
    g.ae = la.model;
    g.ae_path = ap;
    g.ae_hash = la.latent_hash;
  } else if (!ae_path.empty()) {
    return Status::error(path + ": a pixel-space generator was given an autoencoder (" + ae_path +
                         ")");
  }
  return g;
}

}  // namespace lf
