// lesionflow bench, data-parallel rows (issue 18): the generator's training step as 1 rank x all
// threads and as R ranks x 1 thread on this machine (child processes rendezvousing through a
// file), the all-reduce share of the step, the measured all-reduce cost per parameter, and a
// ring all-reduce model of N machines built on those measurements.
#include <chrono>
#include <cstdio>
#include <sstream>

#include "flow/flow.h"
#include "lesionflow/io.h"
#include "lesionflow/log.h"
#include "lesionflow/runtime.h"
#include "lesionflow/scratch.h"
#include "pipeline/bench.h"
#include "train/common.h"
#include "train/dist.h"
#include "train/generator.h"

namespace lf {
namespace {
using bench_util::Clock;
using bench_util::median;
using bench_util::since;
}  // namespace

// Child: "STEPS:RANK:WORLD:INIT". Trains the preset on random data, global batch o.batch split
// over the ranks, gradients all-reduced as `train` does; prints rank 0's timing as JSON.
Status run_child_dist(const BenchOptions& o) {
  std::stringstream ss(o.child_dist);
  std::string f[3], init;
  for (auto& x : f) std::getline(ss, x, ':');
  std::getline(ss, init);  // the rest (file:///path)
  const int steps = std::atoi(f[0].c_str()), rank = std::atoi(f[1].c_str()),
            world = std::atoi(f[2].c_str());
  std::shared_ptr<Dist> dist;
  if (world > 1) {
    LF_ASSIGN_OR_RETURN(dist, Dist::connect(DistOptions{init, rank, world, 120}));
  }
  MMDiTConfig mc = MMDiTConfig::preset(o.preset);
  mc.vocab_size = 512;
  torch::manual_seed(0);
  MMDiT model(mc);
  auto params = model->parameters();
  torch::optim::AdamW opt(params, torch::optim::AdamWOptions(1e-4));
  LF_ASSIGN_OR_RETURN(auto shard, batch_shard(o.batch, rank, world));
  const int64_t b = shard.second - shard.first;
  auto x0 = torch::randn({b, mc.channels, mc.image_size, mc.image_size});
  auto ids = torch::randint(3, mc.vocab_size, {b, o.text_tokens}, torch::kInt64);
  auto mask = torch::ones({b, o.text_tokens}, torch::kBool);
  FlowConfig flow;
  flow.prediction = mc.prediction;
  std::vector<double> step_s, comm_s;
  for (int s = 0; s < steps + 2; ++s) {  // 2 warm-up steps
    auto t0 = Clock::now();
    auto gen = at::detail::createCPUGenerator(s);
    auto t = sample_timesteps(b, flow, gen);
    auto loss = generator_loss(model, {x0, torch::randn_like(x0), t, ids, mask}, flow).mean();
    opt.zero_grad();
    loss.backward();
    double c = 0;
    if (dist) {
      std::vector<torch::Tensor> g;
      for (auto& p : params) g.push_back(p.grad());
      auto c0 = Clock::now();
      LF_RETURN_IF_ERROR(dist->allreduce(g, true));
      c = since(c0);
    }
    clip_grad_norm(params, 1.0);
    opt.step();
    if (s >= 2) {
      step_s.push_back(since(t0));
      comm_s.push_back(c);
    }
  }
  // The all-reduce alone, of every gradient (what one step sends).
  std::vector<double> ar_s;
  if (dist) {
    for (int r = 0; r < 5; ++r) {
      std::vector<torch::Tensor> g;
      for (auto& p : params) g.push_back(p.grad());
      LF_RETURN_IF_ERROR(dist->barrier());
      auto c0 = Clock::now();
      LF_RETURN_IF_ERROR(dist->allreduce(g, true));
      ar_s.push_back(since(c0));
    }
  }
  if (rank == 0) {
    const double st = median(step_s);
    nlohmann::json j = {{"ranks", world},
                        {"threads_per_rank", get_threads()},
                        {"global_batch", o.batch},
                        {"parameters", model->num_parameters()},
                        {"step_seconds", st},
                        {"images_per_second", o.batch / st},
                        {"comm_seconds_per_step", median(comm_s)},
                        {"comm_share", median(comm_s) / st}};
    if (!ar_s.empty()) j["allreduce_seconds"] = median(ar_s);
    std::printf("%s\n", j.dump().c_str());
  }
  return Status::ok_status();
}

Result<nlohmann::json> bench_data_parallel(const BenchOptions& o) {
  const int cores = hardware_threads();
  const int R = std::max(2, cores);  // ranks x 1 thread
  LF_ASSIGN_OR_RETURN(TempDir scratch, TempDir::create("bench_dist"));
  const std::string self = "\"" + self_executable_path() + "\"";
  const std::string common = " bench --preset " + o.preset + " --batch " + std::to_string(o.batch) +
                             " --text-tokens " + std::to_string(o.text_tokens) + " --child-dist ";
  const int steps = std::max(4, 2 * o.reps);
  auto parse_last = [](const std::string& out) -> Result<nlohmann::json> {
    auto k = out.rfind('{');
    if (k == std::string::npos) return Status::error("bench data-parallel child: " + out);
    auto j = nlohmann::json::parse(out.substr(k), nullptr, false);
    if (j.is_discarded()) return Status::error("bench data-parallel child: " + out);
    return j;
  };
  log_info("bench: data-parallel rows (1 rank x " + std::to_string(cores) + " threads, " +
           std::to_string(R) + " ranks x 1 thread), " + std::to_string(steps) + " steps each");
  LF_ASSIGN_OR_RETURN(
      nlohmann::json one,
      parse_last(run_command_capture(self + " --threads " + std::to_string(cores) + common +
                                     std::to_string(steps) + ":0:1:none 2>/dev/null")));
  std::string cmd;
  const std::string init = "file://" + scratch.path() + "/rdv";
  for (int r = R - 1; r >= 0; --r)
    cmd += self + " --threads 1" + common + std::to_string(steps) + ":" + std::to_string(r) + ":" +
           std::to_string(R) + ":" + init + (r ? " >/dev/null 2>&1 & " : " 2>/dev/null; wait");
  LF_ASSIGN_OR_RETURN(nlohmann::json many, parse_last(run_command_capture(cmd)));
  // Ring all-reduce: each rank sends and receives 2 (N-1)/N of the gradient bytes. The measured
  // 2-rank time (factor 1) gives the effective bandwidth; N machines of this one (1 rank x all
  // cores, local batch o.batch) then step in t_compute + 2 (N-1)/N * bytes / bandwidth.
  const double P = many["parameters"].get<double>(), bytes = 4 * P;
  const double ar = many.value("allreduce_seconds", 0.0);
  const double ring_factor_measured = 2.0 * (R - 1) / R;
  const double bw_loopback = ar > 0 ? ring_factor_measured * bytes / ar : 0;
  const double bw_10gbe = 10e9 / 8 * 0.9;  // 10 GbE at 90% efficiency
  const double t_compute = one["step_seconds"].get<double>();
  nlohmann::json est = nlohmann::json::array();
  for (int n : {1, 2, 4, 8, 16, 32}) {
    const double f = 2.0 * (n - 1) / n;
    auto ips = [&](double bw) { return bw > 0 ? n * o.batch / (t_compute + f * bytes / bw) : 0; };
    est.push_back({{"machines", n},
                   {"images_per_second_loopback_bandwidth", ips(bw_loopback)},
                   {"images_per_second_10gbe", ips(bw_10gbe)},
                   {"efficiency_10gbe", ips(bw_10gbe) / (n * o.batch / t_compute)}});
  }
  nlohmann::json res = {{"one_rank", one},
                        {"ranks", many},
                        {"allreduce_ns_per_parameter", ar > 0 ? 1e9 * ar / P : 0},
                        {"loopback_bandwidth_gb_per_s", bw_loopback / 1e9},
                        {"ring_estimate", est}};
  std::printf("\n%-48s %12s %12s %12s\n", "data-parallel (generator train step)", "img/s",
              "comm share", "threads");
  for (const auto* j : {&one, &many})
    std::printf(
        "%-48s %12.2f %11.1f%% %12s\n",
        ((*j)["ranks"].dump() + " rank(s) x " + (*j)["threads_per_rank"].dump() + " thread(s)")
            .c_str(),
        (*j)["images_per_second"].get<double>(), 100 * (*j)["comm_share"].get<double>(), "");
  std::printf("all-reduce of %.1fM parameters: %.3f s (%.2f ns/parameter, %.2f GB/s loopback)\n",
              P / 1e6, ar, ar > 0 ? 1e9 * ar / P : 0, bw_loopback / 1e9);
  std::printf("%-10s %14s %14s %12s\n", "machines", "img/s (lo bw)", "img/s (10GbE)", "eff. 10GbE");
  for (auto& e : est)
    std::printf("%-10d %14.1f %14.1f %11.0f%%\n", e["machines"].get<int>(),
                e["images_per_second_loopback_bandwidth"].get<double>(),
                e["images_per_second_10gbe"].get<double>(),
                100 * e["efficiency_10gbe"].get<double>());
  return res;
}

}  // namespace lf
