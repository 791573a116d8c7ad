// See shard_threads.h.
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <omp.h>

#include <algorithm>

#include "core/shard_threads.h"

namespace lf {

ShardThreads::ShardThreads(int shards, int intra)
    : shards_(std::max(1, shards)), intra_(std::max(1, intra)), errors_(shards_) {
  if (shards_ == 1) return;
  for (int s = 0; s < shards_; ++s) threads_.emplace_back([this, s] { worker(s); });
}

ShardThreads::~ShardThreads() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  go_.notify_all();
  for (auto& t : threads_) t.join();
}

int ShardThreads::intra_threads(int s) const {
  return std::max(1, intra_ / shards_ + (s < intra_ % shards_ ? 1 : 0));
}

int ShardThreads::auto_shards(int64_t rows, int intra, bool cpu, int64_t min_rows) {
  return cpu && intra >= 2 && rows >= 2 * min_rows ? 2 : 1;
}

void ShardThreads::worker(int s) {
  // libtorch sets a new thread's OpenMP thread count at its first parallel op (to the process's
  // --threads); do that now, then give this thread its share. oneDNN, OpenBLAS (the OpenMP build)
  // and at::parallel_for all read the calling thread's omp_get_max_threads().
  (void)at::get_num_threads();
  omp_set_num_threads(intra_threads(s));
  uint64_t seen = 0;
  for (;;) {
    const std::function<void(int)>* fn;
    const at::ThreadLocalState* tls;
    {
      std::unique_lock<std::mutex> lock(mu_);
      go_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      fn = fn_;
      tls = static_cast<const at::ThreadLocalState*>(tls_);
    }
    std::exception_ptr err;
    try {
      at::ThreadLocalStateGuard guard(*tls);
      (*fn)(s);
    } catch (...) {
      err = std::current_exception();
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      errors_[s] = err;
      if (--pending_ == 0) done_.notify_one();
    }
  }
}

void ShardThreads::run(const std::function<void(int)>& fn) {
  if (shards_ == 1) {
    fn(0);
    return;
  }
  const at::ThreadLocalState tls;  // the caller's
  {
    std::lock_guard<std::mutex> lock(mu_);
    fn_ = &fn;
    tls_ = &tls;
    pending_ = shards_;
    std::fill(errors_.begin(), errors_.end(), nullptr);
    ++generation_;
  }
  go_.notify_all();
  std::unique_lock<std::mutex> lock(mu_);
  done_.wait(lock, [&] { return pending_ == 0; });
  fn_ = nullptr;
  tls_ = nullptr;
  for (const auto& e : errors_)
    if (e) std::rethrow_exception(e);
}

int ShardThreads::run_rows(int64_t rows, const std::function<void(int, int64_t, int64_t)>& fn) {
  const int k = static_cast<int>(std::min<int64_t>(shards_, rows));
  if (k <= 1) {
    fn(0, 0, rows);
    return 1;
  }
  run([&](int s) {
    if (s < k) fn(s, rows * s / k, rows * (s + 1) / k);
  });
  return k;
}

}  // namespace lf
