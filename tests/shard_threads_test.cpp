// Batch shards on threads (core/shard_threads.h, train/common.h sharded_mean_backward): each
// shard runs on its own thread with its share of the intra-op threads and the caller's torch
// state, and the shards' gradients are the gradient of the batch's mean.
#include "core/shard_threads.h"

#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <omp.h>

#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>

#include "train/common.h"

namespace lf {
namespace {

using torch::Tensor;

TEST(ShardThreads, EachShardRunsOnItsOwnThreadWithItsShareOfTheIntraOpThreads) {
  for (int intra : {2, 3}) {
    ShardThreads st(2, intra);
    ASSERT_EQ(st.shards(), 2);
    std::mutex mu;
    std::vector<std::thread::id> ids(2);
    std::vector<int> omp(2, -1), aten(2, -1), ran(2, 0);
    for (int rep = 0; rep < 3; ++rep)  // the threads persist from run to run
      st.run([&](int s) {
        std::lock_guard<std::mutex> lock(mu);
        ids[s] = std::this_thread::get_id();
        omp[s] = omp_get_max_threads();
        aten[s] = at::get_num_threads();
        ++ran[s];
      });
    EXPECT_EQ(ran, (std::vector<int>{3, 3}));
    EXPECT_NE(ids[0], ids[1]);
    EXPECT_NE(ids[0], std::this_thread::get_id());
    EXPECT_NE(ids[1], std::this_thread::get_id());
    // intra 2: one each; intra 3: the first shard gets the remainder.
    EXPECT_EQ(omp, (std::vector<int>{intra == 3 ? 2 : 1, 1})) << intra;
    EXPECT_EQ(aten, omp) << intra;
    EXPECT_EQ(st.intra_threads(0), omp[0]);
    EXPECT_EQ(st.intra_threads(1), omp[1]);
  }
  // One shard: the caller runs it, with no thread of its own.
  ShardThreads one(1, 2);
  std::thread::id id;
  one.run([&](int s) {
    EXPECT_EQ(s, 0);
    id = std::this_thread::get_id();
  });
  EXPECT_EQ(id, std::this_thread::get_id());
}

TEST(ShardThreads, TheCallersGradModeAppliesAndTheLowestShardsErrorReachesTheCaller) {
  ShardThreads st(2, 2);
  std::vector<int> grad(2, -1);
  {
    torch::NoGradGuard ng;
    st.run([&](int s) { grad[s] = torch::GradMode::is_enabled(); });
  }
  EXPECT_EQ(grad, (std::vector<int>{0, 0}));
  st.run([&](int s) { grad[s] = torch::GradMode::is_enabled(); });
  EXPECT_EQ(grad, (std::vector<int>{1, 1}));
  // Both shards throw: shard 0's error is rethrown, after both have finished.
  std::vector<int> done(2, 0);
  try {
    st.run([&](int s) {
      done[s] = 1;
      throw std::runtime_error("shard " + std::to_string(s));
    });
    FAIL() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "shard 0");
  }
  EXPECT_EQ(done, (std::vector<int>{1, 1}));
  st.run([&](int s) { done[s] = 2; });  // usable after an error
  EXPECT_EQ(done, (std::vector<int>{2, 2}));
}

TEST(ShardThreads, AutoIsTwoOnACpuWithTwoThreadsAndEnoughRows) {
  EXPECT_EQ(ShardThreads::auto_shards(32, 2, true), 2);
  EXPECT_EQ(ShardThreads::auto_shards(16, 8, true), 2);
  EXPECT_EQ(ShardThreads::auto_shards(15, 2, true), 1);  // fewer than 8 rows a shard
  EXPECT_EQ(ShardThreads::auto_shards(32, 1, true), 1);
  EXPECT_EQ(ShardThreads::auto_shards(32, 2, false), 1);  // not a CPU
  EXPECT_TRUE(ShardThreads::valid_request(0));
  EXPECT_TRUE(ShardThreads::valid_request(2));
  EXPECT_FALSE(ShardThreads::valid_request(3));
  EXPECT_FALSE(ShardThreads::valid_request(-1));
}

// A small network with a per-sample loss; `unused` never enters the loss.
struct Net {
  Tensor w1, b1, w2, unused;
  Net() {
    torch::manual_seed(3);
    w1 = (torch::randn({24, 16}) * 0.3).requires_grad_();
    b1 = torch::zeros({24}).requires_grad_();
    w2 = (torch::randn({4, 24}) * 0.3).requires_grad_();
    unused = torch::randn({5}).requires_grad_();
  }
  std::vector<Tensor> params() const { return {w1, b1, w2, unused}; }
  Tensor per_sample(const Tensor& x, const Tensor& y) const {
    auto h = torch::gelu(torch::addmm(b1, x, w1.t()));
    return (torch::mm(h, w2.t()) - y).pow(2).mean(1);
  }
};

std::vector<Tensor> grads(const std::vector<Tensor>& ps) {
  std::vector<Tensor> g;
  for (const auto& p : ps) g.push_back(p.grad().clone());
  return g;
}

TEST(ShardThreads, ShardedMeanBackwardIsTheMeansGradient) {
  torch::manual_seed(4);
  const Tensor x = torch::randn({37, 16}), y = torch::randn({37, 4});  // 18 + 19 rows
  Net net;
  auto fn = [&](int64_t lo, int64_t hi) {
    return net.per_sample(x.narrow(0, lo, hi - lo), y.narrow(0, lo, hi - lo));
  };
  // Reference: zero_grad + mean().backward(), with `unused` holding a stale gradient.
  net.unused.mutable_grad() = torch::ones({5});
  Tensor ref_per = net.per_sample(x, y);
  backward_with_fresh_grads(ref_per.mean(), net.params());
  const auto ref = grads(net.params());
  ASSERT_TRUE(torch::equal(ref[3], torch::zeros({5})));

  // One shard: the same computation on the caller, bit for bit.
  ShardThreads one(1, 2);
  for (auto& p : net.params()) p.mutable_grad() = torch::full_like(p, 7.0);
  Tensor per1 = sharded_mean_backward(one, 37, fn, net.params());
  EXPECT_TRUE(torch::equal(per1, ref_per.detach()));
  EXPECT_FALSE(per1.requires_grad());
  auto g1 = grads(net.params());
  for (size_t i = 0; i < ref.size(); ++i) EXPECT_TRUE(torch::equal(g1[i], ref[i])) << i;

  // Two shards: the per-sample losses in order and the mean's gradient up to float rounding;
  // stale gradients are replaced, not added to, and a parameter outside the loss gets zeros.
  ShardThreads two(2, 2);
  for (auto& p : net.params()) p.mutable_grad() = torch::full_like(p, 7.0);
  Tensor per2 = sharded_mean_backward(two, 37, fn, net.params());
  ASSERT_EQ(per2.sizes(), ref_per.sizes());
  EXPECT_TRUE(torch::allclose(per2, ref_per.detach(), 1e-6, 1e-7));
  auto g2 = grads(net.params());
  for (size_t i = 0; i < ref.size(); ++i)
    EXPECT_TRUE(torch::allclose(g2[i], ref[i], 1e-5, 1e-7))
        << i << ": " << (g2[i] - ref[i]).abs().max().item<float>();
  EXPECT_FALSE(torch::equal(g2[0], ref[0]));  // the shards really summed (else this tests nothing)
  // The same bits every time, whichever shard finishes first.
  for (int rep = 0; rep < 5; ++rep) {
    sharded_mean_backward(two, 37, fn, net.params());
    auto g = grads(net.params());
    for (size_t i = 0; i < g.size(); ++i) ASSERT_TRUE(torch::equal(g[i], g2[i])) << rep << " " << i;
  }
  // Fewer rows than shards: one shard, on the caller.
  Tensor per_small = sharded_mean_backward(two, 1, fn, net.params());
  EXPECT_EQ(per_small.size(0), 1);
}

}  // namespace
}  // namespace lf
