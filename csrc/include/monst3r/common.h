// Shared macros for code compiled by both the host compiler and nvcc.
#pragma once

#if defined(__CUDACC__)
#define MONST3R_HD __host__ __device__ __forceinline__
#else
#define MONST3R_HD inline
#endif

#include <cstdint>

#include <cmath>

namespace monst3r {
// Overloads that pick the single- or double-precision routine on host and device alike.
MONST3R_HD float m_exp(float x) { return expf(x); }
MONST3R_HD double m_exp(double x) { return exp(x); }
MONST3R_HD float m_sqrt(float x) { return sqrtf(x); }
MONST3R_HD double m_sqrt(double x) { return sqrt(x); }
MONST3R_HD float m_abs(float x) { return fabsf(x); }
MONST3R_HD double m_abs(double x) { return fabs(x); }
}  // namespace monst3r
