// Weighted moments of pixel-aligned point pairs, the per-pixel part of a weighted Umeyama / Sim(3)
// registration (the 3x3 closed form runs in Python: monst3r_rt.geometry.umeyama). Written once
// for the OpenMP loop (csrc/cpu/moments.cpp) and the CUDA kernel (csrc/cuda/moments.cu).
//
// For pairs (x_k, y_k) of 3-D points with weights w_k, one moment vector is 17 doubles:
//   [0]      Σ w                  [1..3]  Σ w·x         [4..6]  Σ w·y
//   [7..15]  Σ w·x yᵀ (row-major: [7 + 3a + b] = Σ w·x_a·y_b)        [16]  Σ w·|x|²
// A pair with any non-finite coordinate or weight is skipped (masked predictions). Sums are in
// double whatever the input type; the products are formed in double, so float32 and float64
// inputs holding the same values give the same moments.
#pragma once

#include <cstdint>
#include <string>

#include "monst3r/common.h"

namespace monst3r {

constexpr int kPairMoments = 17;

MONST3R_HD bool m_isfinite(double v) {
#ifdef __CUDA_ARCH__
  return isfinite(v);
#else
  return std::isfinite(v);
#endif
}

// Add pair k of x (P,3), y (P,3) with weight `w` (1 when weights are absent) to acc[17].
template <typename T>
MONST3R_HD void accumulate_pair_moments(const T* x, const T* y, const T* weights, int64_t k,
                                        double* acc) {
  const double w = weights ? static_cast<double>(weights[k]) : 1.0;
  const double x0 = x[3 * k], x1 = x[3 * k + 1], x2 = x[3 * k + 2];
  const double y0 = y[3 * k], y1 = y[3 * k + 1], y2 = y[3 * k + 2];
  if (!(m_isfinite(w) && m_isfinite(x0) && m_isfinite(x1) && m_isfinite(x2) && m_isfinite(y0) &&
        m_isfinite(y1) && m_isfinite(y2)))
    return;
  const double wx[3] = {w * x0, w * x1, w * x2};
  const double yv[3] = {y0, y1, y2};
  acc[0] += w;
  for (int a = 0; a < 3; ++a) {
    acc[1 + a] += wx[a];
    acc[4 + a] += w * yv[a];
    for (int b = 0; b < 3; ++b) acc[7 + 3 * a + b] += wx[a] * yv[b];
  }
  acc[16] += wx[0] * x0 + wx[1] * x1 + wx[2] * x2;
}

// x, y: (B,P,3)   B sets of P point pairs, C-contiguous
// weights: (B,P)  per-pair weights, or null for 1
// out: (B,17)     moments of each set (layout above)
// threads: OpenMP threads (0 = the core's setting). The sum is taken over fixed chunks of pairs
// in a fixed order, so the result does not depend on the number of threads.
template <typename T>
void pair_moments_cpu(const T* x, const T* y, const T* weights, int64_t batch, int64_t points,
                      double* out, int threads = 0);

// CUDA twin (float32 inputs), every pointer device memory; one block per set, reduced in a fixed
// order (deterministic). `stream` is a cudaStream_t. Returns "" or the CUDA error text. Declared
// in every build, defined only with MONST3R_RT_WITH_CUDA: call it from CudaArgs::launch.
std::string pair_moments_cuda(const float* x, const float* y, const float* weights,
                              int64_t batch, int64_t points, double* out, void* stream);

}  // namespace monst3r
