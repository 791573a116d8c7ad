// Process group and collectives for data-parallel training (see dist.h).
// libtorch's Gloo process group header is compiled only with this (libtorch_cpu has the code).
#define USE_C10D_GLOO 1
#include "train/dist.h"

#include <cstdlib>
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "lesionflow/log.h"

namespace lf {
using torch::Tensor;

class ProcessGroupHolder {
 public:
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
};

namespace {

const char* env(const char* k) {
  const char* v = std::getenv(k);
  return v && *v ? v : nullptr;
}

Result<int> env_int(const char* k) {
  const char* v = env(k);
  if (!v) return -1;
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  if (!end || *end || x < 0) return Status::error(std::string(k) + "='" + v + "' is not a rank");
  return static_cast<int>(x);
}

bool is_loopback(const std::string& host) {
  return host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1";
}

}  // namespace

Result<DistOptions> resolve_dist_options(DistOptions o) {
  if (o.rank < 0) {
    LF_ASSIGN_OR_RETURN(o.rank, env_int("RANK"));
  }
  if (o.world_size < 0) {
    LF_ASSIGN_OR_RETURN(o.world_size, env_int("WORLD_SIZE"));
  }
  if (o.world_size < 0) o.world_size = 1;
  if (o.rank < 0) o.rank = 0;
  if (o.world_size == 0) return Status::error("--world-size must be >= 1");
  if (o.rank >= o.world_size)
    return Status::error("rank " + std::to_string(o.rank) + " is not below the world size " +
                         std::to_string(o.world_size));
  if (o.world_size > 1 && (o.init.empty() || o.init == "env://")) {
    const char* addr = env("MASTER_ADDR");
    const char* port = env("MASTER_PORT");
    if (!addr || !port)
      return Status::error(
          "distributed run of " + std::to_string(o.world_size) +
          " ranks without a rendezvous: set MASTER_ADDR and MASTER_PORT (as torchrun does) or "
          "give --dist-init tcp://HOST:PORT or file://PATH");
    o.init = std::string("tcp://") + addr + ":" + port;
  }
  if (o.world_size > 1 && o.init.rfind("tcp://", 0) != 0 && o.init.rfind("file://", 0) != 0)
    return Status::error("--dist-init '" + o.init +
                         "': expected env://, tcp://HOST:PORT or file://PATH");
  if (!(o.timeout_seconds > 0)) return Status::error("--dist-timeout must be > 0 seconds");
  return o;
}

bool dist_requested(const DistOptions& o) { return o.world_size > 1; }

Result<std::pair<int64_t, int64_t>> batch_shard(int64_t B, int rank, int world) {
  if (world < 1 || rank < 0 || rank >= world)
    return Status::error("batch_shard: rank " + std::to_string(rank) + " of " +
                         std::to_string(world));
  if (B % world != 0)
    return Status::error("--batch " + std::to_string(B) + " is not divisible by the world size " +
                         std::to_string(world) +
                         " (every rank trains an equal share of the same global batch)");
  const int64_t b = B / world;
  return std::make_pair(rank * b, (rank + 1) * b);
}

// c10d's FileStore removes its file when the last rank lets go of it.
Dist::~Dist() = default;

Status Dist::fail(const std::string& op, const std::exception& e) const {
  std::string what = e.what();
  auto nl = what.find('\n');  // c10::Error appends a C++ backtrace
  if (nl != std::string::npos) what = what.substr(0, nl);
  return Status::error("distributed " + op + " failed on rank " + std::to_string(rank_) + " of " +
                       std::to_string(world_) + " (" + address_ + "): " + what +
                       " -- another rank died, hangs or was stopped (timeout " +
                       std::to_string(static_cast<int>(timeout_)) +
                       " s); the last checkpoint is intact: restart every rank with --resume");
}

Result<std::shared_ptr<Dist>> Dist::connect(const DistOptions& o) {
  std::shared_ptr<Dist> d(new Dist());
  d->rank_ = o.rank;
  d->world_ = o.world_size;
  d->timeout_ = o.timeout_seconds;
  d->address_ = o.init;
  d->pg_ = std::make_unique<ProcessGroupHolder>();
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(o.timeout_seconds * 1000));
  std::string host = "127.0.0.1";
  try {
    if (o.init.rfind("file://", 0) == 0) {
      d->pg_->store = c10::make_intrusive<c10d::FileStore>(o.init.substr(7), o.world_size);
      d->pg_->store->setTimeout(timeout);
      host.clear();
    } else {
      const std::string hp = o.init.substr(6);
      auto colon = hp.rfind(':');
      if (colon == std::string::npos)
        return Status::error("--dist-init '" + o.init + "': expected tcp://HOST:PORT");
      host = hp.substr(0, colon);
      const int port = std::atoi(hp.c_str() + colon + 1);
      if (port <= 0 || port > 65535) return Status::error("--dist-init '" + o.init + "': bad port");
      c10d::TCPStoreOptions so;
      so.port = static_cast<uint16_t>(port);
      so.isServer = o.rank == 0;
      so.numWorkers = o.world_size;
      so.waitWorkers = true;
      so.timeout = timeout;
      d->pg_->store = c10::make_intrusive<c10d::TCPStore>(host, so);
    }
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    if (const char* ifname = env("GLOO_SOCKET_IFNAME"))
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    else if (!host.empty() && is_loopback(host))
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    else
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    d->pg_->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(
        c10::make_intrusive<c10d::PrefixStore>("lesionflow", d->pg_->store), o.rank, o.world_size,
        opts);
  } catch (const std::exception& e) {
    std::string what = e.what();
    auto nl = what.find('\n');
    if (nl != std::string::npos) what = what.substr(0, nl);
    return Status::error("distributed rendezvous at " + o.init + " (rank " +
                         std::to_string(o.rank) + " of " + std::to_string(o.world_size) +
                         ") failed: " + what);
  }
  log_info("distributed: rank " + std::to_string(o.rank) + " of " + std::to_string(o.world_size) +
           " connected via " + o.init + " (Gloo)");
  return d;
}

