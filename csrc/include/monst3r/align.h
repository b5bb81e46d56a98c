// Pairwise confidence-weighted alignment (MonST3R / DUSt3R global alignment), per pixel.
//
// For edge e = (i, j) and a pixel p of view v ∈ {i, j} (side 0 = view i, side 1 = view j):
//   camera point   c   = D_v(p) · ((u − cx_v)/f_v, (y − cy_v)/f_v, 1),  D_v = exp(log_depth_v)
//   world point    X   = R_v c + T_v                             (frame pose, camera-to-world)
//   pairwise point Y   = σ_e R_e pred(e, p) + t_e                  (t_e already includes σ_e)
//   energy term        w(e, p) · ‖X − Y‖₂,   w = log(conf)
// Gradients are accumulated with respect to the "natural" quantities (log-depth, R_v, T_v, f_v,
// R_e, t_e, σ_e); the Python driver chains them to the optimiser's parameterisation.
#pragma once

#include <cmath>

#include "monst3r/common.h"
#include "monst3r/egoflow.h"

namespace monst3r {

// Per-frame gradient block: dR (9, row-major), dT (3), df (1).
constexpr int kFrameGrad = 13;
// Per-edge gradient block: dR_e (9), dt_e (3), dσ_e (1).
constexpr int kEdgeGrad = 13;

// The view side of one pixel with depth d = exp(log_depth): camera point c, rc = R_v c and the
// world point X = R_v c + T_v. It depends on the frame only, not on the edge: the CPU loop
// computes it once per frame and pixel for all incident edges.
template <typename T>
MONST3R_HD void align_view_point(T x, T y, T d, T f, T cx, T cy, const T* R, const T* Tv, T* c,
                                 T* rc, T* X) {
  c[0] = d * (x - cx) / f;
  c[1] = d * (y - cy) / f;
  c[2] = d;
  for (int k = 0; k < 3; ++k) {
    rc[k] = R[3 * k] * c[0] + R[3 * k + 1] * c[1] + R[3 * k + 2] * c[2];
    X[k] = rc[k] + Tv[k];
  }
}

// The edge side of one pixel: returns w·‖X − Y‖ and writes g = w·(X − Y)/‖X − Y‖ (0 where
// X = Y), the gradient of the term with respect to X.
template <typename T>
MONST3R_HD T align_edge_residual(const T* X, const T* Re, const T* te, T sigma, const T* pred, T w,
                                 T* g) {
  T r[3];
  for (int k = 0; k < 3; ++k) {
    const T rp = Re[3 * k] * pred[0] + Re[3 * k + 1] * pred[1] + Re[3 * k + 2] * pred[2];
    r[k] = X[k] - (sigma * rp + te[k]);
  }
  const T norm = m_sqrt(r[0] * r[0] + r[1] * r[1] + r[2] * r[2]);
  const T scale = norm > T(0) ? w / norm : T(0);
  for (int k = 0; k < 3; ++k) g[k] = scale * r[k];
  return w * norm;
}

// Residual of one pixel with depth d = exp(log_depth) (view side, then edge side). Returns
// w·‖X − Y‖ and writes g (see align_edge_residual), c = camera point and rc = R_v c.
template <typename T>
MONST3R_HD T align_residual(T x, T y, T d, T f, T cx, T cy, const T* R, const T* Tv,
                            const T* Re, const T* te, T sigma, const T* pred, T w, T* g, T* c,
                            T* rc) {
  T X[3];
  align_view_point(x, y, d, f, cx, cy, R, Tv, c, rc, X);
  return align_edge_residual(X, Re, te, sigma, pred, w, g);
}

// Gradient blocks. Each block is a linear map of per-pixel "moments" (outer products of the
// pixel's gradient with its points), so a loop may sum the moments over pixels (and, for the
// frame, over the edges of a pixel: they are linear in g) and map the sums once; the per-pixel
// accumulators below map each pixel's moments.

// d/df of a term that depends on R c, where c = z·((x − cx)/f, (y − cy)/f, 1) (a camera point or
// a ray) and m = g ⊗ c is the 3×3 part of its moments (g = gradient with respect to R c):
// dc/df = (−c_x/f, −c_y/f, 0), so d/df = −Σ_a (R_a0 m_a0 + R_a1 m_a1)/f.
template <typename S, typename T>
MONST3R_HD S focal_from_moments(const T* R, const S* m, S f) {
  S s = S(0);
  for (int a = 0; a < 3; ++a) s += S(R[3 * a]) * m[3 * a] + S(R[3 * a + 1]) * m[3 * a + 1];
  return -s / f;
}

// Frame moments of one pixel (g: gradient with respect to X): m[3a+b] = g_a c_b (dR_v),
// m[9+a] = g_a (dT_v). Returns d(term)/d(log_depth) = g·rc (dX/dlog_d = R c).
constexpr int kFrameMoments = 12;
template <typename T>
MONST3R_HD T align_frame_moments(const T* g, const T* c, const T* rc, T* m) {
  for (int a = 0; a < 3; ++a) {
    for (int b = 0; b < 3; ++b) m[3 * a + b] = g[a] * c[b];
    m[9 + a] = g[a];
  }
  return g[0] * rc[0] + g[1] * rc[1] + g[2] * rc[2];
}

// Frame block (kFrameGrad) from frame moments: dR, dT as they are, df = focal_from_moments.
template <typename S, typename T>
MONST3R_HD void align_frame_block(const T* R, S f, const S* m, S* block) {
  for (int k = 0; k < kFrameMoments; ++k) block[k] = m[k];
  block[12] = focal_from_moments(R, m, f);
}

// Edge moments of one pixel: m[3a+b] = g_a pred_b, m[9+a] = g_a.
constexpr int kEdgeMoments = 12;
template <typename T>
MONST3R_HD void align_edge_moments(const T* g, const T* pred, T* m) {
  for (int a = 0; a < 3; ++a) {
    for (int b = 0; b < 3; ++b) m[3 * a + b] = g[a] * pred[b];
    m[9 + a] = g[a];
  }
}

// Edge block (kEdgeGrad) from edge moments. The term depends on X − Y, Y = σ R_e pred + t_e:
// dR_e = −σ m_ab, dt_e = −m[9+a], dσ = −Σ_ab (R_e)_ab m_ab (= −Σ g·R_e pred).
template <typename S, typename T>
MONST3R_HD void align_edge_block(const T* Re, S sigma, const S* m, S* block) {
  S gs = S(0);
  for (int k = 0; k < 9; ++k) {
    block[k] = -sigma * m[k];
    gs -= S(Re[k]) * m[k];
  }
  for (int a = 0; a < 3; ++a) block[9 + a] = -m[9 + a];
  block[12] = gs;
}

// Accumulate one pixel's gradient into the blocks of view v (frame) and edge e (edge), anything
// indexable whose elements take += of a T. Returns d(term)/d(log_depth) for the pixel.
template <typename T, typename F, typename E>
MONST3R_HD T align_accumulate(const T* g, const T* c, const T* rc, const T* Re, const T* R,
                              const T* pred, T sigma, T f, F frame, E edge) {
  T m[kFrameMoments], block[kFrameGrad];
  const T gdl = align_frame_moments(g, c, rc, m);
  align_frame_block(R, f, m, block);
  for (int k = 0; k < kFrameGrad; ++k) frame[k] += block[k];
  align_edge_moments(g, pred, m);
  align_edge_block(Re, sigma, m, block);
  for (int k = 0; k < kEdgeGrad; ++k) edge[k] += block[k];
  return gdl;
}

// Per (edge, direction) gradient block of the flow term: dR_rel (9), dt_rel (3), df_src, df_tgt.
constexpr int kFlowGrad = 14;
// Flow moments of one pixel: m[3k+b] = ga_k p_b (dR_rel), m[9+k] = s·ga_k (dt_rel),
// m[12] = d/df_tgt (ga = gradient with respect to a, p = source ray, s = disparity).
constexpr int kFlowMoments = 13;

// Flow block (kFlowGrad) from flow moments: df_src = focal_from_moments (p = K_s⁻¹(x, y, 1)
// scales like a camera point).
template <typename S, typename T>
MONST3R_HD void flow_block(const T* Rrel, S fs, const S* m, S* block) {
  for (int k = 0; k < 12; ++k) block[k] = m[k];
  block[12] = focal_from_moments(Rrel, m, fs);
  block[13] = m[12];
}

// Flow term of one pixel with depth d = exp(log_depth) (official DepthBasedWarping + smooth-L1,
// spec §4.5). The source view s holds the pixel; the target view t is the other view of the edge:
//   ego = ego_flow_pixel(...) (monst3r/egoflow.h),  d_c = (ego_c − meas_c)·m  (m = static mask),
//   loss_c = 0.5 d² if |d| < 1 else |d| − 0.5, kept when loss_c < thr.
// This form takes what depends on the source view only, computed once for all its edges: the ray
// p = ego_flow_ray(x, y, fs, cxs, cys) and the disparity s = 1/(d + 1e-6).
// Returns the kept loss; adds the kept static entries to *count; writes the flow moments of the
// kept loss (kFlowMoments) to m and d/dlog_depth to *g_logd.
template <typename T>
MONST3R_HD T flow_residual_ray(T x, T y, const T* p, T s, T d, T ft, T cxt, T cyt, const T* Rrel,
                               const T* trel, T meas_x, T meas_y, T mask, T thr, T* count, T* m,
                               T* g_logd) {
  T a[3], q[3], ego[2];
  const T zinv = ego_flow_from_ray(x, y, p, s, ft, cxt, cyt, Rrel, trel, a, q, ego);
  const T meas[2] = {meas_x, meas_y};
  T loss = T(0), g[2];
  for (int c = 0; c < 2; ++c) {  // branch-free (selects only) so that CPU loops vectorise
    const T diff = (ego[c] - meas[c]) * mask;
    const T ad = m_abs(diff);
    const bool quad = ad < T(1);
    const T l = quad ? T(0.5) * diff * diff : ad - T(0.5);
    const T keep = l < thr ? T(1) : T(0);  // official smooth_L1_loss_fn: (loss < thr) · mask
    loss += keep * l;
    *count += keep * mask;
    const T slope = quad ? diff : (diff > T(0) ? T(1) : T(-1));
    g[c] = keep * mask * slope;
  }
  // back through the projection
  const T gq[3] = {g[0] * zinv, g[1] * zinv, -(g[0] * q[0] + g[1] * q[1]) * zinv * zinv};
  const T ga[3] = {ft * gq[0], ft * gq[1], cxt * gq[0] + cyt * gq[1] + gq[2]};
  T gs = T(0);
  for (int k = 0; k < 3; ++k) {
    for (int b = 0; b < 3; ++b) m[3 * k + b] = ga[k] * p[b];
    m[9 + k] = s * ga[k];
    gs += ga[k] * trel[k];
  }
  m[12] = gq[0] * a[0] + gq[1] * a[1];
  *g_logd = -gs * s * s * d;
  return loss;
}

// Flow term of one pixel (see flow_residual_ray) from the pixel (x, y) and its depth d.
// Accumulates its block (kFlowGrad) into acc, anything indexable whose elements take += of a T.
template <typename T, typename A>
MONST3R_HD T flow_residual(T x, T y, T d, T fs, T cxs, T cys, T ft, T cxt, T cyt,
                           const T* Rrel, const T* trel, T meas_x, T meas_y, T mask, T thr,
                           T* count, A acc, T* g_logd) {
  T p[3], m[kFlowMoments], block[kFlowGrad];
  ego_flow_ray(x, y, fs, cxs, cys, p);
  const T loss = flow_residual_ray(x, y, p, T(1) / (d + T(1e-6)), d, ft, cxt, cyt, Rrel, trel,
                                   meas_x, meas_y, mask, thr, count, m, g_logd);
  flow_block(Rrel, fs, m, block);
  for (int k = 0; k < kFlowGrad; ++k) acc[k] += block[k];
  return loss;
}
}  // namespace monst3r

