// Normal equations of a robust Sim(3) registration of pixel-aligned point pairs: the tracking step
// of the streaming mode (python/monst3r_rt/stream/tracking.py runs the Gauss-Newton / IRLS loop on
// the 7x7 system in NumPy). Written once for the OpenMP loop (csrc/cpu/track.cpp) and the CUDA
// kernel (csrc/cuda/track.cu).
//
// Point p: src_p (frame t's camera), dst_p (world), weight w_p >= 0, inverse noise scale
// σ_p = inv_sigma_p > 0 (e.g. 1/depth: residuals relative to depth). Current pose T = (s, R, t):
//   x'_p = s R src_p + t,   e_p = x'_p − dst_p,   r_p = σ_p e_p  (normalised residual, R³).
// Huber threshold k on ‖r_p‖: IRLS weight h_p = 1 if ‖r_p‖ <= k else k/‖r_p‖;
//   cost_p = w_p ρ(‖r_p‖),  ρ(a) = ½a² (a <= k), k(a − ½k) (a > k).
// Left-multiplicative update ξ = (ω, v, λ) ∈ R⁷: x'' = e^λ Exp(ω) x' + v, so at ξ = 0
//   J_p = ∂r_p/∂ξ = σ_p [ −[x'_p]× | I₃ | x'_p ]   (3x7),
//   H = Σ w_p h_p J_pᵀ J_p (7x7),   g = Σ w_p h_p J_pᵀ r_p (7)  (g = ∇ Σ cost_p at ξ = 0).
// With c_p = w_p h_p σ_p² and x = x'_p, e = e_p the blocks are closed forms of a few moments:
//   H_ωω = Σ c (|x|² I − x xᵀ),  H_ωv = Σ c [x]×,  H_ωλ = 0,  H_vv = Σ c I,  H_vλ = Σ c x,
//   H_λλ = Σ c |x|²,   g = Σ c [x × e; e; x·e].
// A point is used when w_p > 0, σ_p > 0 and w_p, σ_p, src_p, dst_p are all finite (0 weight,
// masked or NaN points are ignored); count = used points, inliers = used points with ‖r_p‖ <= k.
//
// Anisotropic residual (optional per-point axis a_p, e.g. the keyframe pixel's viewing ray in the
// dst/world frame, and an axial weight w_a ∈ (0, 1]): with â = a_p/‖a_p‖, β = 1 − √w_a and
// P = I − β â âᵀ (P² = I − γ â âᵀ, γ = 1 − w_a),
//   r_p = σ_p P e_p   (the part along â scaled by √w_a, the perpendicular part unchanged),
//   J_p = σ_p P [ −[x]× | I₃ | x ],
// so with u = J₀ᵀ â = (x × â, â, x·â) ∈ R⁷ and e' = P² e:
//   H = H_iso − Σ c γ u uᵀ,   g = Σ c [x × e'; e'; x·e'].
// The point is also unused when a_p is non-finite or zero. No axis (nullptr) is the isotropic
// residual, computed by the shorter loop (20 sums); the same numbers as an axis with w_a = 1.
//
// Per-point sums (kSim3Acc doubles, accumulated in double whatever the input type):
//   [0] Σc   [1..3] Σc x   [4..9] Σc x xᵀ (xx, xy, xz, yy, yz, zz)   [10..16] g
//   [17] cost   [18] count   [19] inliers   (the isotropic loop: these kSim3AccIso sums only)
//   [20..47] Σ c γ u uᵀ, upper triangle row by row ((0,0), (0,1), .. (0,6), (1,1), .. (6,6))
//   (zero without an axis).
// Expanded output (kSim3Out doubles): [0..48] H (7x7 row-major, symmetric), [49..55] g,
//   [56] cost, [57] count, [58] inliers.
#pragma once

#include <cstdint>
#include <string>

#include "monst3r/common.h"
#include "monst3r/moments.h"  // m_isfinite

// Full unrolling of the fixed 7x7 loop of the axis sums (as MONST3R_LM_UNROLL in monst3r/lm.h):
// the CPU's loop over points vectorises and the CUDA accumulators stay in registers.
#if defined(__CUDACC__)
#define MONST3R_TRACK_UNROLL _Pragma("unroll")
#elif defined(__GNUC__) && !defined(__clang__)
#define MONST3R_TRACK_UNROLL _Pragma("GCC unroll 16")
#else
#define MONST3R_TRACK_UNROLL
#endif

