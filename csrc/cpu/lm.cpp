// CPU accumulation of the reduced (depth-eliminated) Gauss–Newton system, see monst3r/lm.h.
// Same loop structure as align.cpp: OpenMP tasks over (frame, pixel chunk), incident (edge,
// side) lists, float64 thread-local accumulators reduced at the end. The per-pixel math is the
// header's (shared with the CUDA twins in csrc/cuda/lm.cu).
#include "monst3r/lm.h"

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

namespace monst3r {
namespace {

using Incident = std::vector<std::vector<std::pair<int64_t, int>>>;

template <typename T>
Incident incident_lists(const AlignProblem<T>& pb) {
  Incident inc(pb.n_frames);
  for (int64_t e = 0; e < pb.n_edges; ++e) {
    inc[pb.edges[2 * e]].emplace_back(e, 0);
    inc[pb.edges[2 * e + 1]].emplace_back(e, 1);
  }
  return inc;
}

constexpr int64_t kChunk = 512;

// Adds into a double accumulator (the CPU's `add` of the header's term functions).
struct AddTo {
  double* acc;
  void operator()(int i, double v) const { acc[i] += v; }
};

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MONST3R_LM_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define MONST3R_LM_CLONES
#endif

// Flow rows of one (edge, side) over a pixel chunk, structure of arrays (kChunk apart):
// J[c][k] at row 15c + k, d_c at row 30 + c, ω_c at row 32 + c. The per-pixel math is
// lm_flow_rows (branch-free), vectorised over the chunk.
constexpr int kFlowSoA = 34;

template <typename T>
struct FlowChunk {
  LmFlowEdge<T> fe;
  const T *xs, *ys, *depth, *mx, *my, *mask;
  int64_t len;
  T* rows;
};

// Writes lm_flow_rows_to's outputs of pixel q straight into the chunk's SoA rows.
template <typename T>
struct SoAWriter {
  T* rows;
  int64_t q;
  void j(int c, int k, T v) const { rows[(c * kLmFlowCols + k) * kChunk + q] = v; }
  void r(int c, T v) const { rows[(30 + c) * kChunk + q] = v; }
  void w(int c, T v) const { rows[(32 + c) * kChunk + q] = v; }
};

template <typename T>
__attribute__((always_inline)) inline void flow_chunk_body(const FlowChunk<T>& c) {
  const LmFlowEdge<T> fe = c.fe;
  const T *xs = c.xs, *ys = c.ys, *depth = c.depth, *mx = c.mx, *my = c.my, *mask = c.mask;
  T* rows = c.rows;
  const int64_t len = c.len;
#pragma omp simd
  for (int64_t q = 0; q < len; ++q)
    lm_flow_rows_to(fe, xs[q], ys[q], depth[q], mx[q], my[q], mask[q], SoAWriter<T>{rows, q});
}

MONST3R_LM_CLONES __attribute__((flatten)) void flow_chunk(const FlowChunk<float>& c) { flow_chunk_body(c); }
MONST3R_LM_CLONES __attribute__((flatten)) void flow_chunk(const FlowChunk<double>& c) { flow_chunk_body(c); }

// Pixel coordinates and depths of a chunk in T (the flow rows' inputs).
template <typename T>
struct ChunkPixels {
  std::vector<T> xs, ys, depth;
  explicit ChunkPixels(int64_t n) : xs(n), ys(n), depth(n) {}
  void set(int64_t q, int64_t p, int64_t width, double d) {
    xs[q] = static_cast<T>(p % width);
    ys[q] = static_cast<T>(p / width);
    depth[q] = static_cast<T>(d);
  }
};

// Computes the flow rows of (edge e, side) over pixels [p0, p0 + len) of its source frame v.
template <typename T>
const T* flow_rows(const AlignProblem<T>& pb, const LmOptions& opt, int64_t e, int side,
                   int64_t v, int64_t p0, int64_t len, const ChunkPixels<T>& px, T* rows) {
  const int64_t hw = pb.height * pb.width;
  const T* meas = pb.flow[side] + e * 2 * hw;
  FlowChunk<T> c{lm_flow_edge(pb, e, side, opt.flow_scale[side]),
                 px.xs.data(), px.ys.data(), px.depth.data(), meas + p0, meas + hw + p0,
                 pb.static_mask + v * hw + p0, len, rows};
  flow_chunk(c);
  return rows;
}

// Row k of channel ch, d_ch, ω_ch of a chunk's flow rows.
template <typename T>
inline const T* soa_j(const T* rows, int ch, int k) { return rows + (ch * kLmFlowCols + k) * kChunk; }
template <typename T>
inline const T* soa_r(const T* rows, int ch) { return rows + (30 + ch) * kChunk; }
template <typename T>
inline const T* soa_w(const T* rows, int ch) { return rows + (32 + ch) * kChunk; }

// Σ_q Σ_ch a_ch[q]·b_ch[q] in double over a chunk.
template <typename T>
inline double dot2(const double* a0, const T* b0, const double* a1, const T* b1, int64_t len) {
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (int64_t q = 0; q < len; ++q) s += a0[q] * b0[q] + a1[q] * b1[q];
  return s;
}

// The flow's per-pixel depth terms over a chunk (lm_flow_depth_terms, vectorised): H, g, the flow
// part of b_f (SoA, 7 rows kChunk apart) += ; b_t (SoA) = ; wj (2·14 rows) = ω J (double).
template <typename T>
void flow_depth_chunk(const T* rows, int64_t len, double* H, double* g, double* bf, double* bt,
                      double* wj) {
  for (int ch = 0; ch < 2; ++ch) {
    const T* w = soa_w(rows, ch);
    for (int k = 0; k < 14; ++k) {
      const T* J = soa_j(rows, ch, k);
      double* dst = wj + (ch * 14 + k) * kChunk;
#pragma omp simd
      for (int64_t q = 0; q < len; ++q) dst[q] = static_cast<double>(w[q]) * J[q];
    }
  }
  const T *l0 = soa_j(rows, 0, 14), *l1 = soa_j(rows, 1, 14);
  const T *r0 = soa_r(rows, 0), *r1 = soa_r(rows, 1);
  const T *w0 = soa_w(rows, 0), *w1 = soa_w(rows, 1);
#pragma omp simd
  for (int64_t q = 0; q < len; ++q) {
    const double wl0 = static_cast<double>(w0[q]) * l0[q], wl1 = static_cast<double>(w1[q]) * l1[q];
    H[q] += wl0 * l0[q] + wl1 * l1[q];
    g[q] += wl0 * r0[q] + wl1 * r1[q];
  }
  for (int k = 0; k < 7; ++k) {
    const T *jv0 = soa_j(rows, 0, k), *jv1 = soa_j(rows, 1, k);
    const T *jt0 = soa_j(rows, 0, 7 + k), *jt1 = soa_j(rows, 1, 7 + k);
    double *f = bf + k * kChunk, *t = bt + k * kChunk;
#pragma omp simd
    for (int64_t q = 0; q < len; ++q) {
      const double wl0 = static_cast<double>(w0[q]) * l0[q], wl1 = static_cast<double>(w1[q]) * l1[q];
      f[q] += wl0 * jv0[q] + wl1 * jv1[q];
      t[q] = wl0 * jt0[q] + wl1 * jt1[q];
    }
  }
}

// The flow's direct terms over a chunk (the sums of lm_flow_direct) into a kLmFlowAcc accumulator.
// The rows' T_t columns (10..12) are exactly −T_v (3..5): the sums run over the 11 distinct
// columns and are expanded with signs.
template <typename T>
void flow_direct_chunk(const T* rows, const double* wj, int64_t len, double* acc) {
  constexpr int kCols = 11;
  constexpr int distinct[kCols] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 13};
  double gram[kCols][kCols], grad[kCols];
  for (int a = 0; a < kCols; ++a) {
    const int k = distinct[a];
    const double *a0 = wj + k * kChunk, *a1 = wj + (14 + k) * kChunk;
    for (int b = a; b < kCols; ++b) {
      const int l = distinct[b];
      gram[a][b] = gram[b][a] = dot2(a0, soa_j(rows, 0, l), a1, soa_j(rows, 1, l), len);
    }
    grad[a] = dot2(a0, soa_r(rows, 0), a1, soa_r(rows, 1), len);
  }
  // column k of the 14 → (distinct column, sign)
  auto col = [](int k) { return k < 10 ? k : (k < 13 ? k - 7 : 10); };
  auto sign = [](int k) { return (k >= 10 && k < 13) ? -1.0 : 1.0; };
  int idx = 0;
  for (int k = 0; k < 14; ++k) {
    for (int l = k; l < 14; ++l, ++idx) acc[idx] += sign(k) * sign(l) * gram[col(k)][col(l)];
    acc[105 + k] += sign(k) * grad[col(k)];
  }
}

// The flow's Schur terms over a chunk (the sums of lm_flow_schur): bf (total b_f) and bt SoA.
inline void flow_schur_chunk(const double* bf, const double* bt, const double* g,
                             const double* inv, int64_t len, double* acc) {
  double gi[kChunk];
#pragma omp simd
  for (int64_t q = 0; q < len; ++q) gi[q] = g[q] * inv[q];
  for (int l = 0; l < 7; ++l) {
    const double* t = bt + l * kChunk;
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (int64_t q = 0; q < len; ++q) s += t[q] * gi[q];
    acc[112 + l] -= s;
  }
  for (int k = 0; k < 7; ++k) {
    double fi[kChunk];
    const double* f = bf + k * kChunk;
#pragma omp simd
    for (int64_t q = 0; q < len; ++q) fi[q] = f[q] * inv[q];
    for (int l = 0; l < 7; ++l) {
      const double* t = bt + l * kChunk;
      double s = 0.0;
#pragma omp simd reduction(+ : s)
      for (int64_t q = 0; q < len; ++q) s += fi[q] * t[q];
      acc[119 + 7 * k + l] -= s;
    }
  }
}

// The flow's share of the back-substitution over a chunk: H, g += ; pe += Σω J_ℓ (J_v δf_v + J_t δf_t).
template <typename T>
void flow_backsub_chunk(const T* rows, const double* df, const double* dft, int64_t len,
                        double* H, double* g, double* pe) {
  for (int ch = 0; ch < 2; ++ch) {
    const T *w = soa_w(rows, ch), *l = soa_j(rows, ch, 14), *r = soa_r(rows, ch);
    const T* J[14];
    for (int k = 0; k < 14; ++k) J[k] = soa_j(rows, ch, k);
#pragma omp simd
    for (int64_t q = 0; q < len; ++q) {
      double jd = 0.0;
      for (int k = 0; k < 7; ++k) jd += J[k][q] * df[k] + J[7 + k][q] * dft[k];
      const double wl = static_cast<double>(w[q]) * l[q];
      H[q] += wl * l[q];
      g[q] += wl * r[q];
      pe[q] += wl * jd;
    }
  }
}

}  // namespace

