// Persistent threads that run the shards of one batch at the same time, each with its share of
// the intra-op (OpenMP) threads. On the project's 2-core CPUs two half batches on one thread each
// finish a bf16 generator training step ~10-15% sooner than the whole batch on two threads: the
// serial work between ops (dispatch, autograd, small kernels) runs on both cores instead of
// leaving one waiting at a barrier, and a one-thread GEMM needs no synchronisation
// (docs/precision.md, "Batch shards on threads").
#pragma once
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace lf {

class ShardThreads {
 public:
  // `shards` threads share `intra` intra-op threads: shard s gets intra / shards of them, the
  // first intra % shards one more, and at least one. shards = 1 starts no thread: run() calls fn
  // on the caller, as if there were no shards.
  ShardThreads(int shards, int intra);
  ~ShardThreads();
  ShardThreads(const ShardThreads&) = delete;
  ShardThreads& operator=(const ShardThreads&) = delete;

  int shards() const { return shards_; }
  // The intra-op threads of shard s.
  int intra_threads(int s) const;

  // Runs fn(s) for every shard s at the same time, each on its own thread, and returns when all
  // have finished. The caller's thread-local torch state (grad mode, inference mode, autocast,
  // the profiler's callbacks) applies in every shard. If shards throw, the exception of the
  // lowest such shard is rethrown after all have finished. Not reentrant.
  void run(const std::function<void(int shard)>& fn);
  // Rows [0, rows) in k = min(shards(), rows) consecutive parts, part s from rows * s / k up to
  // rows * (s + 1) / k: runs fn(s, lo, hi) for every part at once as run() does (on the caller
  // when k is 1) and returns k.
  int run_rows(int64_t rows, const std::function<void(int part, int64_t lo, int64_t hi)>& fn);

  // The shard count that `0` (auto) means for a batch of `rows` on `intra` intra-op threads: 2
  // on a CPU with at least two threads when each half has at least min_rows rows, else 1 (one
  // shard on other devices: a GPU's work is not sped up by a second host thread). At most two
  // shards, so that the gradients' sum is the same bits in either order (a + b = b + a; with
  // three the order of the two additions would change the last bits from run to run).
  static int auto_shards(int64_t rows, int intra, bool cpu, int64_t min_rows = 8);
  // A request (0 = auto, as auto_shards) resolved to a shard count.
  static int resolve(int request, int64_t rows, int intra, bool cpu, int64_t min_rows = 8) {
    return request > 0 ? request : auto_shards(rows, intra, cpu, min_rows);
  }
  // Checks a requested shard count: 0 (auto), 1 or 2.
  static bool valid_request(int shards) { return shards >= 0 && shards <= 2; }

 private:
  void worker(int s);

  int shards_, intra_;
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable go_, done_;
  const std::function<void(int)>* fn_ = nullptr;
  const void* tls_ = nullptr;  // the caller's at::ThreadLocalState during run()
  uint64_t generation_ = 0;
  int pending_ = 0;
  bool stop_ = false;
  std::vector<std::exception_ptr> errors_;
};

}  // namespace lf
