// lesionflow ae train | encode | eval: the autoencoder of the latent flow.
#include <algorithm>

#include "cli.h"
#include "lesionflow/data.h"
#include "lesionflow/io.h"
#include "lesionflow/log.h"
#include "train/autoencoder.h"

namespace lf::cli {
namespace {

struct AEOptions {
  std::string data, splits, out, ae;
  int latent_channels = 4;
  std::vector<int> widths{32, 64, 128};
  int res_blocks = 1;
  AETrainConfig train;
  std::string split = "val";  // eval
  nlohmann::json to_json() const {
    return {{"data", data}, {"splits", splits}, {"out", out}, {"ae", ae}, {"latent_channels", latent_channels},
            {"widths", widths}, {"res_blocks", res_blocks}, {"train", train.to_json()}, {"split", split}};
  }
};

// Pointers to the images of one split of a prepared cache (all records when no splits file:
// every 10th record is validation).
Result<std::vector<const uint8_t*>> split_images(const PreparedSet& ps, const std::string& splits, const std::string& name) {
  std::vector<size_t> idx;
  if (!splits.empty()) {
    LF_ASSIGN_OR_RETURN(idx, select_split(ps.records, splits, name));
  } else {
    for (size_t i = 0; i < ps.records.size(); ++i)
      if ((i % 10 == 9) == (name != "train")) idx.push_back(i);
  }
  std::vector<const uint8_t*> out;
  for (size_t i : idx) out.push_back(ps.image(i));
  return out;
}

Status run_ae_train(AEOptions o, const GlobalOptions& g) {
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
  torch::manual_seed(g.seed);
  Autoencoder ae(c);
  int64_t np = 0;
  for (auto& p : ae->parameters()) np += p.numel();
  log_info("autoencoder: " + std::to_string(np) + " parameters, f=" + std::to_string(c.factor()) + ", latent " +
           std::to_string(c.latent_channels) + "x" + std::to_string(c.latent_size()) + "x" +
           std::to_string(c.latent_size()));
  o.train.seed = g.seed;
  o.train.out = o.out;
  o.train.warmup = std::min<int64_t>(o.train.warmup, o.train.steps / 10 + 1);
  LF_ASSIGN_OR_RETURN(AETrainResult r, train_autoencoder(o.train, ae, train, val, ps.size));
  nlohmann::json j = {{"step", r.step}, {"seconds", r.seconds}, {"images_per_second", r.images_per_second},
                      {"val_psnr", r.val_psnr}, {"val_ssim", r.val_ssim}, {"stopped_by_budget", r.stopped_by_budget},
                      {"checkpoint", o.out + "/ae.safetensors"}};
  if (g.json) emit_json(g, j);
  else std::printf("autoencoder trained to step %lld (%.1f img/s): validation PSNR %.2f dB, SSIM %.4f -> %s/ae.safetensors\n",
                   (long long)r.step, r.images_per_second, r.val_psnr, r.val_ssim, o.out.c_str());
  return Status::ok_status();
}

Status run_ae_encode(const AEOptions& o, const GlobalOptions& g) {
  LF_ASSIGN_OR_RETURN(LoadedAutoencoder la, load_autoencoder(o.ae));
  LF_ASSIGN_OR_RETURN(PreparedSet ps, load_prepared(o.data));
  if (ps.size != la.model->config().image_size)
    return Status::error(o.data + ": images are " + std::to_string(ps.size) + "px, " + o.ae + " expects " +
                         std::to_string(la.model->config().image_size) + "px");
  std::vector<const uint8_t*> all;
  for (int64_t i = 0; i < ps.count(); ++i) all.push_back(ps.image(i));
  LF_ASSIGN_OR_RETURN(torch::Tensor lat, latent_cache(o.data, la.model, la.hash, all, ps.size));
  const std::string path = latent_cache_path(o.data, la.hash);
  if (g.json) emit_json(g, {{"latents", path}, {"shape", lat.sizes().vec()}});
  else std::printf("latents %s of %lld images (8 dihedral variants each) -> %s\n",
                   c10::str(lat.sizes()).c_str(), (long long)ps.count(), path.c_str());
  return Status::ok_status();
}

Status run_ae_eval(const AEOptions& o, const GlobalOptions& g) {
  LF_ASSIGN_OR_RETURN(LoadedAutoencoder la, load_autoencoder(o.ae));
  LF_ASSIGN_OR_RETURN(PreparedSet ps, load_prepared(o.data));
  if (ps.size != la.model->config().image_size)
    return Status::error(o.data + ": images are " + std::to_string(ps.size) + "px, " + o.ae + " expects " +
                         std::to_string(la.model->config().image_size) + "px");
  LF_ASSIGN_OR_RETURN(auto imgs, split_images(ps, o.splits, o.split));
  AEEval e = evaluate_autoencoder(la.model, imgs, ps.size);
  nlohmann::json j = {{"split", o.split}, {"images", e.images}, {"psnr", e.psnr}, {"ssim", e.ssim}, {"ae", o.ae}};
  if (g.json) emit_json(g, j);
  else std::printf("%s: %lld %s images, PSNR %.2f dB, SSIM %.4f\n", o.ae.c_str(), (long long)e.images,
                   o.split.c_str(), e.psnr, e.ssim);
  return Status::ok_status();
}

}  // namespace

void add_ae(CLI::App& app, GlobalOptions& g, Runner* run) {
  static AEOptions o;
  auto* ae = app.add_subcommand("ae", "autoencoder of the latent flow: train, encode a prepared cache, evaluate");
  ae->require_subcommand(1);
  auto* tr = ae->add_subcommand("train", "train the autoencoder on the train split of a prepared cache");
  tr->add_option("--data", o.data, "prepared cache directory")->required();
  tr->add_option("--splits", o.splits, "splits CSV (train on 'train', validate on 'val')");
  tr->add_option("--out", o.out, "run directory (ae.safetensors)")->required();
  tr->add_option("--latent-channels", o.latent_channels, "latent channels C")->capture_default_str()->check(CLI::Range(1, 64));
  tr->add_option("--widths", o.widths, "width per level; f = 2^(levels-1)")->capture_default_str()->delimiter(',');
  tr->add_option("--res-blocks", o.res_blocks, "residual blocks per level")->capture_default_str()->check(CLI::Range(1, 4));
  tr->add_option("--steps", o.train.steps, "optimisation steps")->capture_default_str()->check(CLI::PositiveNumber);
  tr->add_option("--batch", o.train.batch, "batch size")->capture_default_str()->check(CLI::Range(1, 4096));
  tr->add_option("--lr", o.train.lr, "peak learning rate")->capture_default_str()->check(CLI::PositiveNumber);
  tr->add_option("--kl-weight", o.train.kl_weight, "weight of the mean KL per latent element")->capture_default_str()->check(CLI::NonNegativeNumber);
  tr->add_option("--grad-weight", o.train.grad_weight, "weight of the image-gradient L1")->capture_default_str()->check(CLI::NonNegativeNumber);
  tr->add_option("--gan-weight", o.train.gan_weight, "PatchGAN (least squares) weight, 0 = off")->capture_default_str()->check(CLI::NonNegativeNumber);
  tr->add_option("--gan-start", o.train.gan_start, "step at which the discriminator starts")->capture_default_str()->check(CLI::NonNegativeNumber);
  tr->add_option("--max-minutes", o.train.max_minutes, "wall-clock budget; checkpoint and stop (0 = none)")->check(CLI::NonNegativeNumber);
  tr->add_option("--ckpt-every", o.train.ckpt_every, "checkpoint every N steps")->capture_default_str()->check(CLI::PositiveNumber);
  tr->add_option("--val-every", o.train.val_every, "validation PSNR/SSIM and recon grid every N steps")->capture_default_str()->check(CLI::NonNegativeNumber);
  tr->add_flag("--resume", o.train.resume, "continue the run in --out exactly where it stopped");
  tr->callback([&g, run]() { *run = [&g]() { return run_ae_train(o, g); }; });
  auto* en = ae->add_subcommand("encode", "cache the latents of a prepared set (8 dihedral variants per image)");
  en->add_option("--ae", o.ae, "autoencoder .safetensors")->required();
  en->add_option("--data", o.data, "prepared cache directory (latents_<hash>.safetensors is written there)")->required();
  en->callback([&g, run]() { *run = [&g]() { return run_ae_encode(o, g); }; });
  auto* ev = ae->add_subcommand("eval", "reconstruction PSNR/SSIM on a split");
  ev->add_option("--ae", o.ae, "autoencoder .safetensors")->required();
  ev->add_option("--data", o.data, "prepared cache directory")->required();
  ev->add_option("--splits", o.splits, "splits CSV");
  ev->add_option("--split", o.split, "train | val | test")->capture_default_str()->check(CLI::IsMember({"train", "val", "test"}));
  ev->callback([&g, run]() { *run = [&g]() { return run_ae_eval(o, g); }; });
}

}  // namespace lf::cli
