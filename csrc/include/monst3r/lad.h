// Per-pixel sums of the official LAD depth alignment (eval: Adam on Σ|s·p + t − g| over every
// valid pixel, monst3r_rt.eval.depth). Written once here for the OpenMP loops of csrc/cpu/lad.cpp.
// Evaluation-only host reduction: no CUDA twin (the scoring runs on NumPy arrays in host memory).
//
// For a pixel with prediction p and ground truth g at (s, t): r = (s·p + t) − g, formed in double
// in that order (as NumPy's s*p + t - g), and σ = sign(r) ∈ {−1, 0, +1}, 0 at r == 0 as the
// gradient of torch.abs. The Adam step needs Σσ·p (d/ds), Σσ (d/dt) and Σσ·r = Σ|r| (the loss).
// The partition pass splits the pixels around a centre (s, t): "fixed" when |r| > ρ(|p| + 1)
// (their σ cannot change while |x − centre|∞ ≤ ρ, so their share is linear: Σσ·p, Σσ, Σσ·g) and
// "active" otherwise. Non-finite inputs are the caller's to exclude.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>

namespace monst3r {

constexpr int kLadSums = 3;       // [Σσ·p, Σσ, Σσ·r] over the given pixels
constexpr int kLadPartition = 4;  // [Σσ·p, Σσ, Σσ·g] over the fixed pixels, active count

inline double lad_residual(double p, double g, double s, double t) { return (s * p + t) - g; }

inline double lad_sign(double r) { return static_cast<double>((r > 0.0) - (r < 0.0)); }

// Adds pixel (p, g) at (s, t) to acc[kLadSums].
inline void lad_accumulate(double p, double g, double s, double t, double* acc) {
  const double r = lad_residual(p, g, s, t), sg = lad_sign(r);
  acc[0] += sg * p;
  acc[1] += sg;
  acc[2] += sg * r;
}

// True when the pixel is active around centre (s, t) with box half-width rho; else adds its fixed
// share to acc[0..2] (acc[kLadPartition]; acc[3], the active count, is the caller's).
inline bool lad_partition_pixel(double p, double g, double s, double t, double rho, double* acc) {
  const double r = lad_residual(p, g, s, t);
  if (std::fabs(r) <= rho * (std::fabs(p) + 1.0)) return true;
  const double sg = lad_sign(r);
  acc[0] += sg * p;
  acc[1] += sg;
  acc[2] += sg * g;
  return false;
}

// p, g: (M,) values; out[kLadSums] = [Σσ·p, Σσ, Σ|r|] at (s, t). Summed in fixed chunks in a fixed
// order (monst3r/chunked_sum.h): the result does not depend on `threads` (0 = the core's setting).
template <typename T>
void lad_sums_cpu(const T* p, const T* g, int64_t m, double s, double t, double* out,
                  int threads = 0);

// Partition pass around (s, t): fixed[3] = [Σσ·p, Σσ, Σσ·g] over the fixed pixels (deterministic
// as lad_sums_cpu); then alloc(n_active, &active_p, &active_g) is called once for two buffers of
// n_active values, which are filled with the active pixels' values in input order. Returns
// n_active. Two passes over the pixels (sums and counts per chunk, then the copy).
template <typename T>
int64_t lad_partition_cpu(const T* p, const T* g, int64_t m, double s, double t, double rho,
                          double* fixed, const std::function<void(int64_t, T**, T**)>& alloc,
                          int threads = 0);

}  // namespace monst3r
