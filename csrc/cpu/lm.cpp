// CPU accumulation of the reduced (depth-eliminated) Gauss–Newton system, see monst3r/lm.h.
// Same loop structure as align.cpp: OpenMP tasks over (frame, pixel chunk), incident (edge,
// side) lists, float64 thread-local accumulators reduced at the end.
#include "monst3r/lm.h"

#include <algorithm>
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

inline void cross(const double* x, const double* y, double* z) {
  z[0] = x[1] * y[2] - x[2] * y[1];
  z[1] = x[2] * y[0] - x[0] * y[2];
  z[2] = x[0] * y[1] - x[1] * y[0];
}

// Pixel geometry: camera point c, a = R c, n = R(−c_x, −c_y, 0).
template <typename T>
inline void pixel_geometry(const AlignProblem<T>& pb, int64_t v, int64_t p, double* a, double* n) {
  const T* R = pb.rot + 9 * v;
  const double f = pb.focal[v], cx = pb.pp[2 * v], cy = pb.pp[2 * v + 1];
  const double d = std::exp(static_cast<double>(pb.log_depth[v * pb.height * pb.width + p]));
  const double x = static_cast<double>(p % pb.width), y = static_cast<double>(p / pb.width);
  const double c[3] = {d * (x - cx) / f, d * (y - cy) / f, d};
  for (int k = 0; k < 3; ++k) {
    a[k] = R[3 * k] * c[0] + R[3 * k + 1] * c[1] + R[3 * k + 2] * c[2];
    n[k] = -(R[3 * k] * c[0] + R[3 * k + 1] * c[1]);
  }
}

template <typename T>
inline void edge_point(const AlignProblem<T>& pb, int64_t e, int side, int64_t p, double* b) {
  const T* Re = pb.edge_rot + 9 * e;
  const T* pr = pb.pts[side] + (e * pb.height * pb.width + p) * 3;
  const double s = pb.edge_scale[e];
  for (int k = 0; k < 3; ++k) b[k] = s * (Re[3 * k] * pr[0] + Re[3 * k + 1] * pr[1] + Re[3 * k + 2] * pr[2]);
}

// J_f (3×7) row-major.
inline void frame_jacobian(const double* a, const double* n, double* J) {
  const double m[21] = {0,     a[2], -a[1], 1, 0, 0, n[0],  //
                        -a[2], 0,    a[0],  0, 1, 0, n[1],  //
                        a[1],  -a[0], 0,    0, 0, 1, n[2]};
  std::copy(m, m + 21, J);
}

}  // namespace

