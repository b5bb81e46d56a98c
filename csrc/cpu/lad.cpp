// OpenMP loops of the LAD alignment sums (monst3r/lad.h), summed deterministically in chunks.
#include <algorithm>
#include <functional>
#include <vector>

#include "monst3r/chunked_sum.h"
#include "monst3r/lad.h"

namespace monst3r {

template <typename T>
void lad_sums_cpu(const T* p, const T* g, int64_t m, double s, double t, double* out,
                  int threads) {
  auto add = [&](int64_t, int64_t lo, int64_t hi, double* acc) {
    for (int64_t k = lo; k < hi; ++k) lad_accumulate(p[k], g[k], s, t, acc);
  };
  chunked_sum<kLadSums>(1, m, threads, add, out);
}

template <typename T>
int64_t lad_partition_cpu(const T* p, const T* g, int64_t m, double s, double t, double rho,
                          double* fixed, const std::function<void(int64_t, T**, T**)>& alloc,
                          int threads) {
  // One "set" per chunk of kSumChunk pixels, so chunked_sum returns the per-chunk sums and active
  // counts (the offsets of the compaction); they are then added in chunk order.
  const int64_t chunks = (m + kSumChunk - 1) / kSumChunk;
  std::vector<double> per(static_cast<size_t>(chunks * kLadPartition));
  auto add = [&](int64_t c, int64_t lo, int64_t hi, double* acc) {
    const int64_t a = c * kSumChunk + lo, b = std::min(m, c * kSumChunk + hi);
    for (int64_t k = a; k < b; ++k) acc[3] += lad_partition_pixel(p[k], g[k], s, t, rho, acc);
  };
  if (chunks > 0)
    chunked_sum<kLadPartition>(chunks, kSumChunk, threads, add, per.data(), kItemsPerThread / 8);
  double sums[kLadPartition] = {0.0, 0.0, 0.0, 0.0};
  std::vector<int64_t> offset(static_cast<size_t>(chunks) + 1, 0);
  for (int64_t c = 0; c < chunks; ++c) {
    for (int k = 0; k < kLadPartition; ++k) sums[k] += per[c * kLadPartition + k];
    offset[c + 1] = offset[c] + static_cast<int64_t>(per[c * kLadPartition + 3]);
  }
  for (int k = 0; k < 3; ++k) fixed[k] = sums[k];
  T* active_p = nullptr;
  T* active_g = nullptr;
  alloc(offset[chunks], &active_p, &active_g);
  if (offset[chunks] > 0) {
    const int64_t wanted = threads > 0 ? threads : cpu_num_threads();
    const int nt = static_cast<int>(
        std::max<int64_t>(1, std::min({wanted, m / kItemsPerThread + 1, chunks})));
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t c = 0; c < chunks; ++c) {
      double unused[kLadPartition] = {0.0, 0.0, 0.0, 0.0};
      int64_t o = offset[c];
      for (int64_t k = c * kSumChunk, e = std::min(m, k + kSumChunk); k < e; ++k)
        if (lad_partition_pixel(p[k], g[k], s, t, rho, unused)) {
          active_p[o] = p[k];
          active_g[o] = g[k];
          ++o;
        }
    }
  }
  return offset[chunks];
}

template void lad_sums_cpu<float>(const float*, const float*, int64_t, double, double, double*,
                                  int);
template void lad_sums_cpu<double>(const double*, const double*, int64_t, double, double, double*,
                                   int);
template int64_t lad_partition_cpu<float>(const float*, const float*, int64_t, double, double,
                                          double, double*,
                                          const std::function<void(int64_t, float**, float**)>&,
                                          int);
template int64_t lad_partition_cpu<double>(const double*, const double*, int64_t, double, double,
                                           double, double*,
                                           const std::function<void(int64_t, double**, double**)>&,
                                           int);

}  // namespace monst3r
