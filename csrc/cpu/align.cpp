// CPU twin of the alignment kernel: OpenMP over (frame, pixel chunk) tasks so that every
// per-pixel log-depth gradient is owned by one task; per-frame and per-edge sums are
// accumulated in double in thread-local buffers and reduced at the end.
#include <algorithm>
#include <utility>
#include <vector>

#include "monst3r/align.h"
#include "monst3r/kernels.h"

#ifdef MONST3R_RT_OPENMP
#include <omp.h>
#endif

namespace monst3r {
namespace {

// One (edge, side) over one pixel chunk: the hot loops, branch-free so that `omp simd`
// vectorises them. On x86-64 GCC also emits an AVX2/FMA clone chosen at load time (the
// wheel itself stays baseline x86-64).
template <typename T>
struct AlignChunk {
  const T *xs, *ys, *depth;
  T f, cx, cy;
  const T *R, *Tv, *Re, *te;
  T sigma;
  const T *pts, *wts;
  int64_t len;
  T *gl, *fl, *el, *energy;
};

template <typename T>
struct FlowChunk {
  const T *xs, *ys, *depth;
  T f, cx, cy, ft, cxt, cyt;
  const T *Rrel, *trel, *mx, *my, *mask;
  T thr;
  int64_t len;
  T *gl, *fa, *count, *sum;
};

template <typename T>
__attribute__((always_inline)) inline void align_chunk_body(const AlignChunk<T>& c) {
  T fl[kFrameGrad] = {0}, el[kEdgeGrad] = {0}, en = T(0);
#pragma omp simd reduction(+ : fl[:kFrameGrad], el[:kEdgeGrad], en)
  for (int64_t k = 0; k < c.len; ++k) {
    T g[3], cp[3], rc[3], rp[3];
    en += align_residual(c.xs[k], c.ys[k], c.depth[k], c.f, c.cx, c.cy, c.R, c.Tv, c.Re, c.te,
                         c.sigma, c.pts + 3 * k, c.wts[k], g, cp, rc, rp);
    c.gl[k] += align_accumulate(g, cp, rc, rp, c.R, c.pts + 3 * k, c.sigma, c.f, fl, el);
  }
  for (int k = 0; k < kFrameGrad; ++k) c.fl[k] += fl[k];
  for (int k = 0; k < kEdgeGrad; ++k) c.el[k] += el[k];
  *c.energy += en;
}

template <typename T>
__attribute__((always_inline)) inline void flow_chunk_body(const FlowChunk<T>& c) {
  T fa[kFlowGrad] = {0}, count = T(0), sum = T(0);
#pragma omp simd reduction(+ : fa[:kFlowGrad], count, sum)
  for (int64_t k = 0; k < c.len; ++k) {
    T g_logd, kept = T(0);
    sum += flow_residual(c.xs[k], c.ys[k], c.depth[k], c.f, c.cx, c.cy, c.ft, c.cxt, c.cyt,
                         c.Rrel, c.trel, c.mx[k], c.my[k], c.mask[k], c.thr, &kept, fa, &g_logd);
    count += kept;
    c.gl[k] += g_logd;
  }
  for (int k = 0; k < kFlowGrad; ++k) c.fa[k] += fa[k];
  *c.count += count;
  *c.sum += sum;
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MONST3R_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define MONST3R_CLONES
#endif

MONST3R_CLONES void align_chunk(const AlignChunk<float>& c) { align_chunk_body(c); }
MONST3R_CLONES void align_chunk(const AlignChunk<double>& c) { align_chunk_body(c); }
MONST3R_CLONES void flow_chunk(const FlowChunk<float>& c) { flow_chunk_body(c); }
MONST3R_CLONES void flow_chunk(const FlowChunk<double>& c) { flow_chunk_body(c); }

}  // namespace

template <typename T>
void align_energy_grad_cpu(const AlignProblem<T>& pb, const AlignGrad<T>& out) {
  const int64_t n = pb.n_frames, e_count = pb.n_edges, w = pb.width;
  const int64_t hw = pb.height * pb.width;
  // incident[v] = (edge, side) pairs whose side-th view is frame v
  std::vector<std::vector<std::pair<int64_t, int>>> incident(n);
  for (int64_t e = 0; e < e_count; ++e) {
    incident[pb.edges[2 * e]].emplace_back(e, 0);
    incident[pb.edges[2 * e + 1]].emplace_back(e, 1);
  }
  constexpr int64_t kChunk = 1024;
  const int64_t chunks = (hw + kChunk - 1) / kChunk;
  const int64_t tasks = n * chunks;

  const bool with_flow = pb.flow[0] != nullptr;
  std::vector<double> frame_total(n * kFrameGrad, 0.0), edge_total(e_count * kEdgeGrad, 0.0);
  std::vector<double> flow_total(with_flow ? e_count * 2 * kFlowGrad : 0, 0.0);
  double energy_total = 0.0, flow_stats_total[4] = {0.0, 0.0, 0.0, 0.0};

#pragma omp parallel
  {
    std::vector<double> frame_acc(n * kFrameGrad, 0.0), edge_acc(e_count * kEdgeGrad, 0.0);
    std::vector<double> flow_acc(flow_total.size(), 0.0);
    std::vector<T> gl(kChunk), glf(with_flow ? 2 * kChunk : 0), depth(kChunk), xs(kChunk),
        ys(kChunk);
    double energy = 0.0, flow_stats[4] = {0.0, 0.0, 0.0, 0.0};
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t v = task / chunks;
      const int64_t p0 = (task - v * chunks) * kChunk;
      const int64_t p1 = std::min(hw, p0 + kChunk);
      std::fill(gl.begin(), gl.end(), T(0));
      std::fill(glf.begin(), glf.end(), T(0));
      const T* R = pb.rot + 9 * v;
      const T* Tv = pb.trans + 3 * v;
      const T f = pb.focal[v], cx = pb.pp[2 * v], cy = pb.pp[2 * v + 1];
      const T* logd = pb.log_depth + v * hw;
      for (int64_t p = p0; p < p1; ++p) {
        depth[p - p0] = m_exp(logd[p]);
        ys[p - p0] = static_cast<T>(p / w);
        xs[p - p0] = static_cast<T>(p % w);
      }
      double* facc = frame_acc.data() + v * kFrameGrad;
      for (const auto& [e, side] : incident[v]) {
        const T* Re = pb.edge_rot + 9 * e;
        const T* te = pb.edge_trans + 3 * e;
        const T sigma = pb.edge_scale[e];
        const T* pts = pb.pts[side] + e * hw * 3;
        const T* wts = pb.weight[side] + e * hw;
        // register-resident sums for this (edge, side) and chunk, added once at the end
        T fl[kFrameGrad] = {0}, el[kEdgeGrad] = {0}, en = T(0);
        const int64_t len = p1 - p0;
        AlignChunk<T> ck{xs.data(), ys.data(), depth.data(), f,  cx, cy, R,  Tv,
                         Re,        te,        sigma,        pts + 3 * p0, wts + p0, len,
                         gl.data(), fl,        el,           &en};
        align_chunk(ck);
        energy += en;
        for (int k = 0; k < kFrameGrad; ++k) facc[k] += fl[k];
        double* eacc = edge_acc.data() + e * kEdgeGrad;
        for (int k = 0; k < kEdgeGrad; ++k) eacc[k] += el[k];
        if (!with_flow) continue;
        const int64_t other = pb.edges[2 * e + 1 - side];
        const T ft = pb.focal[other], cxt = pb.pp[2 * other], cyt = pb.pp[2 * other + 1];
        const T* Rrel = pb.flow_rot + (2 * e + side) * 9;
        const T* trel = pb.flow_trans + (2 * e + side) * 3;
        const T* meas = pb.flow[side] + e * 2 * hw;
        const T* mask = pb.static_mask + v * hw;
        T fa[kFlowGrad] = {0}, count = T(0), sum = T(0);
        FlowChunk<T> fc{xs.data(), ys.data(), depth.data(), f,     cx,
                        cy,        ft,        cxt,          cyt,   Rrel,
                        trel,      meas + p0, meas + hw + p0, mask + p0, pb.pixel_thr,
                        len,       glf.data() + side * kChunk, fa, &count, &sum};
        flow_chunk(fc);
        double* facc_flow = flow_acc.data() + (2 * e + side) * kFlowGrad;
        for (int k = 0; k < kFlowGrad; ++k) facc_flow[k] += fa[k];
        flow_stats[2 * side] += static_cast<double>(sum);
        flow_stats[2 * side + 1] += static_cast<double>(count);
      }
      std::copy(gl.begin(), gl.begin() + (p1 - p0), out.grad_log_depth + v * hw + p0);
      if (with_flow) {
        for (int d = 0; d < 2; ++d)
          std::copy(glf.begin() + d * kChunk, glf.begin() + d * kChunk + (p1 - p0),
                    out.grad_log_depth_flow + (d * n + v) * hw + p0);
      }
    }
#pragma omp critical
    {
      for (size_t k = 0; k < frame_total.size(); ++k) frame_total[k] += frame_acc[k];
      for (size_t k = 0; k < edge_total.size(); ++k) edge_total[k] += edge_acc[k];
      for (size_t k = 0; k < flow_total.size(); ++k) flow_total[k] += flow_acc[k];
      energy_total += energy;
      for (int k = 0; k < 4; ++k) flow_stats_total[k] += flow_stats[k];
    }
  }
  for (size_t k = 0; k < frame_total.size(); ++k) out.grad_frame[k] = static_cast<T>(frame_total[k]);
  for (size_t k = 0; k < edge_total.size(); ++k) out.grad_edge[k] = static_cast<T>(edge_total[k]);
  *out.energy = energy_total;
  if (with_flow) {
    for (size_t k = 0; k < flow_total.size(); ++k) out.grad_flow[k] = static_cast<T>(flow_total[k]);
    for (int k = 0; k < 4; ++k) out.flow_stats[k] = flow_stats_total[k];
  }
}

template void align_energy_grad_cpu<float>(const AlignProblem<float>&, const AlignGrad<float>&);
template void align_energy_grad_cpu<double>(const AlignProblem<double>&, const AlignGrad<double>&);

}  // namespace monst3r
