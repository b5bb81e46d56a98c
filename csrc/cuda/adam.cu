// CUDA twin of the fused Adam step (monst3r/adam.h): one grid-stride pass over the elements.
#include <cuda_runtime.h>

#include "monst3r/adam.h"
#include "monst3r/perpixel.h"

namespace monst3r {
namespace {

template <typename T>
__global__ void adam_kernel(T* __restrict__ param, T* __restrict__ exp_avg,
                            T* __restrict__ exp_avg_sq, const T* __restrict__ grad, int64_t count,
                            AdamCoeffs<T> c) {
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < count;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x)
    adam_update(param[k], exp_avg[k], exp_avg_sq[k], grad[k], c);
}

}  // namespace

template <typename T>
std::string adam_step_cuda(T* param, T* exp_avg, T* exp_avg_sq, const T* grad, int64_t count,
                           const AdamCoeffs<T>& c, void* stream) {
  if (count <= 0) return "";
  const int threads = 256;
  const int blocks = grid_stride_blocks(count, threads);
  adam_kernel<T><<<blocks, threads, 0, static_cast<cudaStream_t>(stream)>>>(
      param, exp_avg, exp_avg_sq, grad, count, c);
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? std::string() : std::string(cudaGetErrorString(err));
}

template std::string adam_step_cuda<float>(float*, float*, float*, const float*, int64_t,
                                           const AdamCoeffs<float>&, void*);
template std::string adam_step_cuda<double>(double*, double*, double*, const double*, int64_t,
                                            const AdamCoeffs<double>&, void*);

}  // namespace monst3r
