// Warp reductions shared by the CUDA kernels (csrc/cuda/*.cu; CUDA code, nvcc only).
#pragma once

#ifndef __CUDACC__
#error "monst3r/cuda_reduce.h is CUDA device code: include it from csrc/cuda/*.cu only"
#endif

namespace monst3r {

// Sum of v over the 32 lanes of a full warp, returned in lane 0 (the other lanes get partial
// sums). Every lane of the warp must call it (full mask).
__device__ __forceinline__ double warp_sum(double v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

}  // namespace monst3r
