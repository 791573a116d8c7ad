// Data-parallel training on torch c10d (Gloo): the process group, the collectives the training
// loops need, and how a run finds its rank (torchrun's environment or explicit flags).
//
// Every rank holds the whole model and computes the same global batch's indices from (seed,
// step); it takes its own contiguous shard of the batch rows. After the backward the gradients
// are all-reduced (mean) in flat buckets, so every rank applies the same clipped AdamW step and
// keeps the same EMA; only rank 0 writes checkpoints, samples, metrics and progress.
#pragma once
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "lesionflow/status.h"
#include "pch_torch.h"

namespace lf {

struct DistOptions {
  // "" or env:// = torchrun's MASTER_ADDR / MASTER_PORT; tcp://HOST:PORT (rank 0 listens there);
  // file://PATH (a file on a filesystem every rank sees; removed when the last rank is done).
  std::string init;
  int rank = -1, world_size = -1;  // -1: from RANK / WORLD_SIZE
  double timeout_seconds = 900;    // a collective that waits longer fails (a rank died or hangs)
};

// Fills what the flags left open from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR,
// MASTER_PORT); a world of 1 (no flags, no environment) means no process group.
Result<DistOptions> resolve_dist_options(DistOptions flags);
bool dist_requested(const DistOptions& resolved);  // world_size > 1

class ProcessGroupHolder;

class Dist {
 public:
  // Rendezvous of all ranks (waits up to the timeout for the others); an error names the address.
  static Result<std::shared_ptr<Dist>> connect(const DistOptions& o);
  ~Dist();

  int rank() const { return rank_; }
  int world() const { return world_; }
  bool is_main() const { return rank_ == 0; }
  const std::string& address() const { return address_; }

  // In place over all ranks: sum, or mean (sum / world). Tensors are packed into flat fp32
  // buckets of at most bucket_bytes; each bucket's all-reduce starts as soon as it is packed
  // (packing the next one overlaps it). Undefined tensors are not allowed (use zeros).
  Status allreduce(std::vector<torch::Tensor>& ts, bool mean) const;
  // The gradients of `params` (a zero gradient is made for a tensor that got none) and `extra`
  // (a small CPU fp32 tensor of values to reduce along, e.g. the loss), in one all-reduce.
  Status allreduce_gradients(std::vector<torch::Tensor>& params, torch::Tensor extra,
                             bool mean) const;
  // Rank root's values to every rank, in place.
  Status broadcast(std::vector<torch::Tensor>& ts, int root = 0) const;
  // Rank 0's bytes to every rank (through the store; e.g. a tokenizer model).
  Status share_bytes(const std::string& key, std::string& bytes) const;
  Status barrier() const;
  // Error unless every rank holds the same values (a fingerprint of the tensors is compared):
  // the guard that EMA, weights and optimizer state did not drift apart.
  Status check_in_sync(const std::vector<torch::Tensor>& ts, const std::string& what) const;

  // Seconds spent waiting in collectives so far (the communication share of a step).
  double comm_seconds() const { return comm_seconds_; }
  int64_t bucket_bytes = 25 << 20;

 private:
  Dist() = default;
  Status fail(const std::string& op, const std::exception& e) const;
  int rank_ = 0, world_ = 1;
  std::string address_;
  double timeout_ = 900;
  mutable double comm_seconds_ = 0;
  std::unique_ptr<ProcessGroupHolder> pg_;
};

// True for one process (no Dist) and for rank 0: the process that writes the files and prints
// the results.
bool is_main_rank(const std::shared_ptr<Dist>& d);

// The rows [begin, end) of a global batch of B that `rank` of `world` trains on; an error when
// B is not divisible by the world size (the global batch must not depend on it).
Result<std::pair<int64_t, int64_t>> batch_shard(int64_t B, int rank, int world);

}  // namespace lf