template <typename T>
void lm_accumulate_cpu(const AlignProblem<T>& pb, T eps_t, const LmOutputs& out) {
  const int64_t n = pb.n_frames, e_count = pb.n_edges, hw = pb.height * pb.width;
  const double eps = eps_t;
  const Incident incident = incident_lists(pb);
  size_t max_inc = 0;
  for (const auto& inc : incident) max_inc = std::max(max_inc, inc.size());
  const int64_t chunks = (hw + kChunk - 1) / kChunk;
  const int64_t tasks = n * chunks;
  std::vector<double> frame_total(n * kLmFrameAcc, 0.0), edge_total(e_count * 2 * kLmEdgeAcc, 0.0);
  double energy_total = 0.0;

#pragma omp parallel
  {
    std::vector<double> frame_acc(frame_total.size(), 0.0), edge_acc(edge_total.size(), 0.0);
    std::vector<double> pa(3 * kChunk), pn(3 * kChunk), ph(kChunk), pg(kChunk), pws(kChunk),
        pwr(3 * kChunk), pm(21 * kChunk);
    // IRLS weights of the chunk, per incident (edge, side), rounded to T (as they used to be
    // stored between the two sweeps)
    std::vector<T> pw(max_inc * kChunk);
    double energy = 0.0;
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t v = task / chunks;
      const int64_t p0 = (task - v * chunks) * kChunk;
      const int64_t p1 = std::min(hw, p0 + kChunk);
      const T* Tv = pb.trans + 3 * v;
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t q = p - p0;
        pixel_geometry(pb, v, p, &pa[3 * q], &pn[3 * q]);
        ph[q] = pg[q] = pws[q] = 0.0;
        pwr[3 * q] = pwr[3 * q + 1] = pwr[3 * q + 2] = 0.0;
      }
      // pass 1: residuals, weights, per-pixel sums
      for (size_t j = 0; j < incident[v].size(); ++j) {
        const auto [e, side] = incident[v][j];
        const T* te = pb.edge_trans + 3 * e;
        const T* wts = pb.weight[side] + e * hw;
        T* wout = pw.data() + j * kChunk;
        for (int64_t p = p0; p < p1; ++p) {
          const int64_t q = p - p0;
          const double wp = wts[p];
          if (wp == 0.0) {
            wout[q] = T(0);
            continue;
          }
          double b[3], r[3];
          edge_point(pb, e, side, p, b);
          const double* a = &pa[3 * q];
          for (int k = 0; k < 3; ++k) r[k] = a[k] + Tv[k] - b[k] - te[k];
          const double nr = std::sqrt(r[0] * r[0] + r[1] * r[1] + r[2] * r[2]);
          energy += wp * nr;
          const double W = wp / std::max(nr, eps);
          wout[q] = static_cast<T>(W);
          ph[q] += W * (a[0] * a[0] + a[1] * a[1] + a[2] * a[2]);
          pg[q] += W * (a[0] * r[0] + a[1] * r[1] + a[2] * r[2]);
          pws[q] += W;
          for (int k = 0; k < 3; ++k) pwr[3 * q + k] += W * r[k];
        }
      }
      // per pixel: frame block and reduced frame gradient, M = (I − κaaᵀ) J_f
      double* facc = frame_acc.data() + v * kLmFrameAcc;
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t q = p - p0;
        const double* a = &pa[3 * q];
        const double H = ph[q];
        const double kap = H > 0 ? pws[q] / H : 0.0;
        double J[21];
        frame_jacobian(a, &pn[3 * q], J);
        double* M = &pm[21 * q];
        for (int k = 0; k < 7; ++k) {
          const double aj = a[0] * J[k] + a[1] * J[7 + k] + a[2] * J[14 + k];
          for (int i = 0; i < 3; ++i) M[7 * i + k] = J[7 * i + k] - kap * a[i] * aj;
        }
        const double ws = pws[q];
        if (ws == 0.0) continue;
        int idx = 0;
        for (int k = 0; k < 7; ++k)
          for (int l = k; l < 7; ++l, ++idx)
            facc[idx] += ws * (J[k] * M[l] + J[7 + k] * M[7 + l] + J[14 + k] * M[14 + l]);
        const double gh = H > 0 ? ws * pg[q] / H : 0.0;
        double vr[3];
        for (int i = 0; i < 3; ++i) vr[i] = pwr[3 * q + i] - gh * a[i];
        for (int k = 0; k < 7; ++k) facc[28 + k] += J[k] * vr[0] + J[7 + k] * vr[1] + J[14 + k] * vr[2];
      }
      // pass 2: edge moments, frame–edge blocks, reduced edge gradient
      for (size_t j = 0; j < incident[v].size(); ++j) {
        const auto [e, side] = incident[v][j];
        const T* te = pb.edge_trans + 3 * e;
        const T* wout = pw.data() + j * kChunk;
        double* acc = edge_acc.data() + (2 * e + side) * kLmEdgeAcc;
        for (int64_t p = p0; p < p1; ++p) {
          const int64_t q = p - p0;
          const double W = wout[q];
          if (W == 0.0) continue;
          const double H = ph[q];
          double b[3], r[3], u[7], wb[3];
          edge_point(pb, e, side, p, b);
          const double* a = &pa[3 * q];
          for (int k = 0; k < 3; ++k) r[k] = a[k] + Tv[k] - b[k] - te[k];
          acc[0] += W;
          for (int k = 0; k < 3; ++k) wb[k] = W * b[k];
          acc[1] += wb[0], acc[2] += wb[1], acc[3] += wb[2];
          acc[4] += wb[0] * b[0], acc[5] += wb[0] * b[1], acc[6] += wb[0] * b[2];
          acc[7] += wb[1] * b[1], acc[8] += wb[1] * b[2], acc[9] += wb[2] * b[2];
          cross(a, b, u);
          u[3] = -a[0], u[4] = -a[1], u[5] = -a[2];
          u[6] = -(a[0] * b[0] + a[1] * b[1] + a[2] * b[2]);
          const double w2h = H > 0 ? W * W / H : 0.0;
          int idx = 10;
          for (int k = 0; k < 7; ++k) {
            const double uk = w2h * u[k];
            for (int l = k; l < 7; ++l, ++idx) acc[idx] += uk * u[l];
          }
          const double* M = &pm[21 * q];
          for (int k = 0; k < 21; ++k) acc[38 + k] += W * M[k];
          for (int k = 0; k < 7; ++k)
            for (int i = 0; i < 3; ++i) {
              const double mik = M[7 * i + k];
              double* dst = acc + 59 + 9 * k + 3 * i;
              dst[0] += mik * wb[0], dst[1] += mik * wb[1], dst[2] += mik * wb[2];
            }
          const double gh = H > 0 ? pg[q] / H : 0.0;
          double vr[3], vb[3];
          for (int k = 0; k < 3; ++k) vr[k] = W * (r[k] - gh * a[k]);
          cross(vr, b, vb);  // [b]×ᵀ v = v × b
          acc[122] += vb[0], acc[123] += vb[1], acc[124] += vb[2];
          acc[125] -= vr[0], acc[126] -= vr[1], acc[127] -= vr[2];
          acc[128] -= b[0] * vr[0] + b[1] * vr[1] + b[2] * vr[2];
        }
      }
    }
