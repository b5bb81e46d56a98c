// Levenberg–Marquardt (IRLS Gauss–Newton) accumulation for the global alignment, per pixel.
//
// Local perturbations (all left-multiplied, world frame):
//   frame v : R_v ← exp([δθ]) R_v, T_v ← T_v + δT, f_v ← f_v·exp(δlogf)         (7 = θ, T, logf)
//   edge e  : R_e ← exp([δφ]) R_e, t_e ← t_e + δt, σ_e ← σ_e·exp(δs)             (7 = φ, t, s)
//   pixel   : log D ← log D + δℓ
// Alignment residual r = X − Y, X = R_v c + T_v = a + T_v, Y = σ R_e pred + t_e = b + t_e:
//   J_ℓ = a,  J_f = [−[a]×, I, n] with n = R_v(−c_x, −c_y, 0),  J_e = [[b]×, −I, −b],
//   IRLS weight W = w / max(‖r‖, eps).
// Flow residual (official smooth-L1 on the ego-flow, spec §4.5) of a pixel of the source view v of
// (edge, side) towards the other view t: d_c = m·(ego_c − meas_c), c = x, y; rows J over
// (θ_v, T_v, logf_v, θ_t, T_t, logf_t, ℓ) (lm_flow_rows); IRLS (Huber) weight
//   ω_c = scale_side · (1 if |d_c| < 1 else 1/|d_c|), 0 when the entry is cut (loss ≥ thr) or m = 0,
// with scale_side = w_flow / count_side relative to the alignment's normalisation.
//
// The per-pixel depth is eliminated by the Schur complement. Per pixel, with
//   H = Σ_j W_j‖a‖² + Σ_flow ω J_ℓ²  (the depth's diagonal),  g = Σ_j W_j a·r + Σ_flow ω J_ℓ d,
//   b_f = Σ_j W_j J_fᵀa + Σ_flow ω J_ℓ J_v  (coupling of the depth to its frame v),
//   b_e = W_j J_eᵀa (to edge e of the j-th incident (edge, side)),
//   b_t = Σ_c ω_c J_ℓ J_t (to the flow's target frame t of the j-th incident (edge, side)),
// the reduced system gets −b bᵀ/H for every pair of these blocks. The kernels accumulate exactly:
// frame blocks, edge blocks, frame–edge blocks, frame(v)–target(t) blocks, the flow's direct blocks
// and every reduced gradient. The couplings through a shared depth of two different incident
// edges, of a target frame and an edge, and of two target frames come from a Gram matrix of per-
// pixel features (lm_cross_features), with the edge point Y replaced by the frame point X in b_e
// (exact at zero alignment residual).
//
// Frozen frames (windows): their depth is not a variable, so nothing is eliminated (1/H := 0),
// their back-substituted depth step is 0; the caller removes their pose variables.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "monst3r/align.h"
#include "monst3r/common.h"
#include "monst3r/egoflow.h"

// Full unrolling of the small fixed loops of the per-pixel functions (the CPU's loops over pixels
// vectorise only when no inner loop is left).
#if defined(__CUDACC__)
#define MONST3R_LM_UNROLL _Pragma("unroll")
#elif defined(__GNUC__) && !defined(__clang__)
#define MONST3R_LM_UNROLL _Pragma("GCC unroll 16")
#else
#define MONST3R_LM_UNROLL
#endif
// The flow rows are inlined into the CPU's vectorised loop over pixels.
#if !defined(__CUDACC__) && defined(__GNUC__)
#define MONST3R_LM_INLINE __attribute__((always_inline)) inline
#else
#define MONST3R_LM_INLINE MONST3R_HD
#endif