namespace monst3r {

constexpr int kSim3AccIso = 20;  // per-point sums of the isotropic residual (layout above)
constexpr int kSim3Acc = 48;     // per-point sums with an axis (layout above)
constexpr int kSim3Out = 59;  // expanded normal equations (layout above)

// The current similarity as one 3x4 map: x' = sR·x + t (sR = s·R, row-major).
struct Sim3Pose {
  double sR[9];
  double t[3];
};

// The anisotropic residual's constants: β = 1 − √w_a, γ = 1 − w_a (layout above).
struct Sim3Axial {
  double beta;
  double gamma;
};

MONST3R_HD Sim3Axial sim3_axial(double axial_weight) {
  return {1.0 - m_sqrt(axial_weight), 1.0 - axial_weight};
}

// Adds point k of src (M,3), dst (M,3), weight (M,), inv_sigma (M,) to acc: kSim3AccIso sums when
// kAxis is false (axis unused), kSim3Acc sums with the axis (M,3) and axial constants when true.
template <bool kAxis, typename T>
MONST3R_HD void accumulate_sim3_point(const T* src, const T* dst, const T* weight,
                                      const T* inv_sigma, const T* axis, Sim3Axial axial,
                                      int64_t k, const Sim3Pose& pose, double huber,
                                      double* acc) {
  double w = weight[k], sig = inv_sigma[k];
  double p0 = src[3 * k], p1 = src[3 * k + 1], p2 = src[3 * k + 2];
  double q0 = dst[3 * k], q1 = dst[3 * k + 1], q2 = dst[3 * k + 2];
  bool use = w > 0.0 && sig > 0.0 && m_isfinite(w) && m_isfinite(sig) && m_isfinite(p0) &&
             m_isfinite(p1) && m_isfinite(p2) && m_isfinite(q0) && m_isfinite(q1) &&
             m_isfinite(q2);
  double n0 = 0.0, n1 = 0.0, n2 = 0.0;  // â (axis runs only)
  if (kAxis) {
    n0 = axis[3 * k], n1 = axis[3 * k + 1], n2 = axis[3 * k + 2];
    const double len2 = n0 * n0 + n1 * n1 + n2 * n2;
    use = use && len2 > 0.0 && m_isfinite(len2);
    const double inv = 1.0 / m_sqrt(use ? len2 : 1.0);
    n0 *= inv, n1 *= inv, n2 *= inv;  // zeroed below when unused
  }
  if (!use)  // selects: adds exact zeros
    w = 0.0, sig = 0.0, p0 = p1 = p2 = q0 = q1 = q2 = 0.0, n0 = n1 = n2 = 0.0;
  const double* a = pose.sR;
  const double x0 = a[0] * p0 + a[1] * p1 + a[2] * p2 + pose.t[0];
  const double x1 = a[3] * p0 + a[4] * p1 + a[5] * p2 + pose.t[1];
  const double x2 = a[6] * p0 + a[7] * p1 + a[8] * p2 + pose.t[2];
  double e0 = x0 - q0, e1 = x1 - q1, e2 = x2 - q2;
  if (kAxis) {  // e ← P e (the residual / σ), norm below; then e ← P e = P² e for the gradient
    const double pe = axial.beta * (n0 * e0 + n1 * e1 + n2 * e2);
    e0 -= pe * n0, e1 -= pe * n1, e2 -= pe * n2;
  }
  const double rn = sig * m_sqrt(e0 * e0 + e1 * e1 + e2 * e2);  // ‖r‖ (0 when unused)
  if (kAxis) {
    const double pe = axial.beta * (n0 * e0 + n1 * e1 + n2 * e2);
    e0 -= pe * n0, e1 -= pe * n1, e2 -= pe * n2;
  }
  const bool inlier = rn <= huber;
  const double h = inlier ? 1.0 : huber / rn;
  const double c = w * h * sig * sig;
  acc[0] += c;
  acc[1] += c * x0, acc[2] += c * x1, acc[3] += c * x2;
  acc[4] += c * x0 * x0, acc[5] += c * x0 * x1, acc[6] += c * x0 * x2;
  acc[7] += c * x1 * x1, acc[8] += c * x1 * x2, acc[9] += c * x2 * x2;
  acc[10] += c * (x1 * e2 - x2 * e1);  // x × e
  acc[11] += c * (x2 * e0 - x0 * e2);
  acc[12] += c * (x0 * e1 - x1 * e0);
  acc[13] += c * e0, acc[14] += c * e1, acc[15] += c * e2;
  acc[16] += c * (x0 * e0 + x1 * e1 + x2 * e2);
  acc[17] += w * (inlier ? 0.5 * rn * rn : huber * (rn - 0.5 * huber));
  acc[18] += use ? 1.0 : 0.0;
  acc[19] += use && inlier ? 1.0 : 0.0;
  if (kAxis) {  // Σ c γ u uᵀ, u = (x × â, â, x·â)
    const double u[7] = {x1 * n2 - x2 * n1, x2 * n0 - x0 * n2, x0 * n1 - x1 * n0, n0, n1, n2,
                         x0 * n0 + x1 * n1 + x2 * n2};
    const double cg = c * axial.gamma;
    MONST3R_TRACK_UNROLL
    for (int i = 0; i < 7; ++i) {
      const double ci = cg * u[i];
      const int row = kSim3AccIso + 7 * i - i * (i - 1) / 2 - i;  // index of (i, i)
      MONST3R_TRACK_UNROLL
      for (int j = i; j < 7; ++j) acc[row + j] += ci * u[j];
    }
  }
}

// acc[kSim3Acc] (summed; entries from kSim3AccIso on zero without an axis) -> out[kSim3Out].
MONST3R_HD void expand_sim3_normal_equations(const double* acc, double* out) {
  double* H = out;
  for (int i = 0; i < 49; ++i) H[i] = 0.0;
  const double c = acc[0], cx = acc[1], cy = acc[2], cz = acc[3];
  const double xx = acc[4], xy = acc[5], xz = acc[6], yy = acc[7], yz = acc[8], zz = acc[9];
  const double sq = xx + yy + zz;
  // ωω = Σc (|x|² I − x xᵀ)
  const double ww[9] = {sq - xx, -xy, -xz, -xy, sq - yy, -yz, -xz, -yz, sq - zz};
  // ωv = Σc [x]× = [[0, −z, y], [z, 0, −x], [−y, x, 0]]
  const double wv[9] = {0.0, -cz, cy, cz, 0.0, -cx, -cy, cx, 0.0};
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) {
      H[7 * i + j] = ww[3 * i + j];
      H[7 * i + 3 + j] = wv[3 * i + j];
      H[7 * (3 + j) + i] = wv[3 * i + j];
    }
  const double cxyz[3] = {cx, cy, cz};
  for (int i = 0; i < 3; ++i) {
    H[7 * (3 + i) + 3 + i] = c;
    H[7 * (3 + i) + 6] = cxyz[i];
    H[7 * 6 + 3 + i] = cxyz[i];
  }
  H[48] = sq;
  int m = kSim3AccIso;  // the anisotropic correction (exact zeros without an axis)
  for (int i = 0; i < 7; ++i)
    for (int j = i; j < 7; ++j, ++m) {
      H[7 * i + j] -= acc[m];
      if (j != i) H[7 * j + i] -= acc[m];
    }
  for (int i = 0; i < 7; ++i) out[49 + i] = acc[10 + i];
  out[56] = acc[17], out[57] = acc[18], out[58] = acc[19];
}

