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
std::string torch_version();
// Path of the libblas actually mapped into this process (from /proc/self/maps), or "".
std::string loaded_blas();
// Where the system libblas.so.3 alternative points.
std::string active_blas_alternative();
bool blas_is_openblas();
// Median GFLOP/s of an n x n float matmul over about `seconds`.
double measure_sgemm_gflops(int n, double seconds);
// "cpu" or "cuda[:i]"; error when CUDA is asked for but libtorch has none.
Status check_device(const std::string& device);

}  // namespace lf
