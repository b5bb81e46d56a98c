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
// X = Y), the gradient of the term with respect to X, and rp = R_e pred.
template <typename T>
MONST3R_HD T align_edge_residual(const T* X, const T* Re, const T* te, T sigma, const T* pred, T w,
                                 T* g, T* rp) {
  T r[3];
  for (int k = 0; k < 3; ++k) {
    rp[k] = Re[3 * k] * pred[0] + Re[3 * k + 1] * pred[1] + Re[3 * k + 2] * pred[2];
    r[k] = X[k] - (sigma * rp[k] + te[k]);
  }
  const T norm = m_sqrt(r[0] * r[0] + r[1] * r[1] + r[2] * r[2]);
  const T scale = norm > T(0) ? w / norm : T(0);
  for (int k = 0; k < 3; ++k) g[k] = scale * r[k];
  return w * norm;
}

// Residual of one pixel with depth d = exp(log_depth) (view side, then edge side). Returns
// w·‖X − Y‖ and writes g (see align_edge_residual), c = camera point, rc = R_v c, rp = R_e pred.
template <typename T>
MONST3R_HD T align_residual(T x, T y, T d, T f, T cx, T cy, const T* R, const T* Tv,
                            const T* Re, const T* te, T sigma, const T* pred, T w, T* g, T* c,
                            T* rc, T* rp) {
  T X[3];
  align_view_point(x, y, d, f, cx, cy, R, Tv, c, rc, X);
  return align_edge_residual(X, Re, te, sigma, pred, w, g, rp);
}

// Both accumulators below are linear in g, so g may also be the sum of the g of several edges
// at one pixel (the CPU loop sums them per pixel and accumulates the frame block once).
// `frame` / `edge`: anything indexable whose elements take += / −= of a T (a pointer, or a
// strided view of per-lane sums).

// Frame block of one pixel's gradient (kFrameGrad values of view v). Returns d(term)/d(log_depth).
template <typename T, typename F>
MONST3R_HD T align_accumulate_frame(const T* g, const T* c, const T* rc, const T* R, T f,
                                    F frame) {
  for (int a = 0; a < 3; ++a) {
    for (int b = 0; b < 3; ++b) frame[3 * a + b] += g[a] * c[b];
    frame[9 + a] += g[a];
  }
  // dc/df = (−c_x/f, −c_y/f, 0)  ⇒  dX/df = −(R[:,0] c_x + R[:,1] c_y)/f
  T gdf = T(0), gdl = T(0);
  for (int a = 0; a < 3; ++a) {
    gdf -= g[a] * (R[3 * a] * c[0] + R[3 * a + 1] * c[1]);
    gdl += g[a] * rc[a];  // dX/dlog_d = R c
  }
  frame[12] += gdf / f;
  return gdl;
}

// Edge block of one pixel's gradient (kEdgeGrad values of edge e).
template <typename T, typename E>
MONST3R_HD void align_accumulate_edge(const T* g, const T* rp, const T* pred, T sigma, E edge) {
  T gs = T(0);
  for (int a = 0; a < 3; ++a) {
    const T sg = sigma * g[a];
    for (int b = 0; b < 3; ++b) edge[3 * a + b] -= sg * pred[b];
    edge[9 + a] -= g[a];
    gs -= g[a] * rp[a];
  }
  edge[12] += gs;
}

// Accumulate one pixel's gradient into the blocks of view v (frame) and edge e (edge). Returns
// d(term)/d(log_depth) for the pixel.
template <typename T, typename F, typename E>
MONST3R_HD T align_accumulate(const T* g, const T* c, const T* rc, const T* rp, const T* R,
                              const T* pred, T sigma, T f, F frame, E edge) {
  align_accumulate_edge(g, rp, pred, sigma, edge);
  return align_accumulate_frame(g, c, rc, R, f, frame);
}

// Per (edge, direction) gradient block of the flow term: dR_rel (9), dt_rel (3), df_src, df_tgt.
constexpr int kFlowGrad = 14;

// Flow term of one pixel with depth d = exp(log_depth) (official DepthBasedWarping + smooth-L1,
// spec §4.5). The source view s holds the pixel; the target view t is the other view of the edge:
//   ego = ego_flow_pixel(...) (monst3r/egoflow.h),  d_c = (ego_c − meas_c)·m  (m = static mask),
//   loss_c = 0.5 d² if |d| < 1 else |d| − 0.5, kept when loss_c < thr.
// This form takes what depends on the source view only, computed once for all its edges: the ray
// p = ego_flow_ray(x, y, fs, cxs, cys) and the disparity s = 1/(d + 1e-6).
// Returns the kept loss; adds the kept static entries to *count; accumulates the gradient of the
// kept loss into acc (kFlowGrad, indexable like align_accumulate's blocks) except acc[12]
// (d/dfs), whose numerator goes to *g_focal instead (d/dfs = *g_focal / fs: a loop divides its
// sum once); returns d/dlog_depth through *g_logd.
template <typename T, typename A>
MONST3R_HD T flow_residual_ray(T x, T y, const T* p, T s, T d, T ft, T cxt, T cyt, const T* Rrel,
                               const T* trel, T meas_x, T meas_y, T mask, T thr, T* count, A acc,
                               T* g_logd, T* g_focal) {
  T a[3], q[3], ego[2];
  const T zinv = ego_flow_from_ray(x, y, p, s, ft, cxt, cyt, Rrel, trel, a, q, ego);
  const T meas[2] = {meas_x, meas_y};
  T loss = T(0), g[2];
  for (int c = 0; c < 2; ++c) {  // branch-free (selects only) so that CPU loops vectorise
    const T diff = (ego[c] - meas[c]) * mask;
    const T ad = diff < T(0) ? -diff : diff;
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
  T gs = T(0), gp0 = T(0), gp1 = T(0);
  for (int k = 0; k < 3; ++k) {
    for (int b = 0; b < 3; ++b) acc[3 * k + b] += ga[k] * p[b];
    acc[9 + k] += s * ga[k];
    gs += ga[k] * trel[k];
    gp0 += Rrel[3 * k] * ga[k];
    gp1 += Rrel[3 * k + 1] * ga[k];
  }
  *g_focal = -(gp0 * p[0] + gp1 * p[1]);
  acc[13] += gq[0] * a[0] + gq[1] * a[1];
  *g_logd = -gs * s * s * d;
  return loss;
}

// Flow term of one pixel (see flow_residual_ray) from the pixel (x, y) and its depth d.
// Accumulates all kFlowGrad values into acc.
template <typename T, typename A>
MONST3R_HD T flow_residual(T x, T y, T d, T fs, T cxs, T cys, T ft, T cxt, T cyt,
                           const T* Rrel, const T* trel, T meas_x, T meas_y, T mask, T thr,
                           T* count, A acc, T* g_logd) {
  T p[3], g_focal;
  ego_flow_ray(x, y, fs, cxs, cys, p);
  const T loss = flow_residual_ray(x, y, p, T(1) / (d + T(1e-6)), d, ft, cxt, cyt, Rrel, trel,
                                   meas_x, meas_y, mask, thr, count, acc, g_logd, &g_focal);
  acc[12] += g_focal / fs;
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