namespace monst3r {

// Arrays of one alignment evaluation (all C-contiguous, HW = H·W).
template <typename T>
struct AlignProblem {
  int64_t n_frames, n_edges, height, width;
  const int64_t* edges;  // (E,2) frame indices (i, j)
  const T* pts[2];       // (E,HW,3) pred of view i / view j, both in camera i's frame
  const T* weight[2];    // (E,HW) log(conf), 0 for invalid pixels
  const T* log_depth;    // (N,HW)
  const T* rot;          // (N,9) camera-to-world rotation, row-major
  const T* trans;        // (N,3) camera-to-world translation
  const T* focal;        // (N,) pixels
  const T* pp;           // (N,2) principal point (cx, cy), pixels
  const T* edge_rot;     // (E,9) pairwise rotation R_e
  const T* edge_trans;   // (E,3) pairwise translation t_e (includes σ_e)
  const T* edge_scale;   // (E,) σ_e
  // Flow term (all null when there is none). Direction 0 = i→j (pixels of view i), 1 = j→i.
  const T* flow[2] = {nullptr, nullptr};  // (E,2,HW) measured flow (x, y) in pixels
  const T* static_mask = nullptr;          // (N,HW) 1 = static (used), 0 = dynamic
  const T* flow_rot = nullptr;             // (E,2,9) R_rel of each direction
  const T* flow_trans = nullptr;           // (E,2,3) t_rel of each direction
  T pixel_thr = T(50);                     // entries with a loss ≥ this are dropped
};

// Outputs: energy = Σ w‖X − Y‖ over both views of all edges (not normalised);
// grad_log_depth (N,HW), grad_frame (N,kFrameGrad), grad_edge (E,kEdgeGrad), all overwritten.
// S: type of the summed blocks (grad_frame, grad_edge, grad_flow): T on the CPU (summed in
// double, then rounded), double on CUDA (summed with double atomics, left in double).
template <typename T, typename S = T>
struct AlignGrad {
  double* energy;
  T* grad_log_depth;
  S* grad_frame;
  S* grad_edge;
  // Flow term outputs (when the problem has flows), per direction d (0 = i→j, 1 = j→i), of the
  // *unnormalised* kept sums: flow_stats = {Σ loss_0, count_0, Σ loss_1, count_1},
  // grad_log_depth_flow (2,N,HW) and grad_flow (E,2,kFlowGrad).
  double* flow_stats = nullptr;
  T* grad_log_depth_flow = nullptr;
  S* grad_flow = nullptr;
};

}  // namespace monst3r
