// lesionflow bench: the op timer behind --op-times (the rows themselves are measured, not tested:
// speed belongs in bench/, not in timed tests).
#include "pipeline/bench.h"

#include <gtest/gtest.h>

#include <map>

namespace lf {
// bench --op-times: the top-level ops of a step, each counted once per call with its inclusive
// time; nested ops (addmm inside linear) are not counted again, and the sum fits in the wall time.
TEST(Bench, OpTimerCountsTheTopLevelOpsOfAStep) {
  auto w = torch::randn({64, 32}, torch::requires_grad()), x = torch::randn({16, 32});
  auto step = [&] {
    auto y = torch::linear(x, w).relu().sum();
    y.backward();
    w.mutable_grad().reset();
  };
  step();
  auto r = time_top_level_ops(step, 3);
  EXPECT_EQ(r["steps"], 3);
  std::map<std::string, double> calls;
  for (const auto& e : r["ops"]) calls[e["name"].get<std::string>()] = e["calls_per_step"];
  EXPECT_EQ(calls["aten::linear"], 1.0);
  EXPECT_EQ(calls["aten::relu"], 1.0);
  EXPECT_EQ(calls.count("aten::mm") + calls.count("aten::matmul") + calls.count("aten::addmm"), 0u)
      << "nested inside aten::linear";
  bool backward_node = false;
  for (const auto& [name, n] : calls) backward_node |= name.find("MmBackward") != std::string::npos;
  EXPECT_TRUE(backward_node);
  const double wall = r["wall_ms_per_step"], ops = r["ops_ms_per_step"];
  EXPECT_GT(ops, 0);
  EXPECT_LE(ops, wall * 1.01);
  // Removed afterwards: ops outside the call are not counted.
  auto again = time_top_level_ops([] {}, 2);
  EXPECT_TRUE(again["ops"].empty());
}

}  // namespace lf
