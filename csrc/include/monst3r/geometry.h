// Per-pixel camera geometry, written once for the CPU loops and the CUDA kernels.
//
// Conventions (MonST3R / DUSt3R): pixel (x, y) = (column, row), integer coordinates at pixel
// centres; pinhole K = [[f, 0, cx], [0, f, cy], [0, 0, 1]] with a single focal f (pixels);
// depth is z-depth (not ray length); camera frame x right, y down, z forward.
#pragma once

#include "monst3r/common.h"

namespace monst3r {

// Back-project pixel (x, y) with z-depth `d` into the camera frame: out = d * K^-1 [x, y, 1].
MONST3R_HD void unproject_pixel(float x, float y, float d, float f, float cx, float cy,
                                float* out) {
  const float inv_f = 1.0f / f;
  out[0] = (x - cx) * inv_f * d;
  out[1] = (y - cy) * inv_f * d;
  out[2] = d;
}

}  // namespace monst3r
