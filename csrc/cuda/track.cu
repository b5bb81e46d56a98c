// CUDA twin of the Sim(3) normal equations (monst3r/track.h): each thread accumulates a
// grid-strided subset of the points in registers, warps reduce by shuffles, each block writes its
// row of partial sums; a single block then adds the rows in block order and expands them.
// Deterministic (fixed grid for a given M, fixed reduction order, no atomics).
#include <cuda_runtime.h>

#include "monst3r/cuda_reduce.h"
#include "monst3r/track.h"

namespace monst3r {
namespace {

constexpr int kWarps = kSim3Threads / 32;
static_assert(kSim3Threads % 32 == 0 && kSim3Threads <= 1024, "whole warps per block");

// kN = kSim3AccIso sums without an axis, kSim3Acc with one; rows of kSim3Acc entries, the
// first kN written.
template <bool kAxis, int kN>
__global__ void __launch_bounds__(kSim3Threads)
    sim3_partials_kernel(const float* __restrict__ src, const float* __restrict__ dst,
                         const float* __restrict__ weight, const float* __restrict__ inv_sigma,
                         const float* __restrict__ axis, Sim3Axial axial, int64_t points,
                         Sim3Pose pose, double huber, double* __restrict__ partials) {
  static_assert(kN <= kSim3Threads, "one thread per sum");
  double acc[kN];
#pragma unroll
  for (int m = 0; m < kN; ++m) acc[m] = 0.0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kSim3Threads;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(kSim3Threads) + threadIdx.x; k < points;
       k += stride)
    accumulate_sim3_point<kAxis>(src, dst, weight, inv_sigma, axis, axial, k, pose, huber, acc);

  __shared__ double rows[kWarps][kN];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int m = 0; m < kN; ++m) {  // constant indices keep acc in registers
    const double s = warp_sum(acc[m]);
    if (lane == 0) rows[warp][m] = s;
  }
  __syncthreads();
  if (threadIdx.x < kN) {
    double s = 0.0;
    for (int w = 0; w < kWarps; ++w) s += rows[w][threadIdx.x];
    partials[blockIdx.x * kSim3Acc + threadIdx.x] = s;
  }
}

// One block of 32 threads: entry m < sums = Σ over the `blocks` rows, in row order (the rest
// zero); then expanded.
__global__ void sim3_finish_kernel(const double* __restrict__ partials, int blocks, int sums,
                                   double* __restrict__ out) {
  __shared__ double acc[kSim3Acc];
  for (int m = threadIdx.x; m < kSim3Acc; m += blockDim.x) {
    double s = 0.0;
    if (m < sums)
      for (int b = 0; b < blocks; ++b) s += partials[b * kSim3Acc + m];
    acc[m] = s;
  }
  __syncthreads();
  if (threadIdx.x == 0) expand_sim3_normal_equations(acc, out);
}

}  // namespace

std::string sim3_normal_equations_cuda(const float* src, const float* dst, const float* weight,
                                       const float* inv_sigma, const float* axis,
                                       double axial_weight, int64_t points, const Sim3Pose& pose,
                                       double huber, double* partials, double* out,
                                       void* stream) {
  const auto st = static_cast<cudaStream_t>(stream);
  const int64_t wanted = (points + kSim3Threads - 1) / kSim3Threads;
  const int blocks = static_cast<int>(wanted < kSim3Blocks ? wanted : kSim3Blocks);
  const Sim3Axial axial = sim3_axial(axial_weight);
  if (blocks > 0 && axis)
    sim3_partials_kernel<true, kSim3Acc><<<blocks, kSim3Threads, 0, st>>>(
        src, dst, weight, inv_sigma, axis, axial, points, pose, huber, partials);
  else if (blocks > 0)
    sim3_partials_kernel<false, kSim3AccIso><<<blocks, kSim3Threads, 0, st>>>(
        src, dst, weight, inv_sigma, axis, axial, points, pose, huber, partials);
  sim3_finish_kernel<<<1, 32, 0, st>>>(partials, blocks, axis ? kSim3Acc : kSim3AccIso, out);
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? std::string() : std::string(cudaGetErrorString(err));
}

}  // namespace monst3r
