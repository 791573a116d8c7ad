// LoRA adapters for the generator: y = W x + (alpha / rank) * B (A x) on chosen Linear layers,
// A Kaiming-initialised, B zero, base weights frozen. Adapter files hold only the LoRA tensors
// (<module>.lora_down.weight [r,in], <module>.lora_up.weight [out,r], <module>.alpha) and the
// hash of the base checkpoint; they are applied at run time with a strength (several at once)
// or merged into a full checkpoint.
//
// Implementation: the frozen base weight W of each target is kept, and before a forward the
// Linear's weight member is set to W + sum_i s_i (alpha_i / r_i) B_i A_i. Mathematically the
// same as the side branch, exact when B = 0, and the registered parameter (what checkpoints
// save) stays the untouched base tensor. With the delta folded into the weight there is no
// separate activation to drop, so dropout on the LoRA path is rank dropout: each training step
// drops every rank component of every module with probability p and scales the kept ones by
// 1/(1-p) (kohya's rank_dropout); the mask depends only on (seed, step), so resume stays exact.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "lesionflow/status.h"
#include "models/mmdit.h"
#include "pch_torch.h"

namespace lf {

struct LoraSpec {
  // Target groups: attn (qkv, proj; single-stream lin1/lin2), mlp (mlp1, mlp2; single-stream
  // lin1/lin2), mod (adaLN modulation), io (input/output projections), text (text encoder
  // layers, combined with the groups above), or "re:<regex>" on module names.
  std::vector<std::string> targets{"attn", "mlp"};
  int rank = 16;
  double alpha = 16;
  std::map<std::string, int> rank_for;  // group -> rank override (e.g. mod=4)
  uint64_t seed = 0;
};

// Names of the Linear modules of `model` that the spec selects, with their group.
std::vector<std::pair<std::string, std::string>> lora_targets(MMDiT& model, const LoraSpec& spec);

class LoraAdapter {
 public:
  struct Module {
    std::string name;
    torch::Tensor down, up;  // A [r,in], B [out,r]
    double alpha = 0;
    int64_t rank() const { return down.size(0); }
    double scale() const { return alpha / static_cast<double>(rank()); }
  };
  // New adapter for `model` (A Kaiming-uniform, B zero).
  static Result<std::shared_ptr<LoraAdapter>> create(MMDiT& model, const LoraSpec& spec);
  // An adapter file for this base: refused (with the reason) if the base hash or any shape differs.
  static Result<std::shared_ptr<LoraAdapter>> load(const std::string& path, MMDiT& model,
                                                   const std::string& base_hash);
  Status save(const std::string& path, const std::string& base_hash, int64_t step,
              const std::string& extra_json = "{}") const;

  std::vector<torch::Tensor> parameters() const;
  int64_t num_parameters() const;
  const std::vector<Module>& modules() const { return modules_; }
  std::string hash;  // content hash of the file it was loaded from / last saved to

 private:
  std::vector<Module> modules_;
};

// Binds adapters to a model: remembers the base weights of every targeted Linear and sets
// weight = base + sum strength * scale * B A before a forward. Removing restores the base.
class LoraRuntime {
 public:
  explicit LoraRuntime(MMDiT& model) : model_(model) {}
  ~LoraRuntime() { remove(); }
  Status add(std::shared_ptr<LoraAdapter> a, double strength = 1.0);
  // With autograd when enabled (training), else a plain update. `step` >= 0 with grad mode on and
  // rank dropout set: that step's dropout mask; otherwise the full adapters.
  void apply(int64_t step = -1);
  void set_rank_dropout(double p, uint64_t seed) {
    dropout_ = p;
    dropout_seed_ = seed;
  }
  void remove();  // weights back to the base tensors
  // Freeze every base parameter (requires_grad false).
  void freeze_base();

 private:
  MMDiT& model_;
  std::vector<std::pair<std::shared_ptr<LoraAdapter>, double>> adapters_;
  std::map<std::string, torch::nn::Linear> linears_;
  std::map<std::string, torch::Tensor> base_;
  double dropout_ = 0;
  uint64_t dropout_seed_ = 0;
};

// Writes base + adapters (with strengths) as a new full generator checkpoint.
Status merge_lora(const std::string& base_path,
                  const std::vector<std::pair<std::string, double>>& adapters,
                  const std::string& out_path);

}  // namespace lf
