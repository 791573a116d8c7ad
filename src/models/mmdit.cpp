#include "models/mmdit.h"

#include <cmath>

#include "core/autocast.h"
#include "models/mmdit_blocks.h"

namespace lf {
namespace F = torch::nn::functional;
using torch::Tensor;
using namespace mmdit_detail;

MMDiTConfig MMDiTConfig::preset(const std::string& name) {
  MMDiTConfig c;
  if (name == "tiny") {
    c.image_size = 32;
    c.patch = 4;
    c.dim = 96;
    c.heads = 3;
    c.double_blocks = 2;
    c.single_blocks = 2;
    c.refine_channels = 16;
    c.text_dim = 96;
    c.text_layers = 2;
    c.text_heads = 3;
    c.max_text_len = 48;
  } else if (name == "small") {
    c.prediction = Prediction::kX;
  } else if (name == "medium") {  // small 1.5x wider (2.25x the image stream's compute)
    c.dim = 384;
    c.heads = 6;
    c.refine_channels = 48;
    c.prediction = Prediction::kX;
  } else if (name == "base") {
    c.patch = 4;
    c.dim = 512;
    c.heads = 8;
    c.double_blocks = 8;
    c.single_blocks = 8;
    c.refine_channels = 64;
    c.text_dim = 512;
    c.text_layers = 6;
    c.text_heads = 8;
  }
  return c;
}

nlohmann::json MMDiTConfig::to_json() const {
  return {{"image_size", image_size},
          {"channels", channels},
          {"patch", patch},
          {"dim", dim},
          {"heads", heads},
          {"double_blocks", double_blocks},
          {"single_blocks", single_blocks},
          {"mlp_ratio", mlp_ratio},
          {"refine_channels", refine_channels},
          {"vocab_size", vocab_size},
          {"max_text_len", max_text_len},
          {"text_dim", text_dim},
          {"text_layers", text_layers},
          {"text_heads", text_heads},
          {"rope_theta", rope_theta},
          {"prediction", prediction}};
}

MMDiTConfig MMDiTConfig::from_json(const nlohmann::json& j) {
  MMDiTConfig c;
#define LF_GET(k) c.k = j.value(#k, c.k)
  LF_GET(image_size);
  LF_GET(channels);
  LF_GET(patch);
  LF_GET(dim);
  LF_GET(heads);
  LF_GET(double_blocks);
  LF_GET(single_blocks);
  LF_GET(mlp_ratio);
  LF_GET(refine_channels);
  LF_GET(vocab_size);
  LF_GET(max_text_len);
  LF_GET(text_dim);
  LF_GET(text_layers);
  LF_GET(text_heads);
  LF_GET(rope_theta);
  LF_GET(prediction);
#undef LF_GET
  return c;
}

// ---------------------------------------------------------------- helpers
Tensor timestep_embedding(const Tensor& t, int dim) {
  // t in [0,1] scaled to [0,1000] as in DiT/Flux.
  int half = dim / 2;
  auto freqs = torch::exp(-std::log(10000.0) * torch::arange(half, t.options()) / half);
  auto args = (t * 1000.0).unsqueeze(1) * freqs.unsqueeze(0);  // [B,half]
  return torch::cat({torch::cos(args), torch::sin(args)}, 1);
}

std::pair<Tensor, Tensor> rope_2d(int grid, int head_dim, double theta) {
  // First half of each head rotates with the row index, second half with the column.
  int quarter = head_dim / 4;  // pairs per axis
  auto freqs = torch::pow(theta, -torch::arange(quarter, torch::kFloat64) / quarter);  // [q]
  auto idx = torch::arange(grid, torch::kFloat64);
  auto rows = idx.repeat_interleave(grid), cols = idx.repeat({grid});                // [N]
  auto ang = torch::cat({rows.unsqueeze(1) * freqs, cols.unsqueeze(1) * freqs}, 1);  // [N, hd/2]
  return {torch::cos(ang).to(torch::kFloat32), torch::sin(ang).to(torch::kFloat32)};
}

Tensor apply_rope(const Tensor& x, const Tensor& cos, const Tensor& sin) {
  // x: [B,H,N,hd] -> pairs [B,H,N,hd/2,2]
  auto xp = x.reshape({x.size(0), x.size(1), x.size(2), x.size(3) / 2, 2});
  auto x0 = xp.select(-1, 0), x1 = xp.select(-1, 1);
  auto o0 = x0 * cos - x1 * sin, o1 = x0 * sin + x1 * cos;
  return torch::stack({o0, o1}, -1).reshape(x.sizes());
}

Tensor patchify(const Tensor& x, int p) {
  auto B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  // [B,C,H/p,p,W/p,p] -> [B,H/p,W/p,p,p,C] -> [B,N,p*p*C]
  return x.reshape({B, C, H / p, p, W / p, p})
      .permute({0, 2, 4, 3, 5, 1})
      .reshape({B, (H / p) * (W / p), p * p * C});
}

Tensor unpatchify(const Tensor& x, int p, int c, int h) {
  auto B = x.size(0);
  int g = h / p;
  return x.reshape({B, g, g, p, p, c}).permute({0, 5, 1, 3, 2, 4}).reshape({B, c, h, h});
}

// attention_bias() and attention() live in attention.cpp.

// ---------------------------------------------------------------- text encoder
TextEncoderImpl::TextEncoderImpl(const MMDiTConfig& c) : c_(c) {
  tok_ = register_module("tok", torch::nn::Embedding(c.vocab_size, c.text_dim));
  torch::nn::init::normal_(tok_->weight, 0.0, 0.02);
  pos_ = register_parameter("pos", torch::randn({1, c.max_text_len, c.text_dim}) * 0.02);
  layers_ = register_module("layers", torch::nn::ModuleList());
  for (int i = 0; i < c.text_layers; ++i) layers_->push_back(TextLayer(c.text_dim, c.text_heads));
  norm_ = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.text_dim})));
}

