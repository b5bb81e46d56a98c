// CUDA twin of the pair moments (monst3r/moments.h): one block per set of pairs, each thread
// accumulates a strided subset in registers, then a fixed-order tree reduction in shared memory.
#include <cuda_runtime.h>

#include "monst3r/moments.h"

namespace monst3r {
namespace {

constexpr int kThreads = 256;

__global__ void pair_moments_kernel(const float* __restrict__ x, const float* __restrict__ y,
                                    const float* __restrict__ weights, int64_t points,
                                    double* __restrict__ out) {
  __shared__ double red[kThreads * kPairMoments];
  const int64_t b = blockIdx.x;
  const float* xb = x + 3 * b * points;
  const float* yb = y + 3 * b * points;
  const float* wb = weights ? weights + b * points : nullptr;
  double acc[kPairMoments];
  for (int m = 0; m < kPairMoments; ++m) acc[m] = 0.0;
  for (int64_t k = threadIdx.x; k < points; k += kThreads) accumulate_pair_moments(xb, yb, wb, k, acc);
  for (int m = 0; m < kPairMoments; ++m) red[threadIdx.x * kPairMoments + m] = acc[m];
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half)
      for (int m = 0; m < kPairMoments; ++m)
        red[threadIdx.x * kPairMoments + m] += red[(threadIdx.x + half) * kPairMoments + m];
    __syncthreads();
  }
  if (threadIdx.x < kPairMoments) out[b * kPairMoments + threadIdx.x] = red[threadIdx.x];
}

}  // namespace

std::string pair_moments_cuda(const float* x, const float* y, const float* weights,
                              int64_t batch, int64_t points, double* out, void* stream) {
  if (batch == 0) return "";
  if (batch > 2147483647) return "too many sets of pairs for one launch";
  pair_moments_kernel<<<static_cast<unsigned>(batch), kThreads, 0,
                        static_cast<cudaStream_t>(stream)>>>(x, y, weights, points, out);
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? std::string() : std::string(cudaGetErrorString(err));
}

}  // namespace monst3r
