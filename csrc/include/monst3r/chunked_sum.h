// Deterministic parallel sums for the CPU loops: the items are cut into fixed chunks, each chunk
// summed on its own (in parallel), the chunk sums added in chunk order. The result therefore does
// not depend on the number of threads, and small inputs stay on one thread (waking a second one
// can cost more than the whole sum on a loaded machine). Host only (OpenMP).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "monst3r/kernels.h"

namespace monst3r {

constexpr int64_t kSumChunk = 4096;         // items per partial sum
constexpr int64_t kItemsPerThread = 1 << 18;  // below this many items per thread: fewer threads

// For each of `sets` independent sets of `items` items, out[set * K + k] = Σ over the set's
// chunks of the K sums that add_chunk(set, lo, hi, acc) adds for items [lo, hi) into acc[K]
// (zeroed before each chunk). threads: OpenMP threads (0 = the core's setting); items_per_thread:
// the fewest items worth a thread (lower it for costly items).
template <int K, typename AddChunk>
void chunked_sum(int64_t sets, int64_t items, int threads, AddChunk add_chunk, double* out,
                 int64_t items_per_thread = kItemsPerThread) {
  const int64_t chunks = (items + kSumChunk - 1) / kSumChunk;
  const int64_t tasks = sets * chunks;
  std::vector<double> partial(static_cast<size_t>(tasks * K), 0.0);
  const int64_t useful = std::max<int64_t>(1, sets * items / items_per_thread);
  const int64_t wanted = threads > 0 ? threads : cpu_num_threads();
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min({wanted, useful, tasks})));
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t set = task / chunks, lo = (task - set * chunks) * kSumChunk;
    add_chunk(set, lo, std::min(items, lo + kSumChunk), partial.data() + task * K);
  }
  for (int64_t set = 0; set < sets; ++set) {
    double* o = out + set * K;
    std::fill(o, o + K, 0.0);
    for (int64_t c = 0; c < chunks; ++c)
      for (int k = 0; k < K; ++k) o[k] += partial[(set * chunks + c) * K + k];
  }
}

}  // namespace monst3r
