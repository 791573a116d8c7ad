#include "models/autoencoder.h"

#include "lesionflow/io.h"
#include "models/checkpoint.h"

namespace lf {
namespace nn = torch::nn;
namespace F = torch::nn::functional;
using torch::Tensor;

nlohmann::json AEConfig::to_json() const {
  return {{"image_size", image_size},           {"channels", channels},
          {"latent_channels", latent_channels}, {"widths", widths},
          {"res_blocks", res_blocks},           {"latent_shift", latent_shift},
          {"latent_scale", latent_scale}};
}

Result<AEConfig> AEConfig::from_json(const nlohmann::json& j) {
  AEConfig c;
  try {
    c.image_size = j.value("image_size", c.image_size);
    c.channels = j.value("channels", c.channels);
    c.latent_channels = j.value("latent_channels", c.latent_channels);
    c.widths = j.value("widths", c.widths);
    c.res_blocks = j.value("res_blocks", c.res_blocks);
    c.latent_shift = j.value("latent_shift", c.latent_shift);
    c.latent_scale = j.value("latent_scale", c.latent_scale);
  } catch (const std::exception& e) {
    return Status::error(std::string("autoencoder config: ") + e.what());
  }
  if (c.widths.size() < 2 || c.widths.size() > 5)
    return Status::error("autoencoder config: 2..5 widths (f = 2..16)");
  if (c.image_size % c.factor() != 0)
    return Status::error("autoencoder config: image size " + std::to_string(c.image_size) +
                         " is not divisible by the downsampling factor " +
                         std::to_string(c.factor()));
  if (c.latent_channels < 1 || c.latent_channels > 64)
    return Status::error("autoencoder config: latent channels 1..64");
  return c;
}

namespace {
int groups_for(int c) { return c % 8 == 0 ? 8 : 1; }

class ResBlockImpl : public nn::Module {
 public:
  ResBlockImpl(int cin, int cout) {
    n1_ = register_module("norm1", nn::GroupNorm(groups_for(cin), cin));
    c1_ = register_module("conv1", nn::Conv2d(nn::Conv2dOptions(cin, cout, 3).padding(1)));
    n2_ = register_module("norm2", nn::GroupNorm(groups_for(cout), cout));
    c2_ = register_module("conv2", nn::Conv2d(nn::Conv2dOptions(cout, cout, 3).padding(1)));
    if (cin != cout) skip_ = register_module("skip", nn::Conv2d(nn::Conv2dOptions(cin, cout, 1)));
  }
  Tensor forward(const Tensor& x) {
    auto h = c1_->forward(F::silu(n1_->forward(x)));
    h = c2_->forward(F::silu(n2_->forward(h)));
    return (skip_ ? skip_->forward(x) : x) + h;
  }

 private:
  nn::GroupNorm n1_{nullptr}, n2_{nullptr};
  nn::Conv2d c1_{nullptr}, c2_{nullptr}, skip_{nullptr};
};
TORCH_MODULE(ResBlock);

class UpsampleImpl : public nn::Module {
 public:
  UpsampleImpl(int cin, int cout) {
    conv_ = register_module("conv", nn::Conv2d(nn::Conv2dOptions(cin, cout, 3).padding(1)));
  }
  Tensor forward(const Tensor& x) {
    return conv_->forward(F::interpolate(x, F::InterpolateFuncOptions()
                                                .scale_factor(std::vector<double>{2.0, 2.0})
                                                .mode(torch::kNearest)));
  }

 private:
  nn::Conv2d conv_{nullptr};
};
TORCH_MODULE(Upsample);

class OutHeadImpl : public nn::Module {  // GroupNorm -> SiLU -> conv 3x3
 public:
  OutHeadImpl(int cin, int cout) {
    n_ = register_module("norm", nn::GroupNorm(groups_for(cin), cin));
    c_ = register_module("conv", nn::Conv2d(nn::Conv2dOptions(cin, cout, 3).padding(1)));
  }
  Tensor forward(const Tensor& x) { return c_->forward(F::silu(n_->forward(x))); }