template <typename T>
void lm_accumulate_cpu(const AlignProblem<T>& pb, const LmOptions& opt, T eps_t,
                       const LmOutputs& out) {
  const int64_t n = pb.n_frames, e_count = pb.n_edges, hw = pb.height * pb.width;
  const double eps = eps_t;
  const bool flow = lm_with_flow(pb, opt);
  const Incident incident = incident_lists(pb);
  size_t max_inc = 0;
  for (const auto& inc : incident) max_inc = std::max(max_inc, inc.size());
  const int64_t chunks = (hw + kChunk - 1) / kChunk;
  const int64_t tasks = n * chunks;
  std::vector<double> frame_total(n * kLmFrameAcc, 0.0), edge_total(e_count * 2 * kLmEdgeAcc, 0.0);
  std::vector<double> flow_total(flow ? e_count * 2 * kLmFlowAcc : 0, 0.0);
  double energy_total = 0.0;

#pragma omp parallel
  {
    std::vector<double> frame_acc(frame_total.size(), 0.0), edge_acc(edge_total.size(), 0.0),
        flow_acc(flow_total.size(), 0.0);
    std::vector<double> pa(3 * kChunk), pn(3 * kChunk), pd(kChunk), ph(kChunk), pg(kChunk),
        pws(kChunk), pwr(3 * kChunk), pm(21 * kChunk), pinv(kChunk);
    // IRLS weights of the chunk, per incident (edge, side), rounded to T (as they used to be
    // stored between the two sweeps); with the flow term: b_f (SoA), b_t per incident (edge,
    // side) (SoA), the rows of one (edge, side) and their ω J
    std::vector<T> pw(max_inc * kChunk), rows(flow ? kFlowSoA * kChunk : 0);
    std::vector<double> pbf(7 * kChunk), pbt(flow ? max_inc * 7 * kChunk : 0),
        wj(flow ? 28 * kChunk : 0);
    ChunkPixels<T> px(kChunk);
    double energy = 0.0;
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t v = task / chunks;
      const int64_t p0 = (task - v * chunks) * kChunk;
      const int64_t p1 = std::min(hw, p0 + kChunk), len = p1 - p0;
      const bool frozen = lm_is_frozen(opt, v);
      const T* Tv = pb.trans + 3 * v;
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t q = p - p0;
        pd[q] = lm_pixel_geometry(pb, v, p, &pa[3 * q], &pn[3 * q]);
        px.set(q, p, pb.width, pd[q]);
        ph[q] = pg[q] = pws[q] = 0.0;
        pwr[3 * q] = pwr[3 * q + 1] = pwr[3 * q + 2] = 0.0;
      }
      std::fill(pbf.begin(), pbf.end(), 0.0);
      // pass 1: residuals, weights, per-pixel sums; the flow's direct terms
      for (size_t j = 0; j < incident[v].size(); ++j) {
        const auto [e, side] = incident[v][j];
        T* wout = pw.data() + j * kChunk;
        for (int64_t p = p0; p < p1; ++p) {
          const int64_t q = p - p0;
          double b[3], r[3];
          const double* a = &pa[3 * q];
          const double W = lm_align_weight(pb, e, side, p, a, Tv, eps, b, r, &energy);
          wout[q] = static_cast<T>(W);
          if (W == 0.0) continue;
          ph[q] += W * (a[0] * a[0] + a[1] * a[1] + a[2] * a[2]);
          pg[q] += W * (a[0] * r[0] + a[1] * r[1] + a[2] * r[2]);
          pws[q] += W;
          for (int k = 0; k < 3; ++k) pwr[3 * q + k] += W * r[k];
        }
        if (!flow) continue;
        flow_rows(pb, opt, e, side, v, p0, len, px, rows.data());
        flow_depth_chunk(rows.data(), len, ph.data(), pg.data(), pbf.data(),
                         pbt.data() + j * 7 * kChunk, wj.data());
        flow_direct_chunk(rows.data(), wj.data(), len,
                          flow_acc.data() + (2 * e + side) * kLmFlowAcc);
      }
      // per pixel: frame block and reduced frame gradient, M = J_f − a b_fᵀ/H
      const AddTo fadd{frame_acc.data() + v * kLmFrameAcc};
      for (int64_t q = 0; q < len; ++q) {
        const double H = ph[q];
        pinv[q] = lm_inv(H, frozen);
        if (pws[q] == 0.0 && H == 0.0) continue;  // no alignment weight and no flow depth term
        double bf[7];
        for (int k = 0; k < 7; ++k) bf[k] = pbf[k * kChunk + q];
        lm_frame_terms(&pa[3 * q], &pn[3 * q], pws[q], &pwr[3 * q], pg[q], pinv[q], bf,
                       &pm[21 * q], fadd);
        for (int k = 0; k < 7; ++k) pbf[k * kChunk + q] = bf[k];  // total b_f now
      }
      // pass 2: edge moments, frame–edge blocks, reduced edge gradient; the flow's Schur terms
      for (size_t j = 0; j < incident[v].size(); ++j) {
        const auto [e, side] = incident[v][j];
        double dt[3];
        lm_edge_offset(pb, e, Tv, dt);
        const T* wout = pw.data() + j * kChunk;
        const AddTo add{edge_acc.data() + (2 * e + side) * kLmEdgeAcc};
        for (int64_t p = p0; p < p1; ++p) {
          const int64_t q = p - p0;
          const double W = wout[q];
          if (W == 0.0) continue;
          double b[3], r[3];
          lm_edge_point(pb, e, side, p, b);
          const double* a = &pa[3 * q];
          lm_align_residual(a, dt, b, r);
          lm_edge_terms(a, b, r, W, pg[q], pinv[q], &pm[21 * q], add);
        }
        if (flow && !frozen)
          flow_schur_chunk(pbf.data(), pbt.data() + j * 7 * kChunk, pg.data(), pinv.data(), len,
                           flow_acc.data() + (2 * e + side) * kLmFlowAcc);
      }
    }