Status Dist::allreduce(std::vector<Tensor>& ts, bool mean) const {
  auto t0 = std::chrono::steady_clock::now();
  try {
    torch::NoGradGuard ng;
    const int64_t cap = std::max<int64_t>(1, bucket_bytes / 4);
    struct Bucket {
      size_t begin, end;
      Tensor flat;
      c10::intrusive_ptr<c10d::Work> work;
    };
    std::vector<Bucket> buckets;
    size_t i = 0;
    while (i < ts.size()) {
      Bucket b{i, i, {}, {}};
      int64_t n = 0;
      while (b.end < ts.size() && (n == 0 || n + ts[b.end].numel() <= cap)) {
        if (!ts[b.end].defined()) return Status::error("allreduce: undefined tensor");
        n += ts[b.end].numel();
        ++b.end;
      }
      std::vector<Tensor> parts;
      for (size_t k = b.begin; k < b.end; ++k)
        parts.push_back(ts[k].detach().to(torch::kCPU, torch::kFloat32).reshape({-1}));
      b.flat = torch::cat(parts);
      std::vector<Tensor> one{b.flat};
      b.work = pg_->pg->allreduce(one);  // started; the next bucket is packed meanwhile
      buckets.push_back(std::move(b));
      i = buckets.back().end;
    }
    for (auto& b : buckets) {
      b.work->wait();
      if (mean) b.flat.div_(world_);
      int64_t off = 0;
      for (size_t k = b.begin; k < b.end; ++k) {
        const int64_t n = ts[k].numel();
        ts[k].copy_(b.flat.narrow(0, off, n).view(ts[k].sizes()));
        off += n;
      }
    }
  } catch (const std::exception& e) {
    return fail("all-reduce", e);
  }
  comm_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return Status::ok_status();
}

Status Dist::allreduce_gradients(std::vector<Tensor>& params, Tensor extra, bool mean) const {
  std::vector<Tensor> red;
  for (auto& p : params) {
    if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
    red.push_back(p.grad());
  }
  red.push_back(extra);
  return allreduce(red, mean);
}

Status Dist::broadcast(std::vector<Tensor>& ts, int root) const {
  auto t0 = std::chrono::steady_clock::now();
  try {
    torch::NoGradGuard ng;
    for (auto& t : ts) {
      std::vector<Tensor> one{t.detach().to(torch::kCPU).contiguous().clone()};
      c10d::BroadcastOptions bo;
      bo.rootRank = root;
      pg_->pg->broadcast(one, bo)->wait();
      t.copy_(one[0]);
    }
  } catch (const std::exception& e) {
    return fail("broadcast", e);
  }
  comm_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return Status::ok_status();
}

Status Dist::share_bytes(const std::string& key, std::string& bytes) const {
  try {
    if (rank_ == 0) {
      pg_->store->set("lesionflow/share/" + key, std::vector<uint8_t>(bytes.begin(), bytes.end()));
    } else {
      auto v = pg_->store->get("lesionflow/share/" + key);  // waits up to the timeout
      bytes.assign(v.begin(), v.end());
    }
  } catch (const std::exception& e) {
    return fail("store exchange of '" + key + "'", e);
  }
  return Status::ok_status();
}

Status Dist::barrier() const {
  try {
    pg_->pg->barrier()->wait();
  } catch (const std::exception& e) {
    return fail("barrier", e);
  }
  return Status::ok_status();
}

Status Dist::check_in_sync(const std::vector<Tensor>& ts, const std::string& what) const {
  // Per tensor: the sum of its float bit patterns as 64-bit integers, exact and independent of
  // the summation order (so of the thread count), equal on every rank only for equal values.
  std::vector<int64_t> fp;
  {
    torch::NoGradGuard ng;
    for (const auto& t : ts) {
      auto f = t.detach().to(torch::kCPU, torch::kFloat32).contiguous();
      fp.push_back(f.view(torch::kInt32).to(torch::kInt64).sum().item<int64_t>());
    }
  }
  auto lo = torch::tensor(fp, torch::kInt64), hi = lo.clone();
  try {
    std::vector<Tensor> a{lo}, b{hi};
    c10d::AllreduceOptions mn, mx;
    mn.reduceOp = c10d::ReduceOp::MIN;
    mx.reduceOp = c10d::ReduceOp::MAX;
    pg_->pg->allreduce(a, mn)->wait();
    pg_->pg->allreduce(b, mx)->wait();
  } catch (const std::exception& e) {
    return fail("consistency check", e);
  }
  auto diff = (hi - lo).ne(0).nonzero();
  if (diff.numel() > 0)
    return Status::error("distributed: the ranks' " + what + " differ (" +
                         std::to_string(diff.size(0)) + " of " + std::to_string(ts.size()) +
                         " tensors, first #" + std::to_string(diff[0][0].item<int64_t>()) +
                         "); the data-parallel invariant broke, the run stops");
  return Status::ok_status();
}

bool is_main_rank(const std::shared_ptr<Dist>& d) { return !d || d->is_main(); }

}  // namespace lf
