#include "lesionflow/parallel.h"

#include <algorithm>
#include <atomic>
#include <mutex>
#include <opencv2/core.hpp>
#include <thread>
#include <vector>

namespace lf {

void parallel_for_each(int64_t n, int threads, const std::function<void(int64_t)>& body,
                       Progress* prog, int64_t every) {
  std::atomic<int64_t> next{0}, done{0};
  std::mutex mu;
  const int prev_cv_threads = cv::getNumThreads();
  cv::setNumThreads(1);
  auto worker = [&]() {
    for (int64_t i; (i = next++) < n;) {
      body(i);
      const int64_t d = ++done;
      if (prog && (d % std::max<int64_t>(1, every) == 0 || d == n)) {
        std::lock_guard<std::mutex> lock(mu);
        prog->update(d);
      }
    }
  };
  std::vector<std::thread> pool;
  for (int t = 0; t < std::max(1, threads); ++t) pool.emplace_back(worker);
  for (auto& t : pool) t.join();
  cv::setNumThreads(prev_cv_threads);
}

}  // namespace lf
