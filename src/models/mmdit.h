// Flux-style rectified-flow transformer (MMDiT) with its own small text encoder.
//   text ids -> TextEncoder -> (tokens [B,T,Dt], pooled [B,Dt])
//   image -> patchify -> double-stream blocks (separate text/image weights, joint attention)
//         -> single-stream blocks (one sequence) -> adaLN final layer -> unpatchify
//         -> optional zero-initialised conv refinement head (removes patch-grid artefacts)
// Modulation vector = MLP(sinusoidal(t)) + MLP(pooled text); adaLN-Zero in every block;
// 2D RoPE on image tokens (text tokens get the identity rotation); QK RMS-norm.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "flow/flow.h"
#include "pch_torch.h"

namespace lf {

struct MMDiTConfig {
  int image_size = 64;       // input side in pixels
  int channels = 3;          // image channels
  int patch = 8;             // pixel patch side (64/8 -> 64 tokens)
  int dim = 256;             // transformer width
  int heads = 4;             // attention heads (dim / heads must be divisible by 4 for 2D RoPE)
  int double_blocks = 4;     // double-stream (text + image) blocks
  int single_blocks = 4;     // single-stream blocks
  double mlp_ratio = 4.0;    // MLP hidden = mlp_ratio * dim
  int refine_channels = 32;  // conv refinement head width (0 = none)
  // text encoder
  int vocab_size = 512;                           // tokenizer vocabulary (set from the tokenizer)
  int max_text_len = 64;                          // tokens incl. BOS
  int text_dim = 256;                             // text encoder width
  int text_layers = 4;                            // text encoder layers
  int text_heads = 4;                             // text encoder heads
  double rope_theta = 100.0;                      // RoPE base for 2D positions (small grids)
  Prediction prediction = Prediction::kVelocity;  // velocity | x (network predicts the clean image)

  static MMDiTConfig preset(const std::string& name);  // tiny | small | medium | base
  nlohmann::json to_json() const;
  static MMDiTConfig from_json(const nlohmann::json& j);
  int tokens() const { return (image_size / patch) * (image_size / patch); }
};

// Pre-LN transformer encoder over token ids with a padding mask.
class TextEncoderImpl : public torch::nn::Module {
 public:
  explicit TextEncoderImpl(const MMDiTConfig& c);
  // ids: [B,T] int64, mask: [B,T] bool -> tokens [B,T,Dt], pooled [B,Dt]
  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& ids,
                                                  const torch::Tensor& mask);

 private:
  MMDiTConfig c_;
  torch::nn::Embedding tok_{nullptr};
  torch::Tensor pos_;
  torch::nn::ModuleList layers_;
  torch::nn::LayerNorm norm_{nullptr};
};
TORCH_MODULE(TextEncoder);

// The text side of the conditioning: depends on the caption only, so a sampler computes it once
// per prompt batch instead of once per step.
struct TextCond {
  torch::Tensor tokens;               // [B,T,D] text tokens after the input projection
  torch::Tensor vec;                  // [B,D] pooled-text part of the modulation vector
  torch::Tensor mask;                 // [B,T] bool, true = real token
  TextCond expand(int64_t B) const {  // a batch-1 condition repeated B times (views)
    return {tokens.expand({B, -1, -1}), vec.expand({B, -1}), mask.expand({B, -1})};
  }
};

class MMDiTImpl : public torch::nn::Module {
 public:
  explicit MMDiTImpl(const MMDiTConfig& c);
  // x: [B,C,H,W], t: [B] in [0,1], ids/mask: [B,T] -> network output [B,C,H,W]
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& ids,
                        const torch::Tensor& mask);
  TextCond encode_text(const torch::Tensor& ids, const torch::Tensor& mask);
  // Same as forward() with the text side precomputed by encode_text().
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& t, const TextCond& text);
  const MMDiTConfig& config() const { return c_; }
  int64_t num_parameters() const;

 private:
  MMDiTConfig c_;
  TextEncoder text_{nullptr};
  torch::nn::Linear img_in_{nullptr}, txt_in_{nullptr};
  torch::nn::Sequential time_in_{nullptr}, vec_in_{nullptr};
  torch::nn::ModuleList double_, single_;
  torch::nn::Linear final_mod_{nullptr}, final_out_{nullptr};
  torch::nn::Sequential refine_{nullptr};
  torch::Tensor rope_cos_, rope_sin_;  // buffers [N_img, head_dim/2]
};
TORCH_MODULE(MMDiT);