#pragma omp critical
    {
      for (size_t k = 0; k < frame_total.size(); ++k) frame_total[k] += frame_acc[k];
      for (size_t k = 0; k < edge_total.size(); ++k) edge_total[k] += edge_acc[k];
      for (size_t k = 0; k < flow_total.size(); ++k) flow_total[k] += flow_acc[k];
      energy_total += energy;
    }
  }
  std::copy(frame_total.begin(), frame_total.end(), out.frame_acc);
  std::copy(edge_total.begin(), edge_total.end(), out.edge_acc);
  if (flow) std::copy(flow_total.begin(), flow_total.end(), out.flow_acc);
  *out.energy = energy_total;
}

template <typename T>
void lm_backsub_cpu(const AlignProblem<T>& pb, const LmOptions& opt, T eps_t,
                    const LmBacksub<T>& bs) {
  const int64_t n = pb.n_frames, hw = pb.height * pb.width;
  const double eps = eps_t;
  const bool flow = lm_with_flow(pb, opt);
  const Incident incident = incident_lists(pb);
  const int64_t chunks = (hw + kChunk - 1) / kChunk;
  const int64_t tasks = n * chunks;
#pragma omp parallel
  {
    // per pixel: a, H, g, ΣW, a·(J_f δf), Σ_j W_j a·(J_e δe_j) + flow couplings
    std::vector<double> pa(3 * kChunk), ph(kChunk), pg(kChunk), pws(kChunk), pf(kChunk),
        pe(kChunk);
    std::vector<T> rows(flow ? kFlowSoA * kChunk : 0);
    ChunkPixels<T> px(kChunk);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t v = task / chunks;
      const int64_t p0 = (task - v * chunks) * kChunk;
      const int64_t p1 = std::min(hw, p0 + kChunk), len = p1 - p0;
      if (lm_is_frozen(opt, v)) {
        std::fill(bs.dl + v * hw + p0, bs.dl + v * hw + p1, T(0));
        continue;
      }
      const double* df = bs.dframe + 7 * v;
      const T* Tv = pb.trans + 3 * v;
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t q = p - p0;
        double nn[3], dx[3];
        double* a = &pa[3 * q];
        px.set(q, p, pb.width, lm_pixel_geometry(pb, v, p, a, nn));
        lm_cross3(df, a, dx);
        for (int k = 0; k < 3; ++k) dx[k] += df[3 + k] + nn[k] * df[6];
        pf[q] = a[0] * dx[0] + a[1] * dx[1] + a[2] * dx[2];
        ph[q] = pg[q] = pws[q] = pe[q] = 0.0;
      }
      for (const auto& [e, side] : incident[v]) {
        const double* de = bs.dedge + 7 * e;
        for (int64_t p = p0; p < p1; ++p) {
          const int64_t q = p - p0;
          double b[3], r[3], bp[3], unused = 0.0;
          const double* a = &pa[3 * q];
          // the IRLS weight exactly as lm_accumulate forms it
          const double Wx = lm_align_weight(pb, e, side, p, a, Tv, eps, b, r, &unused);
          if (Wx == 0.0) continue;
          ph[q] += Wx * (a[0] * a[0] + a[1] * a[1] + a[2] * a[2]);
          pg[q] += Wx * (a[0] * r[0] + a[1] * r[1] + a[2] * r[2]);
          const double W = static_cast<T>(Wx);
          pws[q] += W;
          lm_cross3(b, de, bp);  // J_e δe = b × δφ − δt − b δs
          double s = 0.0;
          for (int k = 0; k < 3; ++k) s += a[k] * (bp[k] - de[3 + k] - b[k] * de[6]);
          pe[q] += W * s;
        }
        if (!flow) continue;
        flow_rows(pb, opt, e, side, v, p0, len, px, rows.data());
        flow_backsub_chunk(rows.data(), df, bs.dframe + 7 * pb.edges[2 * e + 1 - side], len,
                           ph.data(), pg.data(), pe.data());
      }
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t q = p - p0;
        const double H = static_cast<T>(ph[q]), g = static_cast<T>(pg[q]);
        bs.dl[v * hw + p] = H > 0 ? static_cast<T>(-(g + pws[q] * pf[q] + pe[q]) / H) : T(0);
      }
    }
  }
}

