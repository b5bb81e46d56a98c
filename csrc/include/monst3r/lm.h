// Levenberg–Marquardt (IRLS Gauss–Newton) accumulation for the global alignment, per pixel.
//
// Local perturbations (all left-multiplied, world frame):
//   frame v : R_v ← exp([δθ]) R_v, T_v ← T_v + δT, f_v ← f_v·exp(δlogf)         (7 = θ, T, logf)
//   edge e  : R_e ← exp([δφ]) R_e, t_e ← t_e + δt, σ_e ← σ_e·exp(δs)             (7 = φ, t, s)
//   pixel   : log D ← log D + δℓ
// Residual r = X − Y, X = R_v c + T_v = a + T_v, Y = σ R_e pred + t_e = b + t_e. Jacobians:
//   J_ℓ = a,  J_f = [−[a]×, I, n] with n = R_v(−c_x, −c_y, 0),  J_e = [[b]×, −I, −b].
// IRLS weight W = w / max(‖r‖, eps). The per-pixel depth is eliminated by the Schur complement:
// with H = Σ_j W_j‖a‖² (the depth's diagonal) the kernel accumulates, per frame, per (edge,
// side) and per edge, the exact blocks of the reduced system except the coupling between two
// different edges through a shared depth (formed in lm.py from lm_cross_features).
#pragma once

#include <cstdint>

#include "monst3r/align.h"

namespace monst3r {

// Per (edge, side) accumulator layout (doubles):
//   [0] ΣW, [1..3] ΣW b, [4..9] ΣW bbᵀ (xx xy xz yy yz zz), [10..37] Σ W²/H u uᵀ (upper 7×7,
//   row-major), u = [a×b, −a, −a·b], [38..58] ΣW M (M = (I − κaaᵀ) J_f, 3×7 row-major),
//   [59..121] ΣW M[i][k] b[j] at 59 + 9k + 3i + j, [122..128] reduced gradient J_eᵀ W(r − (g/H) a).
constexpr int kLmEdgeAcc = 129;
// Per frame: [0..27] upper 7×7 of ΣWsum J_fᵀ(I − κaaᵀ)J_f, [28..34] reduced gradient.
constexpr int kLmFrameAcc = 35;

// Nothing per pixel or per residual is stored: the back-substitution and the cross-edge features
// recompute W, H and g from the geometry (same eps), so the kernels' outputs are O(N + E).
struct LmOutputs {
  double* energy;     // Σ w‖r‖ (not normalised)
  double* frame_acc;  // (N, kLmFrameAcc)
  double* edge_acc;   // (E, 2, kLmEdgeAcc)
};

// Back-substitution: dl (N,HW) = −(g + Σ_j W_j a·(J_f δf + J_e δe_j)) / H, with W, H = ΣW‖a‖² and
// g = ΣW a·r recomputed per pixel exactly as lm_accumulate forms them (W rounded to T as it is in
// the accumulation's second sweep, H and g rounded to T).
template <typename T>
struct LmBacksub {
  const double* dframe;  // (N,7) θ, T, logf
  const double* dedge;   // (E,7) φ, t, s
  T* dl;                 // (N,HW)
};

// Features of the cross-edge coupling of frame v over pixels [p0, p1): for the j-th incident
// (edge, side) of v (edges in increasing order; an edge is incident to v through one side),
//   x[(4j + c)·(p1 − p0) + p − p0] = W_j(p) φ_c(p) / √H(p),  φ = (a, ‖a‖²),  0 where H = 0,
// as float32 (the coupling is one float32 GEMM x xᵀ, see lm.py). x must hold 4·k·(p1 − p0)
// floats, k = the number of incident (edge, side) pairs of v.
template <typename T>
void lm_accumulate_cpu(const AlignProblem<T>& pb, T eps, const LmOutputs& out);
template <typename T>
void lm_backsub_cpu(const AlignProblem<T>& pb, T eps, const LmBacksub<T>& bs);
template <typename T>
void lm_cross_features_cpu(const AlignProblem<T>& pb, T eps, int64_t v, int64_t p0, int64_t p1,
                           float* x);

}  // namespace monst3r