 private:
  nn::GroupNorm n_{nullptr};
  nn::Conv2d c_{nullptr};
};
TORCH_MODULE(OutHead);
}  // namespace

AutoencoderImpl::AutoencoderImpl(const AEConfig& c) : c_(c) {
  const auto& w = c.widths;
  const int L = static_cast<int>(w.size());
  enc_ = nn::Sequential();
  enc_->push_back("conv_in", nn::Conv2d(nn::Conv2dOptions(c.channels, w[0], 3).padding(1)));
  for (int l = 0; l + 1 < L; ++l) {
    for (int r = 0; r < c.res_blocks; ++r)
      enc_->push_back("res" + std::to_string(l) + "_" + std::to_string(r), ResBlock(w[l], w[l]));
    enc_->push_back("down" + std::to_string(l),
                    nn::Conv2d(nn::Conv2dOptions(w[l], w[l + 1], 4).stride(2).padding(1)));
  }
  enc_->push_back("mid", ResBlock(w[L - 1], w[L - 1]));
  enc_->push_back("out", OutHead(w[L - 1], 2 * c.latent_channels));
  dec_ = nn::Sequential();
  dec_->push_back("conv_in",
                  nn::Conv2d(nn::Conv2dOptions(c.latent_channels, w[L - 1], 3).padding(1)));
  dec_->push_back("mid", ResBlock(w[L - 1], w[L - 1]));
  for (int l = L - 2; l >= 0; --l) {
    for (int r = 0; r < c.res_blocks; ++r)
      dec_->push_back("res" + std::to_string(l) + "_" + std::to_string(r),
                      ResBlock(w[l + 1], w[l + 1]));
    dec_->push_back("up" + std::to_string(l), Upsample(w[l + 1], w[l]));
  }
  dec_->push_back("res_out", ResBlock(w[0], w[0]));
  dec_->push_back("out", OutHead(w[0], c.channels));
  register_module("encoder", enc_);
  register_module("decoder", dec_);
}

std::pair<Tensor, Tensor> AutoencoderImpl::encode_posterior(const Tensor& x) {
  auto h = enc_->forward(x);  // [B,2C,s,s]
  auto parts = h.chunk(2, 1);
  return {parts[0], parts[1].clamp(-30.0, 20.0)};
}

Tensor AutoencoderImpl::decode_raw(const Tensor& z) { return dec_->forward(z); }

Tensor AutoencoderImpl::encode(const Tensor& x) {
  return (encode_posterior(x).first - c_.latent_shift) * c_.latent_scale;
}

Tensor AutoencoderImpl::decode(const Tensor& z) {
  return decode_raw(z / c_.latent_scale + c_.latent_shift).clamp(-1, 1);
}

PatchDiscriminatorImpl::PatchDiscriminatorImpl(int channels, int width) {
  net_ = register_module(
      "net", nn::Sequential(nn::Conv2d(nn::Conv2dOptions(channels, width, 4).stride(2).padding(1)),
                            nn::LeakyReLU(nn::LeakyReLUOptions().negative_slope(0.2)),
                            nn::Conv2d(nn::Conv2dOptions(width, 2 * width, 4).stride(2).padding(1)),
                            nn::GroupNorm(8, 2 * width),
                            nn::LeakyReLU(nn::LeakyReLUOptions().negative_slope(0.2)),
                            nn::Conv2d(nn::Conv2dOptions(2 * width, 4 * width, 3).padding(1)),
                            nn::GroupNorm(8, 4 * width),
                            nn::LeakyReLU(nn::LeakyReLUOptions().negative_slope(0.2)),
                            nn::Conv2d(nn::Conv2dOptions(4 * width, 1, 3).padding(1))));
}

Tensor PatchDiscriminatorImpl::forward(const Tensor& x) { return net_->forward(x); }

Status save_autoencoder(const std::string& path, Autoencoder& ae, int64_t step,
                        const std::map<std::string, std::string>& extra) {
  std::map<std::string, std::string> md = {{"format", "lesionflow.ae.v1"},
                                           {"config", ae->config().to_json().dump()},
                                           {"step", std::to_string(step)}};
  for (const auto& [k, v] : extra) md[k] = v;
  return save_module(path, *ae, md);
}

Result<LoadedAutoencoder> load_autoencoder(const std::string& path) {
  LF_ASSIGN_OR_RETURN(std::string bytes, read_file(path));
  LF_ASSIGN_OR_RETURN(SafeTensors st, parse_safetensors(bytes, path));
  if (st.metadata["format"] != "lesionflow.ae.v1")
    return Status::error(path + ": not a lesionflow autoencoder (format '" + st.metadata["format"] +
                         "'; make one with 'lesionflow ae train')");
  auto j = nlohmann::json::parse(st.metadata["config"], nullptr, false);
  if (j.is_discarded()) return Status::error(path + ": bad autoencoder config metadata");
  auto cfg = AEConfig::from_json(j);
  if (!cfg.ok()) return cfg.status().with_context(path);
  LoadedAutoencoder out;
  out.model = Autoencoder(*cfg);
  LF_RETURN_IF_ERROR(load_module_tensors(st, *out.model, path));
  out.model->eval();
  // Tensors in any float dtype (fp16/bf16 shipped files) load into the fp32 module.
  out.hash = hash_bytes(bytes);
  out.latent_hash = st.metadata.count("latent_hash") ? st.metadata["latent_hash"] : out.hash;
  out.path = path;
  out.metadata = st.metadata;
  return out;
}

double psnr(const Tensor& a, const Tensor& b) {
  auto mse =
      ((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2).pow(2).mean({1, 2, 3}).clamp_min(1e-10);  // [B]
  return (-10.0 * torch::log10(mse)).mean().item<double>();
}

double ssim(const Tensor& a, const Tensor& b) {
  torch::NoGradGuard ng;
  const int C = a.size(1), K = 11;
  auto g = torch::exp(-(torch::arange(K, torch::kFloat32) - K / 2).pow(2) / (2 * 1.5 * 1.5));
  g = g / g.sum();
  auto win = (g.unsqueeze(1) * g.unsqueeze(0)).expand({C, 1, K, K}).contiguous();
  auto x = (a.clamp(-1, 1) + 1) / 2, y = (b.clamp(-1, 1) + 1) / 2;
  auto filt = [&](const Tensor& t) { return F::conv2d(t, win, F::Conv2dFuncOptions().groups(C)); };
  auto mx = filt(x), my = filt(y);
  auto sxx = filt(x * x) - mx * mx, syy = filt(y * y) - my * my, sxy = filt(x * y) - mx * my;
  const double c1 = 0.01 * 0.01, c2 = 0.03 * 0.03;
  auto s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2));
  return s.mean().item<double>();
}

}  // namespace lf
