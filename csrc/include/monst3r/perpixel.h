// Launchers of the per-pixel ops of the alignment's outer loop: the fused Adam step over the
// per-pixel parameters and the world points of depth maps. Math in monst3r/adam.h and
// monst3r/geometry.h; CPU twins in csrc/cpu/{adam,world_points}.cpp (OpenMP), CUDA twins in
// csrc/cuda/{adam,world_points}.cu.
#pragma once

#include <cstdint>
#include <string>

#include "monst3r/adam.h"

namespace monst3r {

// One Adam step over `count` contiguous elements, in place: param, exp_avg, exp_avg_sq updated
// from grad with the coefficients of monst3r/adam.h. T = float or double.
template <typename T>
void adam_step_cpu(T* param, T* exp_avg, T* exp_avg_sq, const T* grad, int64_t count,
                   const AdamCoeffs<T>& c);

// depth (N,H,W) z-depth, cam_to_world (N,4,4) row-major [R | t] (last row not read),
// intrinsics (N,3,3) row-major K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] (only fx, fy, cx, cy
// read) -> points (N,H,W,3) world frame, same unit as depth. Pixel (x, y) = (column, row).
void world_points_cpu(const float* depth, const float* cam_to_world, const float* intrinsics,
                      float* points, int64_t n, int64_t h, int64_t w);

// Blocks of `threads` for a grid-stride loop over `total` items (capped; the loop covers the rest).
inline int grid_stride_blocks(int64_t total, int threads) {
  const int64_t wanted = (total + threads - 1) / threads;
  return static_cast<int>(wanted < 65535 * 8 ? wanted : 65535 * 8);
}

// CUDA twins: every pointer is device memory; `stream` is a cudaStream_t (0 = legacy default).
// Return an empty string on success, else the CUDA error text. Declared in every build, defined
// only with MONST3R_RT_WITH_CUDA: call them from CudaArgs::launch (monst3r/cuda_args.h).
template <typename T>
std::string adam_step_cuda(T* param, T* exp_avg, T* exp_avg_sq, const T* grad, int64_t count,
                           const AdamCoeffs<T>& c, void* stream);

std::string world_points_cuda(const float* depth, const float* cam_to_world,
                              const float* intrinsics, float* points, int64_t n, int64_t h,
                              int64_t w, void* stream);

}  // namespace monst3r