// IRLS weights of one (edge, side) over a pixel chunk (branch-free, vectorisable): W[q] =
// w/max(‖r‖, eps), 0 where w = 0, and H[q] += W‖a‖². a is given per component (ax, ay, az).
template <typename T>
struct WeightChunk {
  const T* pts;  // (len, 3) predictions of the edge's side
  const T* w;    // (len) confidence weights
  const T* Re;   // edge rotation (3×3)
  double s, eps;
  double dt[3];  // T_v − t_e
  const double *ax, *ay, *az, *a2;
  double* W;
  double* H;
  int64_t len;
};

// lm_irls_weight over the chunk (the header's math, vectorised over pixels).
template <typename T>
inline void weight_chunk_body(const WeightChunk<T>& c) {
#pragma omp simd
  for (int64_t q = 0; q < c.len; ++q) {
    const double a[3] = {c.ax[q], c.ay[q], c.az[q]};
    double b[3], r[3], nr;
    lm_edge_point_at(c.Re, c.s, c.pts + 3 * q, b);
    const double W = lm_irls_weight(a, c.dt, b, static_cast<double>(c.w[q]), c.eps, r, &nr);
    c.W[q] = W;
    c.H[q] += W * c.a2[q];
  }
}

MONST3R_LM_CLONES void weight_chunk(const WeightChunk<float>& c) { weight_chunk_body(c); }
MONST3R_LM_CLONES void weight_chunk(const WeightChunk<double>& c) { weight_chunk_body(c); }