// src, dst: (M,3); weight, inv_sigma: (M,); all C-contiguous float32 host arrays; axis: (M,3)
// or nullptr (isotropic), axial_weight ∈ (0, 1] (unused without an axis; checked by the caller).
// out: kSim3Out doubles (layout above). huber > 0 (may be +inf: plain least squares).
// threads: OpenMP threads (0 = the core's setting). Summed in fixed chunks in a fixed order
// (monst3r/chunked_sum.h): the result does not depend on the number of threads.
void sim3_normal_equations_cpu(const float* src, const float* dst, const float* weight,
                               const float* inv_sigma, const float* axis, double axial_weight,
                               int64_t points, const Sim3Pose& pose, double huber, double* out,
                               int threads = 0);

// CUDA twin, every array pointer device memory: kSim3Blocks blocks of kSim3Threads threads (fewer
// for small M) write one row each of partials (kSim3Blocks, kSim3Acc), then one block adds the rows
// in a fixed order and expands them into out (kSim3Out,) (deterministic, no atomics). `stream` is
// a cudaStream_t. Returns "" or the CUDA error text. Declared in every build, defined only with
// MONST3R_RT_WITH_CUDA: call it from CudaArgs::launch.
constexpr int kSim3Threads = 256;
constexpr int kSim3Blocks = 256;
// axis: (M,3) device array or nullptr (isotropic: the shorter kernel; partial rows from
// kSim3AccIso on are then not written and not read).
std::string sim3_normal_equations_cuda(const float* src, const float* dst, const float* weight,
                                       const float* inv_sigma, const float* axis,
                                       double axial_weight, int64_t points, const Sim3Pose& pose,
                                       double huber, double* partials, double* out, void* stream);

}  // namespace monst3r