std::pair<Tensor, Tensor> TextEncoderImpl::forward(const Tensor& ids, const Tensor& mask) {
  auto x = tok_(ids) + pos_.narrow(1, 0, ids.size(1));  // [B,T,Dt]
  auto bias = attention_bias(mask);
  for (auto& l : *layers_) x = l->as<TextLayer>()->forward(x, bias);
  x = norm_(x);
  auto m = mask.unsqueeze(-1).to(x.dtype());
  auto pooled = (x * m).sum(1) / m.sum(1).clamp_min(1.0);  // masked mean [B,Dt]
  return {x, pooled};
}

// ---------------------------------------------------------------- MMDiT
MMDiTImpl::MMDiTImpl(const MMDiTConfig& c) : c_(c) {
  TORCH_CHECK(c.image_size % c.patch == 0, "image_size must be a multiple of patch");
  TORCH_CHECK(c.dim % c.heads == 0 && (c.dim / c.heads) % 4 == 0,
              "head_dim must be a multiple of 4");
  const int D = c.dim, hidden = static_cast<int>(c.mlp_ratio * D),
            pd = c.patch * c.patch * c.channels;
  text_ = register_module("text", TextEncoder(c));
  img_in_ = register_module("img_in", linear(pd, D));
  txt_in_ = register_module("txt_in", linear(c.text_dim, D));
  time_in_ = register_module(
      "time_in", torch::nn::Sequential(linear(256, D), torch::nn::SiLU(), linear(D, D)));
  vec_in_ = register_module(
      "vec_in", torch::nn::Sequential(linear(c.text_dim, D), torch::nn::SiLU(), linear(D, D)));
  double_ = register_module("double_blocks", torch::nn::ModuleList());
  for (int i = 0; i < c.double_blocks; ++i) double_->push_back(DoubleBlock(D, c.heads, hidden));
  single_ = register_module("single_blocks", torch::nn::ModuleList());
  for (int i = 0; i < c.single_blocks; ++i) single_->push_back(SingleBlock(D, c.heads, hidden));
  final_mod_ = register_module("final_mod", linear(D, 2 * D, true));
  final_out_ = register_module("final_out", linear(D, pd, true));
  if (c.refine_channels > 0) {
    int rc = c.refine_channels;
    auto conv = [](int i, int o) {
      return torch::nn::Conv2d(torch::nn::Conv2dOptions(i, o, 3).padding(1));
    };
    refine_ = register_module(
        "refine", torch::nn::Sequential(conv(2 * c.channels, rc), torch::nn::SiLU(), conv(rc, rc),
                                        torch::nn::SiLU(), conv(rc, c.channels)));
    auto last = refine_->ptr(4)->as<torch::nn::Conv2d>();
    torch::nn::init::zeros_(last->weight);
    torch::nn::init::zeros_(last->bias);
  }
  // Joint RoPE tables: text tokens first with identity rotation, then the image grid.
  int hd = D / c.heads, grid = c.image_size / c.patch;
  auto [ic, is] = rope_2d(grid, hd, c.rope_theta);
  rope_cos_ =
      register_buffer("rope_cos", torch::cat({torch::ones({c.max_text_len, hd / 2}), ic}, 0));
  rope_sin_ =
      register_buffer("rope_sin", torch::cat({torch::zeros({c.max_text_len, hd / 2}), is}, 0));
}

