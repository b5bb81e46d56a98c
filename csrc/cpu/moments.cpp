// OpenMP loop of the pair moments (monst3r/moments.h): chunks of pairs summed in parallel, the
// chunk sums added in order.
#include <algorithm>
#include <vector>

#include "monst3r/kernels.h"
#include "monst3r/moments.h"

namespace monst3r {

namespace {
constexpr int64_t kChunk = 4096;  // pairs per partial sum
// Below this many pairs per thread a parallel region costs more than it saves (one full-size
// pointmap, ~37k pairs, takes ~0.4 ms on one core; waking a second one can take longer on a
// loaded machine).
constexpr int64_t kPairsPerThread = 1 << 18;
}  // namespace

template <typename T>
void pair_moments_cpu(const T* x, const T* y, const T* weights, int64_t batch, int64_t points,
                      double* out, int threads) {
  const int64_t chunks = (points + kChunk - 1) / kChunk;
  const int64_t tasks = batch * chunks;
  std::vector<double> partial(static_cast<size_t>(tasks * kPairMoments), 0.0);
  const int64_t useful = std::max<int64_t>(1, batch * points / kPairsPerThread);
  const int nt = static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>(threads > 0 ? threads : cpu_num_threads(), std::min(useful, tasks))));
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t b = task / chunks, c = task - b * chunks;
    const int64_t lo = c * kChunk, hi = std::min(points, lo + kChunk);
    const T* xb = x + 3 * b * points;
    const T* yb = y + 3 * b * points;
    const T* wb = weights ? weights + b * points : nullptr;
    double acc[kPairMoments] = {};
    for (int64_t k = lo; k < hi; ++k) accumulate_pair_moments(xb, yb, wb, k, acc);
    std::copy(acc, acc + kPairMoments, partial.data() + task * kPairMoments);
  }
  for (int64_t b = 0; b < batch; ++b) {
    double* o = out + b * kPairMoments;
    std::fill(o, o + kPairMoments, 0.0);
    for (int64_t c = 0; c < chunks; ++c)
      for (int m = 0; m < kPairMoments; ++m) o[m] += partial[(b * chunks + c) * kPairMoments + m];
  }
}

template void pair_moments_cpu<float>(const float*, const float*, const float*, int64_t, int64_t,
                                      double*, int);
template void pair_moments_cpu<double>(const double*, const double*, const double*, int64_t,
                                       int64_t, double*, int);

}  // namespace monst3r
