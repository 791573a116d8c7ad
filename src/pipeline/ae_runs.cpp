// The autoencoder stages (see ae_runs.h).
#include "pipeline/ae_runs.h"

#include <algorithm>
#include <filesystem>

#include "classify/classifier.h"
#include "eval/audit.h"
#include "lesionflow/data.h"
#include "lesionflow/io.h"
#include "lesionflow/log.h"
#include "models/checkpoint.h"
#include "pipeline/audit_run.h"

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
          {"init", init},
          {"latent_channels", latent_channels},
          {"widths", widths},
          {"res_blocks", res_blocks},
          {"train", train.to_json()},
          {"split", split},
          {"fd_images", fd_images},
          {"features", features},
          {"gen_latents", gen_latents},
          {"seed", seed}};
}

Result<torch::Tensor> load_saved_latents(const std::string& dir, const std::string& latent_hash) {
  namespace fs = std::filesystem;
  const std::string d = fs::is_directory(dir + "/latents") ? dir + "/latents" : dir;
  if (!fs::is_directory(d)) return Status::error(dir + ": not a folder of saved latents");
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(d))
    if (e.is_regular_file() && e.path().extension() == ".safetensors")
      files.push_back(e.path().string());
  std::sort(files.begin(), files.end());
  if (files.empty())
    return Status::error(d + ": no .safetensors latents (make them with synth --save-latents)");
  std::vector<torch::Tensor> zs;
  for (const auto& f : files) {
    LF_ASSIGN_OR_RETURN(SafeTensors st, load_safetensors(f));
    auto it = st.tensors.find("latent");
    if (st.metadata["format"] != "lesionflow.latent.v1" || it == st.tensors.end())
      return Status::error(f + ": not a latent written by synth --save-latents");
    if (st.metadata["latent_hash"] != latent_hash)
      return Status::error(f + ": a latent of the latent space " + st.metadata["latent_hash"] +
                           ", but the autoencoder's is " + latent_hash);
    LF_ASSIGN_OR_RETURN(torch::Tensor z, from_raw(it->second, f));
    if (!zs.empty() && z.sizes() != zs[0].sizes())
      return Status::error(f + ": latent shape differs from the other files'");
    zs.push_back(z.to(torch::kFloat32));
  }
  return torch::stack(zs);
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
  Autoencoder ae{nullptr};
  if (!o.init.empty()) {  // start from a trained autoencoder: its architecture, weights, latents
    LF_ASSIGN_OR_RETURN(LoadedAutoencoder la, load_autoencoder(o.init));
    if (la.model->config().image_size != ps.size)
      return Status::error(o.init + ": expects " + std::to_string(la.model->config().image_size) +
                           "px images, " + o.data + " has " + std::to_string(ps.size) + "px");
    ae = la.model;
    c = ae->config();
    o.train.latent_hash = la.latent_hash;
  } else if (o.train.decoder_only) {
    return Status::error(
        "ae train: --decoder-only needs --init AE.safetensors (the autoencoder "
        "whose decoder is fine-tuned)");
  } else {
    ae = Autoencoder(c);
  }
  int64_t np = 0;
  for (auto& p : ae->parameters()) np += p.numel();
  log_info("autoencoder: " + std::to_string(np) + " parameters, f=" + std::to_string(c.factor()) +
           ", latent " + std::to_string(c.latent_channels) + "x" + std::to_string(c.latent_size()) +
           "x" + std::to_string(c.latent_size()));
  if (!o.gen_latents.empty()) {
    if (!o.train.decoder_only)
      return Status::error("ae train: --gen-latents needs --decoder-only and --init");
    LF_ASSIGN_OR_RETURN(o.train.gen_latents,
                        load_saved_latents(o.gen_latents, o.train.latent_hash));
    o.train.gen_latents_source = o.gen_latents;
    log_info("generator latents: " + std::to_string(o.train.gen_latents.size(0)) + " from " +
             o.gen_latents);
  }
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
  LF_ASSIGN_OR_RETURN(torch::Tensor lat,
                      latent_cache(o.data, la.model, la.latent_hash, all, ps.size));
  const std::string path = latent_cache_path(o.data, la.latent_hash);
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
  if (o.fd_images <= 0) return j;
  // The reconstruction's HAM-FD: a seeded subset of the split, raw and reconstructed, against the
  // test split in the reference network's features (the audit's floor protocol, subset seed 13).
  const std::string feat =
      o.features.empty() ? shipped_model_path(kReferenceNetworkFile) : o.features;
  if (feat.empty()) return Status::error("ae eval --fd: give --features (no reference network)");
  LF_ASSIGN_OR_RETURN(LoadedClassifier lc, load_classifier(feat));
  LF_ASSIGN_OR_RETURN(auto split_idx, split_or_default(ps.records, o.splits, o.split));
  LF_ASSIGN_OR_RETURN(auto test_idx, split_or_default(ps.records, o.splits, "test"));
  auto perm = floor_subset(static_cast<int64_t>(split_idx.size()), o.fd_images);
  std::vector<size_t> sub_idx;
  for (int64_t i = 0; i < perm.size(0); ++i) sub_idx.push_back(split_idx[perm[i].item<int64_t>()]);
  auto raw = labeled_from_prepared(ps, sub_idx, nullptr),
       test = labeled_from_prepared(ps, test_idx, nullptr);
  const int64_t n = raw.count();
  std::vector<const uint8_t*> sub;
  for (int64_t i = 0; i < n; ++i) sub.push_back(raw.image(i));
  auto rec = reconstruct_images(la.model, sub, ps.size);
  auto f_te = extract_features(lc.model, test.pixels.data(), test.count(), ps.size);
  auto f_raw = extract_features(lc.model, raw.pixels.data(), n, ps.size);
  auto f_rec = extract_features(lc.model, rec.data(), n, ps.size);
  auto ci_raw = frechet_distance_ci(f_raw, f_te, 100, 12);
  auto ci_rec = frechet_distance_ci(f_rec, f_te, 100, 11);
  const FrechetParts p_raw = frechet_parts(f_raw, f_te), p_rec = frechet_parts(f_rec, f_te);
  j["fd"] = {{"real", p_raw.total()},
             {"real_ci", {ci_raw.first, ci_raw.second}},
             {"real_parts", p_raw.to_json()},
             {"reconstructed", p_rec.total()},
             {"reconstructed_ci", {ci_rec.first, ci_rec.second}},
             {"reconstructed_parts", p_rec.to_json()},
             {"images", n},
             {"test_images", test.count()},
             {"features", feat}};
  return j;
}

}  // namespace lf
