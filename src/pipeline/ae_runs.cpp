// The autoencoder stages (see ae_runs.h).
#include "pipeline/ae_runs.h"

#include <algorithm>

#include "lesionflow/data.h"
#include "lesionflow/io.h"
#include "lesionflow/log.h"

namespace lf {
namespace {

// Pointers to the images of one split of a prepared cache (all records when no splits file:
// every 10th record is validation).
Result<std::vector<const uint8_t*>> split_images(const PreparedSet& ps, const std::string& splits,
                                                 const std::string& name) {
  LF_ASSIGN_OR_RETURN(auto idx, split_or_default(ps.records, splits, name));
  std::vector<const uint8_t*> out;
  for (size_t i : idx) out.push_back(ps.image(i));
  return out;
}

}  // namespace

nlohmann::json AERunOptions::to_json() const {
  return {{"data", data},
          {"splits", splits},
          {"out", out},
          {"ae", ae},
          {"latent_channels", latent_channels},
          {"widths", widths},
          {"res_blocks", res_blocks},
          {"train", train.to_json()},
          {"split", split},
          {"seed", seed}};
}

Result<nlohmann::json> run_ae_training(AERunOptions o) {
  if (o.data.empty()) return Status::error("ae train: --data CACHE_DIR is required");
  log_info("ae train " + o.to_json().dump());
  LF_ASSIGN_OR_RETURN(PreparedSet ps, load_prepared(o.data));
  LF_ASSIGN_OR_RETURN(auto train, split_images(ps, o.splits, "train"));
  LF_ASSIGN_OR_RETURN(auto val, split_images(ps, o.splits, "val"));
  AEConfig c;
  c.image_size = ps.size;
  c.latent_channels = o.latent_channels;
  c.widths = o.widths;
  c.res_blocks = o.res_blocks;
  LF_ASSIGN_OR_RETURN(c, AEConfig::from_json(c.to_json()));  // validates
  torch::manual_seed(o.seed);
  Autoencoder ae(c);
  int64_t np = 0;
  for (auto& p : ae->parameters()) np += p.numel();
  log_info("autoencoder: " + std::to_string(np) + " parameters, f=" + std::to_string(c.factor()) +
           ", latent " + std::to_string(c.latent_channels) + "x" + std::to_string(c.latent_size()) +
           "x" + std::to_string(c.latent_size()));
  o.train.seed = o.seed;
  o.train.out = o.out;
  o.train.warmup = std::min<int64_t>(o.train.warmup, o.train.steps / 10 + 1);
  LF_ASSIGN_OR_RETURN(AETrainResult r, train_autoencoder(o.train, ae, train, val, ps.size));
  nlohmann::json j = {{"step", r.step},
                      {"seconds", r.seconds},
                      {"images_per_second", r.images_per_second},
                      {"val_psnr", r.val_psnr},
                      {"val_ssim", r.val_ssim},
                      {"stopped_by_budget", r.stopped_by_budget},
                      {"stopped_by_signal", r.stopped_by_signal},
                      {"checkpoint", o.out + "/ae.safetensors"}};
  return j;
}

// The autoencoder o.ae and the prepared cache o.data, checked to have the same image side.
static Status load_ae_and_data(const AERunOptions& o, LoadedAutoencoder* la, PreparedSet* ps) {
  LF_ASSIGN_OR_RETURN(*la, load_autoencoder(o.ae));
  LF_ASSIGN_OR_RETURN(*ps, load_prepared(o.data));
  if (ps->size != la->model->config().image_size)
    return Status::error(o.data + ": images are " + std::to_string(ps->size) + "px, " + o.ae +
                         " expects " + std::to_string(la->model->config().image_size) + "px");
  return Status::ok_status();
}

Result<nlohmann::json> run_ae_encoding(const AERunOptions& o) {
  LoadedAutoencoder la;
  PreparedSet ps;
  LF_RETURN_IF_ERROR(load_ae_and_data(o, &la, &ps));
  std::vector<const uint8_t*> all;
  for (int64_t i = 0; i < ps.count(); ++i) all.push_back(ps.image(i));
  LF_ASSIGN_OR_RETURN(torch::Tensor lat, latent_cache(o.data, la.model, la.hash, all, ps.size));
  const std::string path = latent_cache_path(o.data, la.hash);
  return nlohmann::json{{"latents", path}, {"shape", lat.sizes().vec()}, {"images", ps.count()}};
}

Result<nlohmann::json> run_ae_evaluation(const AERunOptions& o) {
  LoadedAutoencoder la;
  PreparedSet ps;
  LF_RETURN_IF_ERROR(load_ae_and_data(o, &la, &ps));
  LF_ASSIGN_OR_RETURN(auto imgs, split_images(ps, o.splits, o.split));
  AEEval e = evaluate_autoencoder(la.model, imgs, ps.size);
  nlohmann::json j = {
      {"split", o.split}, {"images", e.images}, {"psnr", e.psnr}, {"ssim", e.ssim}, {"ae", o.ae}};
  return j;
}

}  // namespace lf
