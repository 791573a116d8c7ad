// Pieces shared by the training loops (generator, LoRA fine-tune, classifiers).
#pragma once
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/shard_threads.h"
#include "lesionflow/status.h"
#include "pch_torch.h"

namespace lf {

// Optimizer state + step, atomically (magic "LFSTATE1"); restores into a built optimizer.
Status save_state(const std::string& path, int64_t step, torch::optim::Optimizer& opt);
Result<int64_t> load_state(const std::string& path, torch::optim::Optimizer& opt);
void set_lr(torch::optim::Optimizer& opt, double lr);  // AdamW param groups

// The optimizer side of a training step, free of host synchronisation so that it runs on any
// device (the device test runs it on the meta device, where reading a value is an error):
// clips the global L2 norm of the gradients to max_norm with the arithmetic of
// torch::nn::utils::clip_grad_norm_ and returns the norm before clipping as a 0-dim tensor on
// the gradients' device (undefined when no parameter has a gradient).
torch::Tensor clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm);
// optimizer.zero_grad() + loss.backward() without zero-filling: the gradients are dropped and the
// backward writes them fresh (a zero fill and an add per parameter less; 4% of a generator step).
// A parameter that had a gradient and gets none from this loss gets zeros, as zero_grad gave it.
void backward_with_fresh_grads(const torch::Tensor& loss, const std::vector<torch::Tensor>& params);
// The per-sample losses of a batch of `rows` and, as backward_with_fresh_grads(their mean), the
// gradients of their mean, with the rows split over the shard threads: shard s of n computes
// per_sample(lo, hi) ([hi - lo], rows lo = rows * s / n up to hi) and back-propagates its sum
// divided by rows (the mean's gradient, bit for bit); the shards' gradients add up in the
// parameters (AccumulateGrad locks; two shards give the same bits in either order). Returns the
// per-sample losses of all rows in order, detached. With one shard (or fewer rows than shards)
// per_sample(0, rows) runs on the caller and its mean back-propagates exactly as before.
torch::Tensor sharded_mean_backward(
    ShardThreads& shards, int64_t rows,
    const std::function<torch::Tensor(int64_t lo, int64_t hi)>& per_sample,
    const std::vector<torch::Tensor>& params);
// ema = decay * ema + (1 - decay) * param, in place, without autograd.
void ema_update(std::vector<torch::Tensor>& ema, const std::vector<torch::Tensor>& params,
                double decay);
// clip_grad_norm(params, max_norm), opt.step() and, when ema is given, ema_update(*ema, params,
// ema_decay), fused: one parallel pass over memory instead of ~10 ATen ops per parameter
// (issue 20; docs/precision.md). The optimizer state stays libtorch's (the same tensors, keys
// and step counts), so a checkpoint or resume cannot tell which path ran. Fused when opt has one
// param group holding exactly `params` (amsgrad off) and every tensor is a contiguous float32
// CPU tensor; otherwise the three calls above run. Returns the norm before clipping, as
// clip_grad_norm does.
torch::Tensor clip_adamw_ema_step(torch::optim::AdamW& opt,
                                  const std::vector<torch::Tensor>& params, double max_norm,
                                  std::vector<torch::Tensor>* ema = nullptr, double ema_decay = 0);
// The device of a module's parameters (CPU for a module without any).
torch::Device module_device(const torch::nn::Module& m);

// One checkpoint made of several files (weights, EMA, optimizer state), replaced as a set: a
// kill at any moment leaves the old set or the new one, never a mix (a mix resumes the new
// weights with the old step and optimizer: silently not the uninterrupted run). Each writer
// writes its file to the path it is given (the final name + ".next"); then a journal listing the
// finals is written, the .next files are renamed over them, and the journal is removed.
// recover_checkpoint(), called before a resume reads the files, finishes renames a kill
// interrupted (journal present) or removes the .next files of a set never completed.
struct CheckpointFile {
  std::string path;
  std::function<Status(const std::string& path)> write;
};
Status commit_checkpoint(const std::string& journal, const std::vector<CheckpointFile>& files);
Status recover_checkpoint(const std::string& journal, const std::vector<std::string>& paths);
// Removes "<path>.tmp.*" and "<path>.next.tmp.*" files that a kill left in the middle of an
// atomic write (write_file_atomic's temporaries). recover_checkpoint() does it for its paths.
void remove_stale_temps(const std::vector<std::string>& paths);

// Linear warm-up over `warmup` steps, then cosine from lr down to lr * min_frac at `steps`.
double warmup_cosine_lr(double lr, int64_t warmup, int64_t steps, double min_frac, int64_t step);

// Indices of the B images of a step: consecutive slices of per-epoch seeded permutations,
// so the data order depends only on (seed, step) and a resumed run sees the same batches.
class BatchPlan {
 public:
  BatchPlan(int64_t n, int B, uint64_t seed) : n_(n), B_(B), seed_(seed) {}
  std::vector<int64_t> at(int64_t step);

 private:
  int64_t n_;
  int B_;
  uint64_t seed_;
  int64_t epoch_ = -1;
  std::vector<int64_t> perm_;
};

// Random element of the dihedral group (90-degree rotations, flips) on x: [C,H,W].
torch::Tensor augment_dihedral(torch::Tensor x, std::mt19937_64& rng);
// Element k (0..7) of the dihedral group on the last two dims: k % 4 quarter turns, then a
// horizontal flip when k >= 4. dihedral(x, 0) is x.
torch::Tensor dihedral(const torch::Tensor& x, int k);

void append_line(const std::string& path, const std::string& line);
// Keep only metrics lines with "step" <= step (resume rewinds the log to the checkpoint).
void truncate_metrics(const std::string& path, int64_t step);

}  // namespace lf
