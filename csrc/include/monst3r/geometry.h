// Per-pixel camera geometry, written once for the CPU loops and the CUDA kernels.
//
// Conventions (MonST3R / DUSt3R): pixel (x, y) = (column, row), integer coordinates at pixel
// centres; pinhole K = [[f, 0, cx], [0, f, cy], [0, 0, 1]] with a single focal f (pixels);
// depth is z-depth (not ray length); camera frame x right, y down, z forward.
#pragma once

#include "monst3r/common.h"

namespace monst3r {

// Back-project pixel (x, y) with z-depth `d` into the camera frame: out = d * K^-1 [x, y, 1],
// K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]].
MONST3R_HD void unproject_pixel(float x, float y, float d, float fx, float fy, float cx, float cy,
                                float* out) {
  out[0] = (x - cx) * (1.0f / fx) * d;
  out[1] = (y - cy) * (1.0f / fy) * d;
  out[2] = d;
}

// Single focal f (the MonST3R camera): fx = fy = f.
MONST3R_HD void unproject_pixel(float x, float y, float d, float f, float cx, float cy,
                                float* out) {
  unproject_pixel(x, y, d, f, f, cx, cy, out);
}

// World point of pixel (x, y) with z-depth `d`: out = R · d K^-1 [x, y, 1] + t, where
// cam_to_world is a row-major 4x4 (or 3x4) [R | t] (its last row is not read).
MONST3R_HD void pixel_to_world(float x, float y, float d, float fx, float fy, float cx, float cy,
                               const float* cam_to_world, float* out) {
  float c[3];
  unproject_pixel(x, y, d, fx, fy, cx, cy, c);
  const float* m = cam_to_world;
  for (int i = 0; i < 3; ++i)
    out[i] = m[4 * i] * c[0] + m[4 * i + 1] * c[1] + m[4 * i + 2] * c[2] + m[4 * i + 3];
}

}  // namespace monst3r
