#include "train/autoencoder.h"

#include <chrono>
#include <opencv2/imgproc.hpp>
#include <random>

#include "lesionflow/io.h"
#include "lesionflow/log.h"
#include "lesionflow/report.h"
#include "lesionflow/rng.h"
#include "lesionflow/stop.h"
#include "models/checkpoint.h"
#include "train/common.h"
#include "train/generator.h"

namespace lf {
using torch::Tensor;
namespace F = torch::nn::functional;

nlohmann::json AETrainConfig::to_json() const {
  return {{"steps", steps},
          {"batch", batch},
          {"lr", lr},
          {"warmup", warmup},
          {"min_lr_frac", min_lr_frac},
          {"grad_clip", grad_clip},
          {"kl_weight", kl_weight},
          {"grad_weight", grad_weight},
          {"feat_weight", feat_weight},
          {"gan_weight", gan_weight},
          {"gan_start", gan_start},
          {"augment", augment},
          {"decoder_only", decoder_only},
          {"latent_noise", latent_noise},
          {"latent_hash", latent_hash},
          {"gen_latents", gen_latents.defined() ? nlohmann::json{{"source", gen_latents_source},
                                                                 {"count", gen_latents.size(0)},
                                                                 {"weight", gen_weight}}
                                                : nlohmann::json()},
          {"max_minutes", max_minutes},
          {"seed", seed},
          {"out", out}};
}

namespace {
Tensor image_gradient_l1(const Tensor& a, const Tensor& b) {
  auto dx = [](const Tensor& t) {
    return t.narrow(3, 1, t.size(3) - 1) - t.narrow(3, 0, t.size(3) - 1);
  };
  auto dy = [](const Tensor& t) {
    return t.narrow(2, 1, t.size(2) - 1) - t.narrow(2, 0, t.size(2) - 1);
  };
  return (dx(a) - dx(b)).abs().mean() + (dy(a) - dy(b)).abs().mean();
}

Tensor batch_of(const std::vector<const uint8_t*>& imgs, int64_t start, int64_t n, int size) {
  return images_to_tensor(
      std::vector<const uint8_t*>(imgs.begin() + start, imgs.begin() + start + n), size);
}

Status write_recon_grid(const std::string& path, const Tensor& x, const Tensor& y) {
  auto both = torch::cat({x, y}, 0);
  auto u8 = tensor_to_images(both);
  const int S = x.size(2);
  std::vector<cv::Mat> tiles;
  for (int64_t i = 0; i < both.size(0); ++i) {
    cv::Mat rgb(S, S, CV_8UC3, u8.data() + i * S * S * 3), bgr;
    cv::cvtColor(rgb, bgr, cv::COLOR_RGB2BGR);
    tiles.push_back(bgr.clone());
  }
  return write_png(path, make_grid(tiles, static_cast<int>(x.size(0))));
}
}  // namespace

AEEval evaluate_autoencoder(Autoencoder& ae, const std::vector<const uint8_t*>& images, int size) {
  torch::NoGradGuard ng;
  const bool was_training = ae->is_training();
  ae->eval();
  AEEval e;
  double sp = 0, ss = 0;
  for (int64_t s = 0; s < static_cast<int64_t>(images.size()); s += 64) {
    int64_t n = std::min<int64_t>(64, images.size() - s);
    auto x = batch_of(images, s, n, size);
    auto y = ae->decode_raw(ae->encode_posterior(x).first);
    sp += psnr(y, x) * n;
    ss += ssim(y, x) * n;
    e.images += n;
  }
  if (e.images) {
    e.psnr = sp / e.images;
    e.ssim = ss / e.images;
  }
  if (was_training) ae->train();
  return e;
}

std::vector<uint8_t> reconstruct_images(Autoencoder& ae, const std::vector<const uint8_t*>& images,
                                        int size) {
  torch::NoGradGuard ng;
  const bool was_training = ae->is_training();
  ae->eval();
  std::vector<uint8_t> out;
  out.reserve(images.size() * size * size * 3);
  for (int64_t s = 0; s < static_cast<int64_t>(images.size()); s += 64) {
    int64_t n = std::min<int64_t>(64, images.size() - s);
    auto y = ae->decode_raw(ae->encode_posterior(batch_of(images, s, n, size)).first);
    auto u8 = tensor_to_images(y.clamp(-1, 1));
    out.insert(out.end(), u8.begin(), u8.end());
  }
  if (was_training) ae->train();
  return out;
}

void calibrate_latents(Autoencoder& ae, const std::vector<const uint8_t*>& images, int size,
                       int64_t n) {
  torch::NoGradGuard ng;
  const bool was_training = ae->is_training();
  ae->eval();
  std::vector<Tensor> zs;
  n = std::min<int64_t>(n, images.size());
  for (int64_t s = 0; s < n; s += 64)
    zs.push_back(
        ae->encode_posterior(batch_of(images, s, std::min<int64_t>(64, n - s), size)).first);
  auto z = torch::cat(zs, 0);
  ae->config().latent_shift = z.mean().item<double>();
  ae->config().latent_scale = 1.0 / std::max(1e-6, z.std().item<double>());
  if (was_training) ae->train();
}

Result<AETrainResult> train_autoencoder(const AETrainConfig& cfg, Autoencoder& ae,
                                        const std::vector<const uint8_t*>& train,
                                        const std::vector<const uint8_t*>& val, int size,
                                        std::function<Tensor(const Tensor&)> features) {
  if (train.empty()) return Status::error("ae train: no training images");
  if (cfg.out.empty()) return Status::error("ae train: --out is required");
  if (size != ae->config().image_size)
    return Status::error("ae train: images are " + std::to_string(size) +
                         "px but the autoencoder expects " +
                         std::to_string(ae->config().image_size) + "px");
  if (cfg.feat_weight > 0 && !features)
    return Status::error("ae train: a feature weight needs a reference network");
  LF_RETURN_IF_ERROR(make_dirs(cfg.out + "/recon"));
  const std::string ckpt = cfg.out + "/ae.safetensors", disc_path = cfg.out + "/disc.safetensors",
                    state = cfg.out + "/state.bin", state_d = cfg.out + "/state_disc.bin",
                    metrics = cfg.out + "/metrics.jsonl";
  if (cfg.latent_noise < 0)
    return Status::error("ae train: --latent-noise must be >= 0, got " +
                         std::to_string(cfg.latent_noise));
  if (cfg.decoder_only && cfg.latent_hash.empty())
    return Status::error("ae train: a decoder-only fine-tune needs the latent hash of its init");
  const bool has_gen = cfg.gen_latents.defined() && cfg.gen_latents.size(0) > 0;
  if (has_gen) {
    if (!cfg.decoder_only)
      return Status::error(
          "ae train: generator latents need --decoder-only (they live in the init's latent "
          "space, which a trained encoder would move)");
    if (cfg.gan_weight <= 0)
      return Status::error(
          "ae train: generator latents are used by the PatchGAN; --gan-weight "
          "must be > 0");
    const auto& ac = ae->config();
    if (cfg.gen_latents.dim() != 4 || cfg.gen_latents.size(1) != ac.latent_channels ||
        cfg.gen_latents.size(2) != ac.latent_size() || cfg.gen_latents.size(3) != ac.latent_size())
      return Status::error("ae train: generator latents " + cfg.gen_latents_source +
                           " do not have the autoencoder's latent shape");
  }
  PatchDiscriminator disc(ae->config().channels);
  std::vector<Tensor> trainable;
  for (const auto& p : ae->named_parameters()) {
    const bool dec = p.key().rfind("decoder.", 0) == 0;
    if (cfg.decoder_only && !dec) {
      p.value().set_requires_grad(false);
    } else {
      trainable.push_back(p.value());
    }
  }
  torch::optim::AdamW opt(trainable,
                          torch::optim::AdamWOptions(cfg.lr).betas({0.9, 0.99}).weight_decay(0));
  torch::optim::AdamW opt_d(disc->parameters(),
                            torch::optim::AdamWOptions(cfg.lr).betas({0.5, 0.9}).weight_decay(0));
  int64_t step = 0;
  const std::string journal = cfg.out + "/checkpoint.journal";
  LF_RETURN_IF_ERROR(recover_checkpoint(journal, {ckpt, disc_path, state_d, state}));
  if (cfg.resume) {
    if (!file_exists(state))
      return Status::error(state + ": nothing to resume (no training state in " + cfg.out + ")");
    LF_ASSIGN_OR_RETURN(LoadedAutoencoder la, load_autoencoder(ckpt));
    {
      torch::NoGradGuard ng;
      auto src = la.model->parameters();
      auto dst = ae->parameters();
      if (src.size() != dst.size())
        return Status::error(ckpt + ": the autoencoder architecture differs from the flags");
      for (size_t i = 0; i < src.size(); ++i) {
        if (src[i].sizes() != dst[i].sizes())
          return Status::error(ckpt + ": the autoencoder architecture differs from the flags");
        dst[i].copy_(src[i]);
      }
      ae->config().latent_shift = la.model->config().latent_shift;
      ae->config().latent_scale = la.model->config().latent_scale;
    }
    LF_ASSIGN_OR_RETURN(step, load_state(state, opt));
    if (file_exists(state_d)) {
      LF_ASSIGN_OR_RETURN(SafeTensors dw, load_safetensors(disc_path));
      LF_RETURN_IF_ERROR(load_module_tensors(dw, *disc, disc_path));
      LF_RETURN_IF_ERROR(load_state(state_d, opt_d).status());
    }
    truncate_metrics(metrics, step);
    log_info("resumed " + cfg.out + " at step " + std::to_string(step));
  } else {
    std::filesystem::remove(metrics);
  }
  LF_RETURN_IF_ERROR(write_file_atomic(
      cfg.out + "/options.json",
      nlohmann::json{{"train", cfg.to_json()}, {"model", ae->config().to_json()}}.dump(2) + "\n"));
  std::vector<const uint8_t*> val_sub(val.begin(), val.begin() + std::min<size_t>(val.size(), 256));
  AETrainResult res;
  auto save_all = [&](int64_t s) -> Status {
    std::map<std::string, std::string> extra;
    if (cfg.decoder_only) {
      extra["latent_hash"] = cfg.latent_hash;  // the encoder and the normalisation are the init's
    } else {
      calibrate_latents(ae, train, size, 1024);
    }
    std::vector<CheckpointFile> files = {
        {ckpt, [&](const std::string& p) { return save_autoencoder(p, ae, s, extra); }}};
    if (s > cfg.gan_start && cfg.gan_weight > 0) {
      files.push_back({disc_path, [&](const std::string& p) {
                         return save_module(p, *disc, {{"format", "lesionflow.ae_disc.v1"}});
                       }});
      files.push_back({state_d, [&](const std::string& p) { return save_state(p, s, opt_d); }});
    }
    files.push_back({state, [&](const std::string& p) { return save_state(p, s, opt); }});
    return commit_checkpoint(journal, files);
  };
  BatchPlan plan(static_cast<int64_t>(train.size()), cfg.batch, cfg.seed);
  auto t0 = std::chrono::steady_clock::now();
  const int64_t start = step;
  Progress prog("ae train", cfg.steps, "step", step);
  double acc_rec = 0, acc_g = 0, acc_kl = 0, acc_gan = 0, acc_d = 0, acc_gen = 0;
  int acc_n = 0;
  ae->train();
  StopOnSignal stop_guard;  // SIGTERM / Ctrl-C: checkpoint this step, then return
  while (step < cfg.steps) {
    if (stop_requested()) {
      res.stopped_by_signal = true;
      log_warn(std::string(stop_signal_name()) + " received: checkpointing step " +
               std::to_string(step) + " in " + cfg.out + " (continue with --resume)");
      break;
    }
    double minutes =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 60;
    if (cfg.max_minutes > 0 && minutes >= cfg.max_minutes) {
      res.stopped_by_budget = true;
      break;
    }
    const double lr = warmup_cosine_lr(cfg.lr, cfg.warmup, cfg.steps, cfg.min_lr_frac, step);
    set_lr(opt, lr);
    set_lr(opt_d, lr);
    auto idx = plan.at(step);
    std::vector<const uint8_t*> px;
    for (auto i : idx) px.push_back(train[i]);
    auto x = images_to_tensor(px, size);
    std::mt19937_64 rng(derive_seed(cfg.seed, Stream::kAeBatches, step));
    if (cfg.augment) {
      std::vector<Tensor> xs;
      for (int64_t i = 0; i < x.size(0); ++i) xs.push_back(augment_dihedral(x[i], rng));
      x = torch::stack(xs);
    }
    auto gen = at::detail::createCPUGenerator(derive_seed(cfg.seed, Stream::kAeNoise, step));
    Tensor mean, logvar;
    {
      torch::AutoGradMode grad_mode(!cfg.decoder_only);  // a frozen encoder needs no graph
      std::tie(mean, logvar) = ae->encode_posterior(x);
    }
    auto z = mean + torch::exp(0.5 * logvar) * torch::randn(mean.sizes(), gen, torch::kFloat32);
    if (cfg.latent_noise > 0) {  // per-image sigma in normalised units -> raw units
      auto sigma = torch::rand({z.size(0), 1, 1, 1}, gen, torch::kFloat32) *
                   (cfg.latent_noise / ae->config().latent_scale);
      z = z + sigma * torch::randn(z.sizes(), gen, torch::kFloat32);
    }
    auto y = ae->decode_raw(z);
    auto rec = (y - x).abs().mean();
    auto gl = image_gradient_l1(y, x);
    auto kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean();
    auto loss = rec + cfg.grad_weight * gl + cfg.kl_weight * kl;
    if (cfg.feat_weight > 0)
      loss = loss + cfg.feat_weight * (features(y) - features(x).detach()).abs().mean();
    const bool gan_on = cfg.gan_weight > 0 && step >= cfg.gan_start;
    Tensor gan_g, y_gen, gan_gen;
    if (gan_on) {
      for (auto& p : disc->parameters()) p.set_requires_grad(false);
      gan_g = (disc->forward(y) - 1).pow(2).mean();
      loss = loss + cfg.gan_weight * gan_g;
      if (has_gen) {  // a batch of the generator's latents, decoded
        auto gi = torch::randint(0, cfg.gen_latents.size(0), {x.size(0)}, gen, torch::kInt64);
        const auto& ac = ae->config();
        y_gen =
            ae->decode_raw(cfg.gen_latents.index_select(0, gi) / ac.latent_scale + ac.latent_shift);
        gan_gen = (disc->forward(y_gen) - 1).pow(2).mean();
        loss = loss + cfg.gen_weight * gan_gen;
      }
      for (auto& p : disc->parameters()) p.set_requires_grad(true);
    }
    const double lv = loss.item<double>();
    if (!std::isfinite(lv))
      return Status::error(
          "ae train: loss is " + std::to_string(lv) + " at step " + std::to_string(step) +
          "; stopped without overwriting the last checkpoint in " + cfg.out + "; try a lower --lr");
    opt.zero_grad();
    loss.backward();
    clip_adamw_ema_step(opt, trainable, cfg.grad_clip);
    if (gan_on) {  // least-squares discriminator: real -> 1, reconstruction -> 0
      auto fake = disc->forward(y.detach()).pow(2).mean();
      if (has_gen) fake = 0.5 * (fake + disc->forward(y_gen.detach()).pow(2).mean());
      auto d_loss = 0.5 * ((disc->forward(x) - 1).pow(2).mean() + fake);
      if (has_gen) acc_gen += gan_gen.item<double>();
      opt_d.zero_grad();
      d_loss.backward();
      opt_d.step();
      acc_gan += gan_g.item<double>();
      acc_d += d_loss.item<double>();
    }
    acc_rec += rec.item<double>();
    acc_g += gl.item<double>();
    acc_kl += kl.item<double>();
    ++acc_n;
    ++step;
    char extra[80];
    std::snprintf(extra, sizeof extra, "L1 %.4f lr %.2e", rec.item<double>(), lr);
    prog.update(step, extra);
    if (step % cfg.log_every == 0 || step == cfg.steps) {
      double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      append_line(metrics, nlohmann::json{{"step", step},
                                          {"l1", acc_rec / acc_n},
                                          {"grad_l1", acc_g / acc_n},
                                          {"kl", acc_kl / acc_n},
                                          {"gan_g", acc_gan / acc_n},
                                          {"gan_d", acc_d / acc_n},
                                          {"gan_gen", acc_gen / acc_n},
                                          {"lr", lr},
                                          {"images_per_second",
                                           (step - start) * cfg.batch / std::max(el, 1e-9)}}
                               .dump());
      acc_rec = acc_g = acc_kl = acc_gan = acc_d = acc_gen = 0;
      acc_n = 0;
    }
    if (!val_sub.empty() && cfg.val_every > 0 && step % cfg.val_every == 0) {
      auto e = evaluate_autoencoder(ae, val_sub, size);
      append_line(
          metrics,
          nlohmann::json{{"step", step}, {"val_psnr", e.psnr}, {"val_ssim", e.ssim}}.dump());
      torch::NoGradGuard ng;
      ae->eval();
      auto xv = batch_of(val_sub, 0, std::min<int64_t>(16, val_sub.size()), size);
      auto yv = ae->decode_raw(ae->encode_posterior(xv).first);
      ae->train();
      char name[64];
      std::snprintf(name, sizeof name, "/recon/step_%06lld.png", static_cast<long long>(step));
      (void)write_recon_grid(cfg.out + name, xv, yv);
    }
    if (cfg.ckpt_every > 0 && step % cfg.ckpt_every == 0) LF_RETURN_IF_ERROR(save_all(step));
  }
  LF_RETURN_IF_ERROR(save_all(step));
  res.step = step;
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  res.images_per_second = (step - start) * cfg.batch / std::max(res.seconds, 1e-9);
  if (!val_sub.empty() && !res.stopped_by_signal) {
    auto e = evaluate_autoencoder(ae, val, size);
    res.val_psnr = e.psnr;
    res.val_ssim = e.ssim;
    append_line(metrics, nlohmann::json{{"step", step},
                                        {"val_psnr_full", e.psnr},
                                        {"val_ssim_full", e.ssim},
                                        {"val_images", e.images}}
                             .dump());
  }
  prog.finish(res.stopped_by_budget   ? "(time budget)"
              : res.stopped_by_signal ? "(stopped by signal)"
                                      : "",
              step);
  return res;
}

Tensor encode_dihedral_latents(Autoencoder& ae, const std::vector<const uint8_t*>& images, int size,
                               int variants) {
  torch::NoGradGuard ng;
  ae->eval();
  const auto& c = ae->config();
  const int64_t N = static_cast<int64_t>(images.size()), s = c.latent_size();
  auto out = torch::empty({N, variants, c.latent_channels, s, s}, torch::kFloat16);
  Progress prog("encode latents", N, "img");
  for (int64_t i = 0; i < N; i += 64) {
    int64_t n = std::min<int64_t>(64, N - i);
    auto x = batch_of(images, i, n, size);
    for (int k = 0; k < variants; ++k)
      out.narrow(0, i, n).select(1, k).copy_(ae->encode(dihedral(x, k)));
    prog.update(i + n);
  }
  prog.finish();
  return out;
}

std::string latent_cache_path(const std::string& dir, const std::string& ae_hash) {
  return dir + "/latents_" + ae_hash.substr(0, 12) + ".safetensors";
}

Result<Tensor> latent_cache(const std::string& dir, Autoencoder& ae, const std::string& ae_hash,
                            const std::vector<const uint8_t*>& images, int size, bool write) {
  const std::string path = latent_cache_path(dir, ae_hash);
  if (file_exists(path)) {
    LF_ASSIGN_OR_RETURN(SafeTensors st, load_safetensors(path));
    auto it = st.tensors.find("latents");
    if (st.metadata["ae_hash"] == ae_hash && it != st.tensors.end() && !it->second.shape.empty() &&
        it->second.shape[0] == static_cast<int64_t>(images.size())) {
      LF_ASSIGN_OR_RETURN(Tensor t, from_raw(it->second, path));
      log_info("latents from " + path);
      return t;
    }
    log_warn(path + ": made by another autoencoder or another cache; encoding again");
  }
  Tensor lat = encode_dihedral_latents(ae, images, size);
  if (write) {
    SafeTensors st;
    st.tensors["latents"] = to_raw(lat);
    st.metadata = {{"format", "lesionflow.latents.v1"},
                   {"ae_hash", ae_hash},
                   {"layout", "[record, dihedral k, C, s, s]"}};
    LF_RETURN_IF_ERROR(save_safetensors(path, st));
    log_info("latent cache " + path);
  }
  return lat;
}

}  // namespace lf
