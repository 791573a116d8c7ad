// lesionflow ae train | encode | eval: flags -> AERunOptions -> src/pipeline/ae_runs.cpp.
#include "cli.h"
#include "pipeline/ae_runs.h"

namespace lf::cli {

void add_ae(CLI::App& app, GlobalOptions& g, Runner* run) {
  static AERunOptions o;
  auto* ae = app.add_subcommand(
      "ae", "autoencoder of the latent flow: train, encode a prepared cache, evaluate");
  ae->require_subcommand(1);
  auto* tr =
      ae->add_subcommand("train", "train the autoencoder on the train split of a prepared cache");
  tr->add_option("--data", o.data, "prepared cache directory")->required();
  tr->add_option("--splits", o.splits, "splits CSV (train on 'train', validate on 'val')");
  tr->add_option("--out", o.out, "run directory (ae.safetensors)")->required();
  tr->add_option("--latent-channels", o.latent_channels, "latent channels C")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  tr->add_option("--widths", o.widths, "width per level; f = 2^(levels-1)")
      ->capture_default_str()
      ->delimiter(',');
  tr->add_option("--res-blocks", o.res_blocks, "residual blocks per level")
      ->capture_default_str()
      ->check(CLI::Range(1, 4));
  tr->add_option("--steps", o.train.steps, "optimisation steps")
      ->capture_default_str()
      ->check(kPositive);
  tr->add_option("--batch", o.train.batch, "batch size")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  tr->add_option("--lr", o.train.lr, "peak learning rate")->capture_default_str()->check(kPositive);
  tr->add_option("--kl-weight", o.train.kl_weight, "weight of the mean KL per latent element")
      ->capture_default_str()
      ->check(kNonNegative);
  tr->add_option("--grad-weight", o.train.grad_weight, "weight of the image-gradient L1")
      ->capture_default_str()
      ->check(kNonNegative);
  tr->add_option("--gan-weight", o.train.gan_weight, "PatchGAN (least squares) weight, 0 = off")
      ->capture_default_str()
      ->check(kNonNegative);
  tr->add_option("--gan-start", o.train.gan_start, "step at which the discriminator starts")
      ->capture_default_str()
      ->check(kNonNegative);
  tr->add_option("--max-minutes", o.train.max_minutes,
                 "wall-clock budget; checkpoint and stop (0 = none)")
      ->check(kNonNegative);
  tr->add_option("--ckpt-every", o.train.ckpt_every, "checkpoint every N steps")
      ->capture_default_str()
      ->check(kPositive);
  tr->add_option("--val-every", o.train.val_every,
                 "validation PSNR/SSIM and recon grid every N steps")
      ->capture_default_str()
      ->check(kNonNegative);
  tr->add_flag("--resume", o.train.resume, "continue the run in --out exactly where it stopped");
  tr->add_option("--init", o.init,
                 "start from this autoencoder (its architecture and weights; the width flags are "
                 "ignored)");
  tr->add_flag("--decoder-only", o.train.decoder_only,
               "with --init: train only the decoder; the encoder and latent normalisation stay, "
               "so latent generators made for --init decode with the new file");
  tr->add_option("--latent-noise", o.train.latent_noise,
                 "decoder input noise: z + U(0, S) * N(0, 1) in normalised latent units, the "
                 "clean image as target (teaches the decoder to correct a generator's latent "
                 "errors; 0 = off)")
      ->capture_default_str()
      ->check(kNonNegative);
  tr->add_option("--gen-latents", o.gen_latents,
                 "with --decoder-only: a synthetic set made with synth --save-latents; the "
                 "PatchGAN also sees the decoder's images of these generator latents, so the "
                 "decoder learns to make them look real")
      ->check(CLI::ExistingDirectory);
  tr->add_option("--gen-weight", o.train.gen_weight,
                 "weight of the adversarial loss on the generator latents' decodes")
      ->capture_default_str()
      ->check(kNonNegative);
  bind(tr, o, g, run, run_ae_training, [](const nlohmann::json& j) {
    std::printf(
        "autoencoder trained to step %lld (%.1f img/s): validation PSNR %.2f dB, SSIM %.4f -> %s\n",
        (long long)j["step"].get<int64_t>(), j["images_per_second"].get<double>(),
        j["val_psnr"].get<double>(), j["val_ssim"].get<double>(),
        j["checkpoint"].get<std::string>().c_str());
  });
  static AERunOptions eo;  // one options struct per subcommand
  auto* en = ae->add_subcommand(
      "encode", "cache the latents of a prepared set (8 dihedral variants per image)");
  en->add_option("--ae", eo.ae, "autoencoder .safetensors")->required();
  en->add_option("--data", eo.data,
                 "prepared cache directory (latents_<hash>.safetensors is written there)")
      ->required();
  bind(en, eo, g, run, run_ae_encoding, [](const nlohmann::json& j) {
    std::printf("latents %s of %lld images (8 dihedral variants each) -> %s\n",
                j["shape"].dump().c_str(), (long long)j["images"].get<int64_t>(),
                j["latents"].get<std::string>().c_str());
  });
  static AERunOptions vo;
  auto* ev = ae->add_subcommand("eval", "reconstruction PSNR/SSIM on a split");
  ev->add_option("--ae", vo.ae, "autoencoder .safetensors")->required();
  ev->add_option("--data", vo.data, "prepared cache directory")->required();
  ev->add_option("--splits", vo.splits, "splits CSV");
  ev->add_option("--split", vo.split, "train | val | test")
      ->capture_default_str()
      ->check(CLI::IsMember({"train", "val", "test"}));
  ev->add_option("--fd", vo.fd_images,
                 "also the HAM-FD vs the test split of N images of --split, raw and "
                 "reconstructed (the autoencoder's share of a latent generator's FD)")
      ->check(CLI::Range(2, 1000000));
  ev->add_option("--features", vo.features,
                 "feature network for --fd (default: the shipped reference network)");
  bind(ev, vo, g, run, run_ae_evaluation, [](const nlohmann::json& j) {
    std::printf("%s: %lld %s images, PSNR %.2f dB, SSIM %.4f\n", vo.ae.c_str(),
                (long long)j["images"].get<int64_t>(), vo.split.c_str(), j["psnr"].get<double>(),
                j["ssim"].get<double>());
    if (j.contains("fd")) {
      const auto& f = j["fd"];
      std::printf(
          "FD vs %lld test images, %lld images: real %.3f [%.3f, %.3f], reconstructed %.3f "
          "[%.3f, %.3f]\n",
          (long long)f["test_images"].get<int64_t>(), (long long)f["images"].get<int64_t>(),
          f["real"].get<double>(), f["real_ci"][0].get<double>(), f["real_ci"][1].get<double>(),
          f["reconstructed"].get<double>(), f["reconstructed_ci"][0].get<double>(),
          f["reconstructed_ci"][1].get<double>());
    }
  });
}

}  // namespace lf::cli
