#include <malloc.h>
#include <omp.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <thread>

#include "core/device.h"
#include "lesionflow/runtime.h"

namespace lf {

int hardware_threads() {
  unsigned n = std::thread::hardware_concurrency();
  return n ? static_cast<int>(n) : 1;
}

long peak_rss_mb() {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024;
}

long rss_now_mb() {
  long pages = 0, resident = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    std::fclose(f);
  }
  return resident * (sysconf(_SC_PAGESIZE) / 1024) / 1024;
}

void set_threads(int n) {
  // Default: all cores, shared among the ranks of a data-parallel run on this machine
  // (LOCAL_WORLD_SIZE, set by torchrun and scripts/launch_local.sh).
  if (n <= 0) {
    const char* lws = std::getenv("LOCAL_WORLD_SIZE");
    const int ranks = lws ? std::max(1, std::atoi(lws)) : 1;
    n = std::max(1, hardware_threads() / ranks);
  }
  torch::set_num_threads(n);
  omp_set_num_threads(n);
}

int get_threads() { return torch::get_num_threads(); }

void tune_allocator() {
  // (Under tcmalloc, linked by default, mallopt is a no-op.)
  // glibc serves blocks above the (dynamic) mmap threshold with fresh mmap()s and returns freed
  // heap tops to the kernel: a training step then page-faults through every large activation
  // again. Keeping blocks up to 32 MiB (glibc's maximum) on the heap and trimming only above
  // 1 GiB of free top memory measured +19% generator training throughput (docs/results.md).
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

std::string torch_version() {
#ifdef TORCH_VERSION
  return TORCH_VERSION;
#else
  return std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
         std::to_string(TORCH_VERSION_PATCH);
#endif
}

namespace {
// The first mapped file whose path contains one of the needles (resolved if it is a link), or ""
// (prefer: a path that contains it is returned as it is, at once).
std::string mapped_file(std::initializer_list<const char*> needles, const char* prefer) {
  std::ifstream maps("/proc/self/maps");
  std::string line, found;
  while (std::getline(maps, line)) {
    auto pos = line.find('/');
    if (pos == std::string::npos) continue;
    std::string path = line.substr(pos);
    bool hit = false;
    for (const char* n : needles) hit = hit || path.find(n) != std::string::npos;
    if (!hit) continue;
    if (prefer && path.find(prefer) != std::string::npos) return path;
    if (found.empty()) {
      char buf[4096];
      ssize_t k = readlink(path.c_str(), buf, sizeof buf - 1);
      found = k > 0 ? std::string(buf, k) : path;
    }
  }
  return found;
}
}  // namespace

std::string loaded_blas() { return mapped_file({"libblas.so", "libopenblas"}, "libblas.so"); }

std::string loaded_allocator() {
  std::string lib = mapped_file({"libtcmalloc", "libjemalloc", "libmimalloc"}, nullptr);
  return lib.empty() ? "glibc malloc" : lib;
}

std::string active_blas_alternative() {
  for (const char* p :
       {"/usr/lib/x86_64-linux-gnu/libblas.so.3", "/usr/lib/aarch64-linux-gnu/libblas.so.3"}) {
    char buf[4096];
    if (realpath(p, buf)) return buf;
  }
  return "";
}

bool blas_is_openblas() {
  std::string a = active_blas_alternative();
  return a.find("openblas") != std::string::npos;
}

double measure_sgemm_gflops(int n, double seconds) {
  torch::NoGradGuard ng;
  auto a = torch::randn({n, n}), b = torch::randn({n, n});
  auto c = torch::mm(a, b);  // warm-up
  std::vector<double> g;
  auto t_end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  do {
    auto t0 = std::chrono::steady_clock::now();
    c = torch::mm(a, b);
    double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    g.push_back(2.0 * n * n * double(n) / dt / 1e9);
  } while (std::chrono::steady_clock::now() < t_end || g.size() < 3);
  std::sort(g.begin(), g.end());
  return g[g.size() / 2];
}

Status check_device(const std::string& device) {
  if (device == "cpu") return Status::ok_status();
  if (device.rfind("cuda", 0) == 0) {
    if (!torch::cuda::is_available())
      return Status::error("--device " + device +
                           ": this libtorch build has no usable CUDA device (Debian's libtorch is "
                           "CPU-only); use --device cpu");
    return Status::ok_status();
  }
  return Status::error("--device " + device + ": expected cpu or cuda[:N]");
}

Result<torch::Device> parse_device(const std::string& name) {
  LF_RETURN_IF_ERROR(check_device(name));
  try {
    return torch::Device(name);
  } catch (const std::exception&) {
    return Status::error("--device " + name + ": expected cpu or cuda[:N]");
  }
}

namespace {
std::atomic<int> g_precision{0};
}

Result<Precision> parse_precision(const std::string& name) {
  if (name == "fp32") return Precision::kFP32;
  if (name == "bf16") return Precision::kBF16;
  if (name == "auto") return cpu_has_bf16() ? Precision::kBF16 : Precision::kFP32;
  return Status::error("--precision must be fp32, bf16 or auto (got '" + name + "')");
}

const char* precision_name(Precision p) { return p == Precision::kBF16 ? "bf16" : "fp32"; }

bool cpu_has_bf16() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("flags", 0) == 0)
      return line.find(" avx512_bf16") != std::string::npos ||
             line.find(" amx_bf16") != std::string::npos;
  return false;
}

void set_compute_precision(Precision p) { g_precision = static_cast<int>(p); }
Precision compute_precision() {
  return static_cast<Precision>(g_precision.load(std::memory_order_relaxed));
}

double measure_bf16_gemm_gflops(int n, double seconds) {
  auto a = torch::randn({n, n}).to(torch::kBFloat16), b = torch::randn({n, n}).to(torch::kBFloat16);
  std::vector<double> rates;
  auto t_end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  (void)torch::mm(a, b);  // warm-up
  while (std::chrono::steady_clock::now() < t_end || rates.size() < 3) {
    auto t0 = std::chrono::steady_clock::now();
    (void)torch::mm(a, b);
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    rates.push_back(2.0 * n * n * n / s / 1e9);
  }
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}

}  // namespace lf
