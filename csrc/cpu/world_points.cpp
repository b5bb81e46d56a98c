// CPU twin of world_points: one OpenMP loop over image rows (monst3r/geometry.h math).
#include "monst3r/geometry.h"
#include "monst3r/perpixel.h"

namespace monst3r {

void world_points_cpu(const float* depth, const float* cam_to_world, const float* intrinsics,
                      float* points, int64_t n, int64_t h, int64_t w) {
  const int64_t rows = n * h;
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t view = row / h;
    const float y = static_cast<float>(row - view * h);
    const float* k = intrinsics + 9 * view;
    const float* pose = cam_to_world + 16 * view;
    const float* d = depth + row * w;
    float* out = points + 3 * row * w;
    for (int64_t x = 0; x < w; ++x)
      pixel_to_world(static_cast<float>(x), y, d[x], k[0], k[4], k[2], k[5], pose, out + 3 * x);
  }
}

}  // namespace monst3r
