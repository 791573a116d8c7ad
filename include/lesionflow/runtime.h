// Runtime facts and settings: threads, BLAS in use, device, a quick sgemm measurement.
// Implemented with torch, but this header does not include it.
#pragma once
#include <string>

#include "lesionflow/status.h"

namespace lf {

// Sets torch intra-op threads (and OpenMP/OpenBLAS via omp_set_num_threads). n <= 0: all cores.
void set_threads(int n);
int get_threads();
// glibc malloc settings for tensor workloads (large blocks stay on the heap); call at start-up.
void tune_allocator();
int hardware_threads();
// Peak resident memory of this process so far, MB; resident memory now, MB.
long peak_rss_mb();
long rss_now_mb();
std::string torch_version();
// Path of the libblas actually mapped into this process (from /proc/self/maps), or "".
std::string loaded_blas();
// The malloc the process runs with: the mapped tcmalloc/jemalloc/mimalloc library, or
// "glibc malloc".
std::string loaded_allocator();
// Where the system libblas.so.3 alternative points.
std::string active_blas_alternative();
bool blas_is_openblas();
// Median GFLOP/s of an n x n float matmul over about `seconds`.
double measure_sgemm_gflops(int n, double seconds);
// Median GFLOP/s of an n x n bfloat16 matmul (oneDNN on CPUs with AVX512_BF16/AMX).
double measure_bf16_gemm_gflops(int n, double seconds);

// Compute precision of the models' matrix products. fp32: everything in float32. bf16: the
// GEMMs of linear layers run in bfloat16 (inputs and weights cast on the fly, fp32 master
// weights, optimizer state and EMA); norms, softmax, attention, losses and the flow update stay
// float32. auto: bf16 where the CPU has AVX512_BF16 or AMX-BF16, else fp32.
enum class Precision { kFP32, kBF16 };
Result<Precision> parse_precision(const std::string& name);  // fp32 | bf16 | auto
const char* precision_name(Precision p);
bool cpu_has_bf16();                      // avx512_bf16 or amx_bf16 in /proc/cpuinfo
void set_compute_precision(Precision p);  // process-wide
Precision compute_precision();

// "cpu" or "cuda[:i]"; error when CUDA is asked for but libtorch has none.
Status check_device(const std::string& device);

}  // namespace lf