int64_t MMDiTImpl::num_parameters() const {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  return n;
}

Tensor MMDiTImpl::forward(const Tensor& x, const Tensor& t, const Tensor& ids, const Tensor& mask) {
  return forward(x, t, encode_text(ids, mask));
}

TextCond MMDiTImpl::encode_text(const Tensor& ids, const Tensor& mask) {
  TORCH_CHECK(ids.size(1) <= c_.max_text_len, "text longer than max_text_len");
  auto [txt_tokens, pooled] = text_(ids, mask);
  return {lin(txt_in_, txt_tokens), vec_in_->forward(pooled), mask};
}

Tensor MMDiTImpl::forward(const Tensor& x, const Tensor& t, const TextCond& text) {
  const int64_t B = x.size(0), T = text.tokens.size(1);
  // Text rows of the RoPE tables are the identity; take T of them, then the image grid.
  const int64_t Tm = c_.max_text_len, N = rope_cos_.size(0) - Tm;
  auto cos = torch::cat({rope_cos_.narrow(0, 0, T), rope_cos_.narrow(0, Tm, N)}, 0);
  auto sin = torch::cat({rope_sin_.narrow(0, 0, T), rope_sin_.narrow(0, Tm, N)}, 0);
  auto vec = time_in_->forward(timestep_embedding(t, 256)) + text.vec;  // [B,D]
  auto img = lin(img_in_, patchify(x, c_.patch));                       // [B,N,D]
  auto txt = text.tokens;                                               // [B,T,D]
  auto key_bias = attention_bias(
      torch::cat({text.mask, torch::ones({B, img.size(1)}, text.mask.options())}, 1));
  for (auto& m : *double_)
    std::tie(img, txt) = m->as<DoubleBlock>()->forward(img, txt, vec, cos, sin, key_bias);
  auto h = torch::cat({txt, img}, 1);
  for (auto& m : *single_) h = m->as<SingleBlock>()->forward(h, vec, cos, sin, key_bias);
  img = h.narrow(1, T, h.size(1) - T);
  auto fm = lin(final_mod_, torch::silu(vec)).unsqueeze(1).chunk(2, -1);
  auto out = unpatchify(lin(final_out_, ln_modulate(img, fm[0], fm[1])), c_.patch, c_.channels,
                        c_.image_size);
  if (!refine_.is_empty()) {
    // The convolutional refinement head: bf16 convolutions (CPU autocast) under Precision::kBF16.
    ScopedBf16Autocast autocast(compute_precision() == Precision::kBF16 &&
                                out.scalar_type() == torch::kFloat32);
    out = out + refine_->forward(torch::cat({out, x}, 1)).to(out.scalar_type());
  }
  return out;
}

}  // namespace lf
