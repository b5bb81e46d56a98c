// Current-device queries behind monst3r::DeviceGuard (monst3r/cuda_args.h).
#include <cuda_runtime.h>

#include "monst3r/kernels.h"

namespace monst3r {
namespace {

std::string text(cudaError_t err) {
  if (err == cudaSuccess) return "";
  cudaGetLastError();  // clear the (non-sticky) error so that later launches start clean
  return cudaGetErrorString(err);
}

}  // namespace

std::string cuda_get_device(int* device) { return text(cudaGetDevice(device)); }

std::string cuda_set_device(int device) { return text(cudaSetDevice(device)); }

}  // namespace monst3r
