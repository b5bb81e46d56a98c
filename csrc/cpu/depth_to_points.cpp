#include "monst3r/geometry.h"
#include "monst3r/kernels.h"

#ifdef MONST3R_RT_OPENMP
#include <omp.h>
#endif

namespace monst3r {

void depth_to_points_cpu(const float* depth, const float* focal, const float* pp, float* points,
                         int64_t n, int64_t h, int64_t w) {
  const int64_t rows = n * h;
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t view = row / h;
    const float y = static_cast<float>(row - view * h);
    const float f = focal[view], cx = pp[2 * view], cy = pp[2 * view + 1];
    const float* d = depth + row * w;
    float* out = points + 3 * row * w;
    for (int64_t x = 0; x < w; ++x) {
      unproject_pixel(static_cast<float>(x), y, d[x], f, cx, cy, out + 3 * x);
    }
  }
}

int cpu_num_threads() {
#ifdef MONST3R_RT_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

void set_cpu_num_threads(int n) {
#ifdef MONST3R_RT_OPENMP
  if (n > 0) omp_set_num_threads(n);
#else
  (void)n;
#endif
}

}  // namespace monst3r