namespace monst3r {

// Per (edge, side) accumulator layout (doubles):
//   [0] ΣW, [1..3] ΣW b, [4..9] ΣW bbᵀ (xx xy xz yy yz zz), [10..37] Σ W²/H u uᵀ (upper 7×7,
//   row-major), u = [a×b, −a, −a·b], [38..58] ΣW M (M = J_f − a b_fᵀ/H, 3×7 row-major),
//   [59..121] ΣW M[i][k] b[j] at 59 + 9k + 3i + j, [122..128] reduced gradient J_eᵀ W(r − (g/H) a).
constexpr int kLmEdgeAcc = 129;
// Per frame: [0..27] upper 7×7 of ΣW_sum J_fᵀJ_f − b_f b_fᵀ/H, [28..34] reduced gradient
// Σ J_fᵀ ΣW r − b_f g/H (the flow's direct frame terms are in the flow accumulators).
constexpr int kLmFrameAcc = 35;
// Columns of a flow row: θ_v(3) T_v(3) logf_v, θ_t(3) T_t(3) logf_t, ℓ.
constexpr int kLmFlowCols = 15;
// Per (edge, side) flow accumulator (source frame v = edges[e][side], target t = the other):
//   [0..104] upper 14×14 of Σ ω J_vtᵀJ_vt (rows/cols θ_v T_v logf_v θ_t T_t logf_t),
//   [105..118] Σ ω d J_vt, minus Σ b_t g/H in [112..118] (the target's reduced gradient),
//   [119..167] −Σ b_f b_tᵀ/H (7×7 row-major, rows frame v, cols frame t).
constexpr int kLmFlowAcc = 168;
// Parameter block sizes (exported to Python as _core constants).
constexpr int kLmFrameVars = 7;
constexpr int kLmEdgeVars = 7;
constexpr int kLmTargetFeatures = 7;  // feature rows of one flow target frame
constexpr int kLmEdgeFeatures = 4;    // feature rows of one incident (edge, side)

// Options of the LM kernels beyond the alignment problem.
struct LmOptions {
  // Per-direction weight of the flow residuals relative to the alignment's normalisation
  // (w_flow / (count_side · norm)); {0, 0} or no flow arrays in the problem: no flow term.
  double flow_scale[2] = {0.0, 0.0};
  const uint8_t* frozen = nullptr;  // (N,) 1 = the frame's depth is fixed; null = none
};

// Nothing per pixel or per residual is stored: the back-substitution and the cross features
// recompute W, ω, H and g from the geometry (same eps), so the kernels' outputs are O(N + E).
struct LmOutputs {
  double* energy;             // Σ w‖r‖ (not normalised)
  double* frame_acc;          // (N, kLmFrameAcc)
  double* edge_acc;           // (E, 2, kLmEdgeAcc)
  double* flow_acc = nullptr;  // (E, 2, kLmFlowAcc) when the flow term is on
};

// Back-substitution: dl (N,HW) = −(g + b_f·δf_v + Σ_j b_e·δe_j + Σ_j b_t·δf_t) / H, with W, H = ΣW‖a‖²
// (+ flow) and g recomputed per pixel exactly as lm_accumulate forms them (W rounded to T as it is
// in the accumulation's second sweep, H and g rounded to T); 0 for frozen frames.
template <typename T>
struct LmBacksub {
  const double* dframe;  // (N,7) θ, T, logf
  const double* dedge;   // (E,7) φ, t, s
  T* dl;                 // (N,HW)
};

// The flow term's target frames of frame v (the other frames of its incident edges, distinct and
// increasing: the row order of lm_cross_features' target features). Host only.
inline std::vector<int64_t> lm_flow_targets(const int64_t* edges, int64_t n_edges, int64_t v) {
  std::vector<int64_t> targets;
  for (int64_t e = 0; e < n_edges; ++e)
    for (int side = 0; side < 2; ++side)
      if (edges[2 * e + side] == v) targets.push_back(edges[2 * e + 1 - side]);
  std::sort(targets.begin(), targets.end());
  targets.erase(std::unique(targets.begin(), targets.end()), targets.end());
  return targets;
}

// ---- per-pixel math (host and device) ---------------------------------------------------------

MONST3R_HD void lm_cross3(const double* x, const double* y, double* z) {
  z[0] = x[1] * y[2] - x[2] * y[1];
  z[1] = x[2] * y[0] - x[0] * y[2];
  z[2] = x[0] * y[1] - x[1] * y[0];
}

MONST3R_HD bool lm_is_frozen(const LmOptions& o, int64_t v) {
  return o.frozen != nullptr && o.frozen[v] != 0;
}

MONST3R_HD double lm_inv(double h, bool frozen) { return (!frozen && h > 0) ? 1.0 / h : 0.0; }

// Pixel p of frame v: depth D, a = R_v c, n = R_v(−c_x, −c_y, 0), c = D·K⁻¹(x, y, 1).
template <typename T>
MONST3R_HD double lm_pixel_geometry(const AlignProblem<T>& pb, int64_t v, int64_t p, double* a,
                                    double* n) {
  const T* R = pb.rot + 9 * v;
  const double f = pb.focal[v], cx = pb.pp[2 * v], cy = pb.pp[2 * v + 1];
  const double d = m_exp(static_cast<double>(pb.log_depth[v * pb.height * pb.width + p]));
  const double x = static_cast<double>(p % pb.width), y = static_cast<double>(p / pb.width);
  const double c[3] = {d * (x - cx) / f, d * (y - cy) / f, d};
  for (int k = 0; k < 3; ++k) {
    a[k] = R[3 * k] * c[0] + R[3 * k + 1] * c[1] + R[3 * k + 2] * c[2];
    n[k] = -(R[3 * k] * c[0] + R[3 * k + 1] * c[1]);
  }
  return d;
}

// b = σ_e R_e pred: the edge's point of a prediction pr (products in double).
template <typename T>
MONST3R_LM_INLINE void lm_edge_point_at(const T* Re, double s, const T* pr, double* b) {
  const double p0 = pr[0], p1 = pr[1], p2 = pr[2];
  MONST3R_LM_UNROLL
  for (int k = 0; k < 3; ++k)
    b[k] = s * (static_cast<double>(Re[3 * k]) * p0 + static_cast<double>(Re[3 * k + 1]) * p1 +
                static_cast<double>(Re[3 * k + 2]) * p2);
}

// b = σ_e R_e pred(e, side, p).
template <typename T>
MONST3R_HD void lm_edge_point(const AlignProblem<T>& pb, int64_t e, int side, int64_t p,
                              double* b) {
  lm_edge_point_at(pb.edge_rot + 9 * e, static_cast<double>(pb.edge_scale[e]),
                   pb.pts[side] + (e * pb.height * pb.width + p) * 3, b);
}

// dt = T_v − t_e (the translation part of the alignment residual of edge e seen from frame v).
template <typename T>
MONST3R_HD void lm_edge_offset(const AlignProblem<T>& pb, int64_t e, const T* Tv, double* dt) {
  for (int k = 0; k < 3; ++k)
    dt[k] = static_cast<double>(Tv[k]) - static_cast<double>(pb.edge_trans[3 * e + k]);
}

// The alignment residual r = a + dt − b = (R_v c + T_v) − (σ_e R_e pred + t_e).
MONST3R_LM_INLINE void lm_align_residual(const double* a, const double* dt, const double* b,
                                         double* r) {
  MONST3R_LM_UNROLL
  for (int k = 0; k < 3; ++k) r[k] = a[k] + dt[k] - b[k];
}

// r (lm_align_residual), ‖r‖ in *nr, and the IRLS weight W = w/max(‖r‖, eps), 0 where w = 0.
// Selects only, so that the CPU's loops over pixels vectorise; every pass that needs W (the
// accumulation, the back-substitution, the cross features; CPU and CUDA) forms it here.
MONST3R_LM_INLINE double lm_irls_weight(const double* a, const double* dt, const double* b,
                                        double wp, double eps, double* r, double* nr) {
  lm_align_residual(a, dt, b, r);
  const double n = m_sqrt(r[0] * r[0] + r[1] * r[1] + r[2] * r[2]);
  *nr = n;
  return wp == 0.0 ? 0.0 : wp / (n > eps ? n : eps);
}

// J_f (3×7, row-major) of the alignment residual.
MONST3R_HD void lm_frame_jacobian(const double* a, const double* n, double* J) {
  const double m[21] = {0,     a[2],  -a[1], 1, 0, 0, n[0],  //
                        -a[2], 0,     a[0],  0, 1, 0, n[1],  //
                        a[1],  -a[0], 0,     0, 0, 1, n[2]};
  for (int k = 0; k < 21; ++k) J[k] = m[k];
}

// Everything of one (edge, side) the flow rows need, in the math precision R = T of the problem
// (float32 problems vectorise 8 wide on the CPU; sums are in double regardless).
template <typename R>
struct LmFlowEdge {
  const R *Rrel, *trel, *Rt;  // relative pose source → target (9, 3); target camera-to-world R
  R fs, cxs, cys, ft, cxt, cyt;
  R scale, thr;
};

template <typename T>
MONST3R_HD LmFlowEdge<T> lm_flow_edge(const AlignProblem<T>& pb, int64_t e, int side,
                                      double scale) {
  const int64_t v = pb.edges[2 * e + side], t = pb.edges[2 * e + 1 - side];
  LmFlowEdge<T> fe;
  fe.Rrel = pb.flow_rot + (2 * e + side) * 9;
  fe.trel = pb.flow_trans + (2 * e + side) * 3;
  fe.Rt = pb.rot + 9 * t;
  fe.fs = pb.focal[v], fe.cxs = pb.pp[2 * v], fe.cys = pb.pp[2 * v + 1];
  fe.ft = pb.focal[t], fe.cxt = pb.pp[2 * t], fe.cyt = pb.pp[2 * t + 1];
  fe.scale = static_cast<T>(scale);
  fe.thr = pb.pixel_thr;
  return fe;
}

// The two Gauss–Newton rows of the flow residual at pixel (x, y) of depth D of the source view.
template <typename R>
struct LmFlowRows {
  R r[2];                   // d_c = m·(ego_c − meas_c)
  R w[2];                   // ω_c (0: cut or masked)
  R J[2][kLmFlowCols];      // ∂d_c / ∂(θ_v, T_v, logf_v, θ_t, T_t, logf_t, ℓ)
};

// Writes rows into an LmFlowRows (the writer interface of lm_flow_rows_to).
template <typename R>
struct LmFlowRowsRef {
  LmFlowRows<R>* rows;
  MONST3R_HD void j(int c, int k, R v) const { rows->J[c][k] = v; }
  MONST3R_HD void r(int c, R v) const { rows->r[c] = v; }
  MONST3R_HD void w(int c, R v) const { rows->w[c] = v; }
};

// The flow rows, written through `out` (j(c, k, v), r(c, v), w(c, v); each output exactly once).
// Branch-free (selects only, so that the CPU's loops over pixels vectorise). A channel with ω = 0
// (masked or cut) gets zero rows and residual. Returns whether a channel contributes.
template <typename R, class Out>
MONST3R_LM_INLINE bool lm_flow_rows_to(const LmFlowEdge<R>& fe, R x, R y, R D, R meas_x, R meas_y,
                                R mask, Out out) {
  const R s = R(1) / (D + R(1e-6));
  R p[3], a[3], q[3], ego[2];
  const R zinv = ego_flow_pixel(x, y, s, fe.fs, fe.cxs, fe.cys, fe.ft, fe.cxt, fe.cyt, fe.Rrel,
                                fe.trel, p, a, q, ego);  // monst3r/egoflow.h
  // u = R_rel p and a in the world frame (rotated by R_t), for the rotation rows
  R u[3], uw[3], aw[3];
  MONST3R_LM_UNROLL
  for (int k = 0; k < 3; ++k)
    u[k] = fe.Rrel[3 * k] * p[0] + fe.Rrel[3 * k + 1] * p[1] + fe.Rrel[3 * k + 2] * p[2];
  MONST3R_LM_UNROLL
  for (int k = 0; k < 3; ++k) {
    uw[k] = fe.Rt[3 * k] * u[0] + fe.Rt[3 * k + 1] * u[1] + fe.Rt[3 * k + 2] * u[2];
    aw[k] = fe.Rt[3 * k] * a[0] + fe.Rt[3 * k + 1] * a[1] + fe.Rt[3 * k + 2] * a[2];
  }
  const R ds = -s * s * D;  // ∂s/∂ℓ
  const R meas[2] = {meas_x, meas_y};
  bool any = false;
  MONST3R_LM_UNROLL
  for (int c = 0; c < 2; ++c) {
    const R d = (ego[c] - meas[c]) * mask;
    const R ad = d < R(0) ? -d : d;
    const bool quad = ad < R(1);
    const R loss = quad ? R(0.5) * d * d : ad - R(0.5);
    const bool on = loss < fe.thr && mask != R(0);  // official: loss ≥ pxl_thre is dropped
    any = any | on;
    out.r(c, on ? d : R(0));
    out.w(c, on ? fe.scale * (quad ? R(1) : R(1) / ad) : R(0));
    // g = ∂d_c/∂a (target camera frame), z = R_t g (world); rows of dropped entries are 0
    const R m = on ? mask : R(0);
    const R g0 = c == 0 ? m * fe.ft * zinv : R(0), g1 = c == 1 ? m * fe.ft * zinv : R(0);
    const R g2 = m * zinv * ((c == 0 ? fe.cxt : fe.cyt) - q[c] * zinv);
    R z[3];
    MONST3R_LM_UNROLL
    for (int k = 0; k < 3; ++k)
      z[k] = fe.Rt[3 * k] * g0 + fe.Rt[3 * k + 1] * g1 + fe.Rt[3 * k + 2] * g2;
    const R gr0 = g0 * fe.Rrel[0] + g1 * fe.Rrel[3] + g2 * fe.Rrel[6];
    const R gr1 = g0 * fe.Rrel[1] + g1 * fe.Rrel[4] + g2 * fe.Rrel[7];
    const R gt = g0 * fe.trel[0] + g1 * fe.trel[1] + g2 * fe.trel[2];
    // θ_v: a changes by −R_tᵀ[R_v p]× δθ  ⇒  row (R_t R_rel p) × z;  θ_t: [a]× R_tᵀ δθ  ⇒  z × R_t a
    out.j(c, 0, uw[1] * z[2] - uw[2] * z[1]);
    out.j(c, 1, uw[2] * z[0] - uw[0] * z[2]);
    out.j(c, 2, uw[0] * z[1] - uw[1] * z[0]);
    out.j(c, 3, s * z[0]), out.j(c, 4, s * z[1]), out.j(c, 5, s * z[2]);
    out.j(c, 6, -(gr0 * p[0] + gr1 * p[1]));  // ∂p/∂logf_s = (−p_x, −p_y, 0)
    out.j(c, 7, z[1] * aw[2] - z[2] * aw[1]);
    out.j(c, 8, z[2] * aw[0] - z[0] * aw[2]);
    out.j(c, 9, z[0] * aw[1] - z[1] * aw[0]);
    out.j(c, 10, -s * z[0]), out.j(c, 11, -s * z[1]), out.j(c, 12, -s * z[2]);
    out.j(c, 13, m * fe.ft * a[c] * zinv);
    out.j(c, 14, ds * gt);
  }
  return any;
}

// lm_flow_rows_to into an LmFlowRows.
template <typename R>
MONST3R_HD bool lm_flow_rows(const LmFlowEdge<R>& fe, R x, R y, R D, R meas_x, R meas_y, R mask,
                             LmFlowRows<R>* out) {
  return lm_flow_rows_to(fe, x, y, D, meas_x, meas_y, mask, LmFlowRowsRef<R>{out});
}

// Per-pixel sums of one flow row pair: H += Σω J_ℓ², g += Σω J_ℓ d, b_f += Σω J_ℓ J_v (7),
// b_t = Σω J_ℓ J_t (7, overwritten).
template <typename R>
MONST3R_HD void lm_flow_depth_terms(const LmFlowRows<R>& fr, double* H, double* g, double* bf,
                                    double* bt) {
  for (int k = 0; k < 7; ++k) bt[k] = 0.0;
  for (int c = 0; c < 2; ++c) {
    const double wl = static_cast<double>(fr.w[c]) * fr.J[c][14];
    *H += wl * fr.J[c][14];
    *g += wl * fr.r[c];
    for (int k = 0; k < 7; ++k) {
      bf[k] += wl * fr.J[c][k];
      bt[k] += wl * fr.J[c][7 + k];
    }
  }
}

// Direct (depth-free) terms of one flow row pair, indices 0..118 of a kLmFlowAcc accumulator:
// add(index, value) receives the upper 14×14 of Σω JᵀJ and Σω d J.
template <typename R, class Add>
MONST3R_HD void lm_flow_direct(const LmFlowRows<R>& fr, Add&& add) {
  const R* J0 = fr.J[0];
  const R* J1 = fr.J[1];
  int idx = 0;
  for (int k = 0; k < 14; ++k) {
    const double w0 = static_cast<double>(fr.w[0]) * J0[k], w1 = static_cast<double>(fr.w[1]) * J1[k];
    for (int l = k; l < 14; ++l, ++idx) add(idx, w0 * J0[l] + w1 * J1[l]);
    add(105 + k, w0 * fr.r[0] + w1 * fr.r[1]);
  }
}

// Schur terms of one flow target through the pixel's depth (bf: total b_f, bt: this (edge, side)'s
// b_t): indices 112..118 (−b_t g/H) and 119..167 (−b_f b_tᵀ/H) of a kLmFlowAcc accumulator.
template <class Add>
MONST3R_HD void lm_flow_schur(const double* bf, const double* bt, double g, double inv_h,
                              Add&& add) {
  for (int l = 0; l < 7; ++l) add(112 + l, -bt[l] * g * inv_h);
  for (int k = 0; k < 7; ++k) {
    const double bk = bf[k] * inv_h;
    for (int l = 0; l < 7; ++l) add(119 + 7 * k + l, -bk * bt[l]);
  }
}

// Alignment residual of (edge, side) at pixel p of its frame (a = R_v c, Tv = T_v): writes b and
// r = a + T_v − b − t_e; returns the IRLS weight W = w/max(‖r‖, eps) (0 where w = 0, b and r then
// unset) and adds w‖r‖ to *energy.
template <typename T>
MONST3R_HD double lm_align_weight(const AlignProblem<T>& pb, int64_t e, int side, int64_t p,
                                  const double* a, const T* Tv, double eps, double* b, double* r,
                                  double* energy) {
  const double wp = pb.weight[side][e * pb.height * pb.width + p];
  if (wp == 0.0) return 0.0;
  double dt[3], nr;
  lm_edge_offset(pb, e, Tv, dt);
  lm_edge_point(pb, e, side, p, b);
  const double W = lm_irls_weight(a, dt, b, wp, eps, r, &nr);
  *energy += wp * nr;
  return W;
}

// Frame v's terms of one pixel (kLmFrameAcc: ws J_fᵀJ_f − b_f b_fᵀ/H and J_fᵀ ΣW r − b_f g/H) and
// M = J_f − a b_fᵀ/H (3×7, for the frame–edge blocks). bf: in, the flow part Σω J_ℓ J_v; out, the
// total b_f = ws J_fᵀa + flow part. ws = ΣW, wr = ΣW r over the incident (edge, side) pairs.
template <class Add>
MONST3R_HD void lm_frame_terms(const double* a, const double* n, double ws, const double* wr,
                               double g, double inv_h, double* bf, double* M, Add&& add) {
  double J[21];
  lm_frame_jacobian(a, n, J);
  for (int k = 0; k < 7; ++k) bf[k] += ws * (a[0] * J[k] + a[1] * J[7 + k] + a[2] * J[14 + k]);
  for (int i = 0; i < 3; ++i)
    for (int k = 0; k < 7; ++k) M[7 * i + k] = J[7 * i + k] - a[i] * bf[k] * inv_h;
  int idx = 0;
  for (int k = 0; k < 7; ++k)
    for (int l = k; l < 7; ++l, ++idx)
      add(idx, ws * (J[k] * J[l] + J[7 + k] * J[7 + l] + J[14 + k] * J[14 + l]) -
                   bf[k] * bf[l] * inv_h);
  const double gi = g * inv_h;
  for (int k = 0; k < 7; ++k)
    add(28 + k, J[k] * wr[0] + J[7 + k] * wr[1] + J[14 + k] * wr[2] - bf[k] * gi);
}

// One (edge, side)'s terms of one pixel (kLmEdgeAcc, see the layout above).
template <class Add>
MONST3R_HD void lm_edge_terms(const double* a, const double* b, const double* r, double W,
                              double g, double inv_h, const double* M, Add&& add) {
  double wb[3], u[7];
  for (int k = 0; k < 3; ++k) wb[k] = W * b[k];
  add(0, W);
  add(1, wb[0]), add(2, wb[1]), add(3, wb[2]);
  add(4, wb[0] * b[0]), add(5, wb[0] * b[1]), add(6, wb[0] * b[2]);
  add(7, wb[1] * b[1]), add(8, wb[1] * b[2]), add(9, wb[2] * b[2]);
  lm_cross3(a, b, u);
  u[3] = -a[0], u[4] = -a[1], u[5] = -a[2];
  u[6] = -(a[0] * b[0] + a[1] * b[1] + a[2] * b[2]);
  const double w2h = W * W * inv_h;
  int idx = 10;
  for (int k = 0; k < 7; ++k) {
    const double uk = w2h * u[k];
    for (int l = k; l < 7; ++l, ++idx) add(idx, uk * u[l]);
  }
  for (int k = 0; k < 21; ++k) add(38 + k, W * M[k]);
  for (int k = 0; k < 7; ++k)
    for (int i = 0; i < 3; ++i) {
      const double mik = M[7 * i + k];
      const int dst = 59 + 9 * k + 3 * i;
      add(dst, mik * wb[0]), add(dst + 1, mik * wb[1]), add(dst + 2, mik * wb[2]);
    }
  const double gh = g * inv_h;
  double vr[3], vb[3];
  for (int k = 0; k < 3; ++k) vr[k] = W * (r[k] - gh * a[k]);
  lm_cross3(vr, b, vb);  // [b]×ᵀ v = v × b
  add(122, vb[0]), add(123, vb[1]), add(124, vb[2]);
  add(125, -vr[0]), add(126, -vr[1]), add(127, -vr[2]);
  add(128, -(b[0] * vr[0] + b[1] * vr[1] + b[2] * vr[2]));
}

// ---- CPU entry points (csrc/cpu/lm.cpp) ----------------------------------------------------------

template <typename T>
void lm_accumulate_cpu(const AlignProblem<T>& pb, const LmOptions& opt, T eps,
                       const LmOutputs& out);
template <typename T>
void lm_backsub_cpu(const AlignProblem<T>& pb, const LmOptions& opt, T eps,
                    const LmBacksub<T>& bs);
// Features of the depth couplings of frame v over pixels [p0, p1), as float32 rows of length
// (p1 − p0): for the j-th incident (edge, side) of v (edges in increasing order; an edge is
// incident to v through one side), rows 4j + c: W_j φ_c(p)/√H(p), φ = (a, ‖a‖²); then, with the
// flow term, for the u-th target frame of v (the distinct other frames of its incident edges, in
// increasing order), rows 4k + 7u + c: b_t,c(p)/√H(p) summed over the incident (edge, side)
// pairs with that target. 0 where H = 0 or when v is frozen. x holds (4k + 7·targets)·(p1 − p0)
// floats (targets = 0 without the flow term).
template <typename T>
void lm_cross_features_cpu(const AlignProblem<T>& pb, const LmOptions& opt, T eps, int64_t v,
                           int64_t p0, int64_t p1, float* x);

// Whether the flow term takes part (flow arrays given and a non-zero weight).
template <typename T>
MONST3R_HD bool lm_with_flow(const AlignProblem<T>& pb, const LmOptions& opt) {
  return pb.flow[0] != nullptr && (opt.flow_scale[0] != 0.0 || opt.flow_scale[1] != 0.0);
}

// CUDA twins (csrc/cuda/lm.cu), declared in every build and defined only with
// MONST3R_RT_WITH_CUDA: call them from CudaArgs::launch (monst3r/cuda_args.h). Every pointer of pb, opt, out/bs and x is device memory;
// incident is the CSR list of (edge, side) per frame: offsets (N+1) and entries 2e + side
// (edges in increasing order), also on the device. Accumulations are in double. Each returns an
// empty string on success, else the CUDA error text.
template <typename T>
std::string lm_accumulate_cuda(const AlignProblem<T>& pb, const LmOptions& opt, T eps,
                               const int64_t* inc_offsets, const int64_t* inc_entries,
                               const LmOutputs& out, void* stream);
template <typename T>
std::string lm_backsub_cuda(const AlignProblem<T>& pb, const LmOptions& opt, T eps,
                            const int64_t* inc_offsets, const int64_t* inc_entries,
                            const LmBacksub<T>& bs, void* stream);
// targets: the frame's distinct target frames (device, n_targets entries, increasing); x: rows ×
// (p1 − p0) floats (zeroed by the launcher), rows = 4k + 7·n_targets.
template <typename T>
std::string lm_cross_features_cuda(const AlignProblem<T>& pb, const LmOptions& opt, T eps,
                                   int64_t v, int64_t p0, int64_t p1, const int64_t* inc_offsets,
                                   const int64_t* inc_entries, const int64_t* targets,
                                   int64_t n_targets, float* x, int64_t rows, void* stream);

}  // namespace monst3r
