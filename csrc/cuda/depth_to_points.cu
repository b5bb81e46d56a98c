#include <cuda_runtime.h>

#include "monst3r/geometry.h"
#include "monst3r/kernels.h"

namespace monst3r {
namespace {

__global__ void depth_to_points_kernel(const float* __restrict__ depth,
                                       const float* __restrict__ focal,
                                       const float* __restrict__ pp, float* __restrict__ points,
                                       int64_t n, int64_t h, int64_t w) {
  const int64_t total = n * h * w;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t view = idx / (h * w);
    const int64_t pix = idx - view * h * w;
    const float y = static_cast<float>(pix / w);
    const float x = static_cast<float>(pix % w);
    unproject_pixel(x, y, depth[idx], focal[view], pp[2 * view], pp[2 * view + 1],
                    points + 3 * idx);
  }
}

}  // namespace

std::string depth_to_points_cuda(const float* depth, const float* focal, const float* pp,
                                 float* points, int64_t n, int64_t h, int64_t w, void* stream) {
  const int64_t total = n * h * w;
  if (total == 0) return "";
  const int threads = 256;
  const int64_t wanted = (total + threads - 1) / threads;
  const int blocks = static_cast<int>(wanted < 65535 * 8 ? wanted : 65535 * 8);
  depth_to_points_kernel<<<blocks, threads, 0, static_cast<cudaStream_t>(stream)>>>(
      depth, focal, pp, points, n, h, w);
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? std::string() : std::string(cudaGetErrorString(err));
}

int cuda_device_count(std::string* reason) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    int driver = 0;
    if (reason) {
      *reason = (cudaDriverGetVersion(&driver) == cudaSuccess && driver == 0)
                    ? "no NVIDIA driver found"
                    : cudaGetErrorString(err);
    }
    cudaGetLastError();  // clear the (non-sticky) error so later calls start clean
    return 0;
  }
  if (count == 0 && reason) *reason = "no CUDA device found";
  return count;
}

std::string cuda_device_name(int index) {
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, index) != cudaSuccess) return "";
  return std::string(prop.name) + " (sm_" + std::to_string(prop.major) +
         std::to_string(prop.minor) + ")";
}

int cuda_runtime_version() {
  int v = 0;
  cudaRuntimeGetVersion(&v);
  return v;
}

int cuda_driver_version() {
  int v = 0;
  if (cudaDriverGetVersion(&v) != cudaSuccess) return 0;
  return v;
}

}  // namespace monst3r
