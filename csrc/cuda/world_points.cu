// CUDA twin of world_points_cpu: one thread per pixel (grid-stride), monst3r/geometry.h math.
#include <cuda_runtime.h>

#include "monst3r/geometry.h"
#include "monst3r/perpixel.h"

namespace monst3r {
namespace {

__global__ void world_points_kernel(const float* __restrict__ depth,
                                    const float* __restrict__ cam_to_world,
                                    const float* __restrict__ intrinsics,
                                    float* __restrict__ points, int64_t n, int64_t h, int64_t w) {
  const int64_t total = n * h * w;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t view = idx / (h * w);
    const int64_t pix = idx - view * h * w;
    const float* k = intrinsics + 9 * view;
    pixel_to_world(static_cast<float>(pix % w), static_cast<float>(pix / w), depth[idx], k[0],
                   k[4], k[2], k[5], cam_to_world + 16 * view, points + 3 * idx);
  }
}

}  // namespace

std::string world_points_cuda(const float* depth, const float* cam_to_world,
                              const float* intrinsics, float* points, int64_t n, int64_t h,
                              int64_t w, void* stream) {
  const int64_t total = n * h * w;
  if (total == 0) return "";
  const int threads = 256;
  const int blocks = grid_stride_blocks(total, threads);
  world_points_kernel<<<blocks, threads, 0, static_cast<cudaStream_t>(stream)>>>(
      depth, cam_to_world, intrinsics, points, n, h, w);
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? std::string() : std::string(cudaGetErrorString(err));
}

}  // namespace monst3r