#pragma omp critical
    {
      for (size_t k = 0; k < frame_total.size(); ++k) frame_total[k] += frame_acc[k];
      for (size_t k = 0; k < edge_total.size(); ++k) edge_total[k] += edge_acc[k];
      energy_total += energy;
    }
  }
  std::copy(frame_total.begin(), frame_total.end(), out.frame_acc);
  std::copy(edge_total.begin(), edge_total.end(), out.edge_acc);
  *out.energy = energy_total;
}

template <typename T>
void lm_backsub_cpu(const AlignProblem<T>& pb, T eps_t, const LmBacksub<T>& bs) {
  const int64_t n = pb.n_frames, hw = pb.height * pb.width;
  const double eps = eps_t;
  const Incident incident = incident_lists(pb);
  const int64_t chunks = (hw + kChunk - 1) / kChunk;
  const int64_t tasks = n * chunks;
#pragma omp parallel
  {
    // per pixel: a, H, g, ΣW, a·(J_f δf), Σ_j W_j a·(J_e δe_j)
    std::vector<double> pa(3 * kChunk), ph(kChunk), pg(kChunk), pws(kChunk), pf(kChunk),
        pe(kChunk);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t v = task / chunks;
      const int64_t p0 = (task - v * chunks) * kChunk;
      const int64_t p1 = std::min(hw, p0 + kChunk);
      const double* df = bs.dframe + 7 * v;
      const T* Tv = pb.trans + 3 * v;
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t q = p - p0;
        double nn[3], dx[3];
        double* a = &pa[3 * q];
        pixel_geometry(pb, v, p, a, nn);
        cross(df, a, dx);
        for (int k = 0; k < 3; ++k) dx[k] += df[3 + k] + nn[k] * df[6];
        pf[q] = a[0] * dx[0] + a[1] * dx[1] + a[2] * dx[2];
        ph[q] = pg[q] = pws[q] = pe[q] = 0.0;
      }
      for (const auto& [e, side] : incident[v]) {
        const double* de = bs.dedge + 7 * e;
        const T* te = pb.edge_trans + 3 * e;
        const T* wts = pb.weight[side] + e * hw;
        for (int64_t p = p0; p < p1; ++p) {
          const double wp = wts[p];
          if (wp == 0.0) continue;
          const int64_t q = p - p0;
          double b[3], r[3], bp[3];
          edge_point(pb, e, side, p, b);
          const double* a = &pa[3 * q];
          // the IRLS weight exactly as lm_accumulate forms it
          for (int k = 0; k < 3; ++k) r[k] = a[k] + Tv[k] - b[k] - te[k];
          const double nr = std::sqrt(r[0] * r[0] + r[1] * r[1] + r[2] * r[2]);
          const double Wx = wp / std::max(nr, eps);
          ph[q] += Wx * (a[0] * a[0] + a[1] * a[1] + a[2] * a[2]);
          pg[q] += Wx * (a[0] * r[0] + a[1] * r[1] + a[2] * r[2]);
          const double W = static_cast<T>(Wx);
          pws[q] += W;
          cross(b, de, bp);  // J_e δe = b × δφ − δt − b δs
          double s = 0.0;
          for (int k = 0; k < 3; ++k) s += a[k] * (bp[k] - de[3 + k] - b[k] * de[6]);
          pe[q] += W * s;
        }
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
  double t[3];  // T_v − t_e
  const double *ax, *ay, *az, *a2;
  double* W;
  double* H;
  int64_t len;
};

template <typename T>
inline void weight_chunk_body(const WeightChunk<T>& c) {
  const double R0 = c.Re[0], R1 = c.Re[1], R2 = c.Re[2], R3 = c.Re[3], R4 = c.Re[4],
               R5 = c.Re[5], R6 = c.Re[6], R7 = c.Re[7], R8 = c.Re[8];
#pragma omp simd
  for (int64_t q = 0; q < c.len; ++q) {
    const double px = c.pts[3 * q], py = c.pts[3 * q + 1], pz = c.pts[3 * q + 2];
    const double rx = c.ax[q] + c.t[0] - c.s * (R0 * px + R1 * py + R2 * pz);
    const double ry = c.ay[q] + c.t[1] - c.s * (R3 * px + R4 * py + R5 * pz);
    const double rz = c.az[q] + c.t[2] - c.s * (R6 * px + R7 * py + R8 * pz);
    const double nr = std::sqrt(rx * rx + ry * ry + rz * rz);
    const double wp = c.w[q];
    const double W = wp == 0.0 ? 0.0 : wp / std::max(nr, c.eps);
    c.W[q] = W;
    c.H[q] += W * c.a2[q];
  }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MONST3R_LM_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define MONST3R_LM_CLONES
#endif

MONST3R_LM_CLONES void weight_chunk(const WeightChunk<float>& c) { weight_chunk_body(c); }
MONST3R_LM_CLONES void weight_chunk(const WeightChunk<double>& c) { weight_chunk_body(c); }

template <typename T>
void lm_cross_features_cpu(const AlignProblem<T>& pb, T eps_t, int64_t v, int64_t p0,
                           int64_t p1, float* x) {
  const int64_t hw = pb.height * pb.width, np = p1 - p0;
  const double eps = eps_t;
  std::vector<std::pair<int64_t, int>> inc;  // the order of incident_lists
  for (int64_t e = 0; e < pb.n_edges; ++e) {
    if (pb.edges[2 * e] == v) inc.emplace_back(e, 0);
    if (pb.edges[2 * e + 1] == v) inc.emplace_back(e, 1);
  }
  const int64_t k = static_cast<int64_t>(inc.size());
  const int64_t chunks = (np + kChunk - 1) / kChunk;
  const T* Tv = pb.trans + 3 * v;
#pragma omp parallel
  {
    std::vector<double> pa(4 * kChunk), ph(kChunk), pw(k * kChunk);
    double *ax = pa.data(), *ay = ax + kChunk, *az = ay + kChunk, *a2 = az + kChunk;
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t c0 = p0 + c * kChunk, c1 = std::min(p1, c0 + kChunk), len = c1 - c0;
      for (int64_t p = c0; p < c1; ++p) {
        const int64_t q = p - c0;
        double a[3], nn[3];
        pixel_geometry(pb, v, p, a, nn);
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
                          {static_cast<double>(Tv[0]) - pb.edge_trans[3 * e],
                           static_cast<double>(Tv[1]) - pb.edge_trans[3 * e + 1],
                           static_cast<double>(Tv[2]) - pb.edge_trans[3 * e + 2]},
                          ax, ay, az, a2, pw.data() + j * kChunk, ph.data(), len};
        weight_chunk(wc);
      }
      for (int64_t q = 0; q < len; ++q) ph[q] = ph[q] > 0 ? 1.0 / std::sqrt(ph[q]) : 0.0;
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
    }
  }
}

template void lm_accumulate_cpu<float>(const AlignProblem<float>&, float, const LmOutputs&);
template void lm_accumulate_cpu<double>(const AlignProblem<double>&, double, const LmOutputs&);
template void lm_backsub_cpu<float>(const AlignProblem<float>&, float, const LmBacksub<float>&);
template void lm_backsub_cpu<double>(const AlignProblem<double>&, double,
                                     const LmBacksub<double>&);
template void lm_cross_features_cpu<float>(const AlignProblem<float>&, float, int64_t, int64_t,
                                           int64_t, float*);
template void lm_cross_features_cpu<double>(const AlignProblem<double>&, double, int64_t, int64_t,
                                            int64_t, float*);

}  // namespace monst3r
