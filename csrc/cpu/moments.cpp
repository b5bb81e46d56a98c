// OpenMP loop of the pair moments (monst3r/moments.h), summed deterministically in chunks.
#include "monst3r/chunked_sum.h"
#include "monst3r/moments.h"

namespace monst3r {

template <typename T>
void pair_moments_cpu(const T* x, const T* y, const T* weights, int64_t batch, int64_t points,
                      double* out, int threads) {
  auto add = [&](int64_t b, int64_t lo, int64_t hi, double* acc) {
    const T* wb = weights ? weights + b * points : nullptr;
    for (int64_t k = lo; k < hi; ++k)
      accumulate_pair_moments(x + 3 * b * points, y + 3 * b * points, wb, k, acc);
  };
  chunked_sum<kPairMoments>(batch, points, threads, add, out);
}

template void pair_moments_cpu<float>(const float*, const float*, const float*, int64_t, int64_t,
                                      double*, int);
template void pair_moments_cpu<double>(const double*, const double*, const double*, int64_t,
                                       int64_t, double*, int);

}  // namespace monst3r