template <typename T>
void lm_cross_features_cpu(const AlignProblem<T>& pb, const LmOptions& opt, T eps_t, int64_t v,
                           int64_t p0, int64_t p1, float* x) {
  const int64_t hw = pb.height * pb.width, np = p1 - p0;
  const double eps = eps_t;
  const bool flow = lm_with_flow(pb, opt), frozen = lm_is_frozen(opt, v);
  std::vector<std::pair<int64_t, int>> inc;  // the order of incident_lists
  for (int64_t e = 0; e < pb.n_edges; ++e) {
    if (pb.edges[2 * e] == v) inc.emplace_back(e, 0);
    if (pb.edges[2 * e + 1] == v) inc.emplace_back(e, 1);
  }
  const int64_t k = static_cast<int64_t>(inc.size());
  // the flow's target frames (distinct, increasing) and each incident pair's index among them
  std::vector<int64_t> targets, target_of(k, 0);
  if (flow) {
    targets = lm_flow_targets(pb.edges, pb.n_edges, v);
    for (int64_t j = 0; j < k; ++j) {
      const int64_t t = pb.edges[2 * inc[j].first + 1 - inc[j].second];
      target_of[j] = std::lower_bound(targets.begin(), targets.end(), t) - targets.begin();
    }
  }
  const int64_t nt = static_cast<int64_t>(targets.size());
  const int64_t chunks = (np + kChunk - 1) / kChunk;
  const T* Tv = pb.trans + 3 * v;
#pragma omp parallel
  {
    std::vector<double> pa(4 * kChunk), ph(kChunk), pw(k * kChunk), py(7 * nt * kChunk),
        bf(flow ? 7 * kChunk : 0), bt(flow ? 7 * kChunk : 0), wj(flow ? 28 * kChunk : 0),
        g(flow ? kChunk : 0);
    std::vector<T> rows(flow ? kFlowSoA * kChunk : 0);
    ChunkPixels<T> px(kChunk);
    double *ax = pa.data(), *ay = ax + kChunk, *az = ay + kChunk, *a2 = az + kChunk;
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t c0 = p0 + c * kChunk, c1 = std::min(p1, c0 + kChunk), len = c1 - c0;
      for (int64_t p = c0; p < c1; ++p) {
        const int64_t q = p - c0;
        double a[3], nn[3];
        px.set(q, p, pb.width, lm_pixel_geometry(pb, v, p, a, nn));
        ax[q] = a[0], ay[q] = a[1], az[q] = a[2];
        a2[q] = a[0] * a[0] + a[1] * a[1] + a[2] * a[2];
        ph[q] = 0.0;
      }
      for (int64_t j = 0; j < k; ++j) {
        const auto [e, side] = inc[j];
        WeightChunk<T> wc{pb.pts[side] + (e * hw + c0) * 3,
                          pb.weight[side] + e * hw + c0,
                          pb.edge_rot + 9 * e,
                          static_cast<double>(pb.edge_scale[e]),
                          eps,
                          {},
                          ax, ay, az, a2, pw.data() + j * kChunk, ph.data(), len};
        lm_edge_offset(pb, e, Tv, wc.dt);
        weight_chunk(wc);
      }
      std::fill(py.begin(), py.end(), 0.0);
      for (int64_t j = 0; flow && j < k; ++j) {
        const auto [e, side] = inc[j];
        flow_rows(pb, opt, e, side, v, c0, len, px, rows.data());
        flow_depth_chunk(rows.data(), len, ph.data(), g.data(), bf.data(), bt.data(), wj.data());
        double* y = py.data() + 7 * target_of[j] * kChunk;
        for (int r = 0; r < 7; ++r)
#pragma omp simd
          for (int64_t q = 0; q < len; ++q) y[r * kChunk + q] += bt[r * kChunk + q];
      }
      for (int64_t q = 0; q < len; ++q)
        ph[q] = (!frozen && ph[q] > 0) ? 1.0 / std::sqrt(ph[q]) : 0.0;
      for (int64_t j = 0; j < k; ++j) {
        const double* w = pw.data() + j * kChunk;
        float* dst = x + 4 * j * np + (c0 - p0);
        for (int64_t q = 0; q < len; ++q) {
          const double wi = w[q] * ph[q];
          dst[q] = static_cast<float>(wi * ax[q]);
          dst[np + q] = static_cast<float>(wi * ay[q]);
          dst[2 * np + q] = static_cast<float>(wi * az[q]);
          dst[3 * np + q] = static_cast<float>(wi * a2[q]);
        }
      }
      for (int64_t r = 0; r < 7 * nt; ++r) {
        const double* y = py.data() + r * kChunk;
        float* dst = x + (4 * k + r) * np + (c0 - p0);
        for (int64_t q = 0; q < len; ++q) dst[q] = static_cast<float>(y[q] * ph[q]);
      }
    }
  }
}

template void lm_accumulate_cpu<float>(const AlignProblem<float>&, const LmOptions&, float,
                                       const LmOutputs&);
template void lm_accumulate_cpu<double>(const AlignProblem<double>&, const LmOptions&, double,
                                        const LmOutputs&);
template void lm_backsub_cpu<float>(const AlignProblem<float>&, const LmOptions&, float,
                                    const LmBacksub<float>&);
template void lm_backsub_cpu<double>(const AlignProblem<double>&, const LmOptions&, double,
                                     const LmBacksub<double>&);
template void lm_cross_features_cpu<float>(const AlignProblem<float>&, const LmOptions&, float,
                                           int64_t, int64_t, int64_t, float*);
template void lm_cross_features_cpu<double>(const AlignProblem<double>&, const LmOptions&,
                                            double, int64_t, int64_t, int64_t, float*);

}  // namespace monst3r
