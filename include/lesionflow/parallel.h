// A small worker pool for per-image work (decoding, measuring): each index runs exactly once,
// indices are handed out dynamically, OpenCV's own threading is off meanwhile (one image per
// worker is faster than nested pools), and progress is reported from one thread at a time.
#pragma once
#include <cstdint>
#include <functional>

#include "lesionflow/log.h"

namespace lf {

// body(i) for every i in [0, n) on max(1, threads) threads; prog->update(done) every `every`
// completed items and at the end (prog may be null). body must not throw.
void parallel_for_each(int64_t n, int threads, const std::function<void(int64_t)>& body,
                       Progress* prog = nullptr, int64_t every = 64);

}  // namespace lf