// Helpers exposed for tests.
torch::Tensor timestep_embedding(const torch::Tensor& t, int dim);  // [B] -> [B,dim]
// 2D RoPE tables for a gs x gs grid: cos/sin [gs*gs, head_dim/2].
std::pair<torch::Tensor, torch::Tensor> rope_2d(int grid, int head_dim, double theta);
// x: [B,H,N,hd]; rotates consecutive pairs by the angles in cos/sin [N,hd/2].
torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos,
                         const torch::Tensor& sin);
// Per-head RMS norm of q or k (weight wa on the rows of xa, wb on those of xb), then RoPE with
// cos/sin [La+Lb, hd/2], returned as one [B,H,La+Lb,hd] tensor: the same as
// apply_rope(cat({rms_norm(xa, wa), rms_norm(xb, wb)}, 2), cos, sin), fused into one pass each
// way on CPU (an explicit backward). xa, xb: [B,H,L,hd] views with a unit last stride, float32 or
// bfloat16 (a bf16 GEMM's output, read without a cast pass); the result is float32, or bfloat16
// for bf16 inputs under Precision::kBF16 (where the attention runs in bf16).
torch::Tensor qk_norm_rope(const torch::Tensor& xa, const torch::Tensor& wa,
                           const torch::Tensor& xb, const torch::Tensor& wb,
                           const torch::Tensor& cos, const torch::Tensor& sin);
// q, k, v [B,H,La+Lb,hd] of the joint attention from the two streams' qkv GEMM outputs qkv_a
// [B,La,3D] and qkv_b [B,Lb,3D] (Lb may be 0): q and k through qk_norm_rope() with each stream's
// norm weights, v the two streams' v rows. On CPU one function each way: its backward writes
// the gradients of qkv_a and qkv_b directly.
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> qkv_heads(
    const torch::Tensor& qkv_a, const torch::Tensor& wq_a, const torch::Tensor& wk_a,
    const torch::Tensor& qkv_b, const torch::Tensor& wq_b, const torch::Tensor& wk_b,
    const torch::Tensor& cos, const torch::Tensor& sin, int heads);
// LayerNorm without affine (eps 1e-6) then adaLN modulation: LN(x) * (1 + scale) + shift, with
// x [B,L,D] float32 and shift, scale [B,1,D]. Under Precision::kBF16 on CPU one fused pass each
// way that returns bfloat16 (the input of the next bf16 GEMM); otherwise the composed ops in x's
// type.
torch::Tensor ln_modulate(const torch::Tensor& x, const torch::Tensor& shift,
                          const torch::Tensor& scale);
// The gated residual of adaLN-Zero: x + gate * (y + y2), with x [B,L,D] float32, gate [B,1,D] and
// y (and y2, which may be undefined) the block's GEMM output(s) [B,L,D]. Under Precision::kBF16
// on CPU, with y, y2 bfloat16, one fused pass each way (no cast of y to float32, and y's gradient
// comes back in bf16 for the GEMM's backward); otherwise the composed ops. The result is float32.
torch::Tensor gated_residual(const torch::Tensor& x, const torch::Tensor& gate,
                             const torch::Tensor& y, const torch::Tensor& y2 = {});
// The joint attention's output o [B,H,L,hd] as the two streams' inputs to their projections:
// rows [0,T) as [B,T,H*hd] and rows [T,L) as [B,L-T,H*hd], both contiguous (on CPU one copy each
// way; otherwise views of the merged heads).
std::pair<torch::Tensor, torch::Tensor> merge_heads_split(const torch::Tensor& o, int64_t T);
// torch::gelu(x, "tanh"); on CPU float32 one vectorised pass that keeps dy/dx for the backward.
torch::Tensor gelu_tanh(const torch::Tensor& x);
torch::Tensor patchify(const torch::Tensor& x, int p);                  // [B,C,H,W] -> [B,N,p*p*C]
torch::Tensor unpatchify(const torch::Tensor& x, int p, int c, int h);  // inverse
// Additive attention bias from a key mask [B,N] bool (true = attend): [B,1,1,N] with 0 / -1e9,
// or an undefined tensor when every key is attended (no masking work at all).
torch::Tensor attention_bias(const torch::Tensor& key_mask);
// softmax(q k^T / sqrt(hd) + bias) v with q,k,v: [B,H,N,hd]; scale and bias fused into the GEMM.
// Under Precision::kBF16 on CPU: bf16 GEMMs, fp32 softmax, and a bf16 result.
torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const torch::Tensor& key_bias);

}  // namespace lf
