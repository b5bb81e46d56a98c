// CPU twin of the alignment kernel: OpenMP over (frame, pixel chunk) tasks so that every
// per-pixel log-depth gradient is owned by one task. Per task:
//   1. view pass: what depends on the frame only (depth, camera and world points, flow rays),
//      once per pixel for all incident edges;
//   2. one pass per incident (edge, side): residual, edge moments, and the pixel's gradient g
//      summed over the edges (G); then the flow term's pass when there is one;
//   3. frame pass: the frame moments and the log-depth gradient from G (both linear in g).
// Moments (monst3r/align.h) are summed in kLanes fixed lanes (pixel k of a chunk goes to lane
// k mod kLanes whatever the CPU's vector width), each (edge, side, chunk) total is added in
// double to thread-local buffers, reduced at the end and mapped to the gradient blocks once.
#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "monst3r/align.h"
#include "monst3r/kernels.h"

#ifdef MONST3R_RT_OPENMP
#include <omp.h>
#endif

namespace monst3r {
namespace {

constexpr int kLanes = 16;
constexpr int64_t kChunk = 2048;  // pixels per task, a multiple of kLanes
static_assert(kChunk % kLanes == 0, "chunks hold whole lane blocks");

// Per-lane sums of K values: value k of lane l at v[k·kLanes + l].
template <typename T, int K>
struct LaneSums {
  alignas(64) T v[K * kLanes];
  struct View {  // the K values of one lane, indexable like a T*
    T* p;
    T& operator[](int k) const { return p[k * kLanes]; }
  };
  LaneSums() { std::fill(v, v + K * kLanes, T(0)); }
  View lane(int l) { return View{v + l}; }
  void totals(double* out) const {  // out[k] = Σ_l value k of lane l, summed in double
    for (int k = 0; k < K; ++k) {
      double s = 0.0;
      for (int l = 0; l < kLanes; ++l) s += static_cast<double>(v[k * kLanes + l]);
      out[k] = s;
    }
  }
};

// Prefetch distance of the streamed inputs, in pixels: each (edge, side) of a task is a short
// stream (one chunk), too short for the hardware prefetcher to ramp up on its own (measured:
// 10–25 % off the kernel at 128–512 pixels on a Zen 4 core).
constexpr int64_t kPrefetch = 256;

// Prefetches for reading the cache lines of the n values from base[i] on (a prefetch never
// faults; the addresses are formed as integers as they may run past the end of the array).
template <int n, typename T>
__attribute__((always_inline)) inline void prefetch(const T* base, int64_t i) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(base) + i * sizeof(T);
  for (uintptr_t o = 0; o < n * sizeof(T); o += 64)
    __builtin_prefetch(reinterpret_cast<const void*>(a + o));
}

// Runs body(k, l) for the pixels k of a chunk of `len`, whole lane blocks vectorised. Before the
// block of pixels k0.., pre(k0 + kPrefetch) prefetches the inputs of pixel k0 + kPrefetch.. (past
// the chunk: the next chunk of the frame, most often the next task of this thread).
template <typename Body, typename Pre>
__attribute__((always_inline)) inline void lane_loop(int64_t len, Body&& body, Pre&& pre) {
  int64_t k0 = 0;
  for (; k0 + kLanes <= len; k0 += kLanes) {
    pre(k0 + kPrefetch);
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) body(k0 + l, l);
  }
  for (int l = 0; k0 + l < len; ++l) body(k0 + l, l);
}

// Runs body(k) for k in [0, len), vectorised. (The body is a function so that its local arrays
// are plain locals of an inlined call, not per-lane copies of the simd loop.)
template <typename Body>
__attribute__((always_inline)) inline void simd_loop(int64_t len, Body&& body) {
#pragma omp simd
  for (int64_t k = 0; k < len; ++k) body(k);
}

// Per-thread scratch of one chunk: what depends on the frame only, and G.
template <typename T>
struct ViewBuf {
  std::vector<T> mem;
  T *xs, *ys, *depth, *c[3], *rc[3], *X[3], *G[3], *ray[2], *disp, *glf[2];
  // Arrays kStride apart, not a power of two: arrays 4 KiB apart would all fall in the same
  // sets of a set-associative L1 cache and evict each other.
  static constexpr int64_t kStride = kChunk + 64 / sizeof(T);
  ViewBuf() : mem(20 * kStride + 64 / sizeof(T)) {
    T* m = mem.data();
    while (reinterpret_cast<uintptr_t>(m) % 64 != 0) ++m;  // cache-line aligned
    for (T** p : {&xs, &ys, &depth, &c[0], &c[1], &c[2], &rc[0], &rc[1], &rc[2], &X[0], &X[1],
                  &X[2], &G[0], &G[1], &G[2], &ray[0], &ray[1], &disp, &glf[0], &glf[1]}) {
      *p = m;
      m += kStride;
    }
  }
};

template <typename T>
struct ViewArgs {
  int64_t p0, len, width;
  const T* logd;  // log-depth of the chunk's first pixel
  T f, cx, cy;
  const T *R, *Tv;
  bool flow;
};

template <typename T>
struct EdgeArgs {
  const T *Re, *te;
  T sigma;
  const T *pts, *wts;  // of the chunk's first pixel
  int64_t len;
};

template <typename T>
struct FlowArgs {
  T ft, cxt, cyt;
  const T *Rrel, *trel, *mx, *my, *mask;  // mx, my, mask: of the chunk's first pixel
  T thr;
  int64_t len;
  T* glf;
};

// Lane sums of each pass: its moments, then the energy (edge) or the kept count and loss (flow).
constexpr int kEdgeSums = kEdgeMoments + 1;
constexpr int kFlowSums = kFlowMoments + 2;

template <typename T>
__attribute__((always_inline)) inline void view_body(const ViewArgs<T>& a, ViewBuf<T>& b) {
  T R[9], Tv[3];
  std::copy(a.R, a.R + 9, R);
  std::copy(a.Tv, a.Tv + 3, Tv);
  const T f = a.f, cx = a.cx, cy = a.cy;
  const int64_t len = a.len, p0 = a.p0, width = a.width;
  // pixel coordinates (rows and columns counted, no division per pixel)
  T* const xs = b.xs;
  T* const ys = b.ys;
  T* const depth = b.depth;
  int64_t y = p0 / width, x = p0 - y * width;
  for (int64_t k = 0; k < len; ++k) {
    depth[k] = m_exp(a.logd[k]);
    xs[k] = static_cast<T>(x);
    ys[k] = static_cast<T>(y);
    if (++x == width) {
      x = 0;
      ++y;
    }
  }
  T *const c0 = b.c[0], *const c1 = b.c[1], *const c2 = b.c[2];
  T *const rc0 = b.rc[0], *const rc1 = b.rc[1], *const rc2 = b.rc[2];
  T *const X0 = b.X[0], *const X1 = b.X[1], *const X2 = b.X[2];
  T *const G0 = b.G[0], *const G1 = b.G[1], *const G2 = b.G[2];
  simd_loop(len, [&](int64_t k) __attribute__((always_inline)) {
    T c[3], rc[3], X[3];
    align_view_point(xs[k], ys[k], depth[k], f, cx, cy, R, Tv, c, rc, X);
    c0[k] = c[0];
    c1[k] = c[1];
    c2[k] = c[2];
    rc0[k] = rc[0];
    rc1[k] = rc[1];
    rc2[k] = rc[2];
    X0[k] = X[0];
    X1[k] = X[1];
    X2[k] = X[2];
    G0[k] = G1[k] = G2[k] = T(0);
  });
  if (!a.flow) return;
  T *const ray0 = b.ray[0], *const ray1 = b.ray[1], *const disp = b.disp;
  T *const glf0 = b.glf[0], *const glf1 = b.glf[1];
  simd_loop(len, [&](int64_t k) __attribute__((always_inline)) {
    T p[3];
    ego_flow_ray(xs[k], ys[k], f, cx, cy, p);
    ray0[k] = p[0];
    ray1[k] = p[1];
    disp[k] = T(1) / (depth[k] + T(1e-6));
    glf0[k] = glf1[k] = T(0);
  });
}

// Adds the K values of m to the first K values of lane l.
template <int K, typename T, int N>
__attribute__((always_inline)) inline void add_lane(LaneSums<T, N>& s, int l, const T* m) {
  static_assert(K <= N, "more values than sums");
  auto acc = s.lane(l);
  for (int k = 0; k < K; ++k) acc[k] += m[k];
}

template <typename T>
__attribute__((always_inline)) inline void edge_body(const EdgeArgs<T>& a, ViewBuf<T>& b,
                                                     double* sums) {
  LaneSums<T, kEdgeSums> s;  // local: the compiler may keep the lanes in registers
  // local copies: the stores could alias the inputs for all the compiler knows
  T Re[9], te[3];
  std::copy(a.Re, a.Re + 9, Re);
  std::copy(a.te, a.te + 3, te);
  const T sigma = a.sigma;
  lane_loop(a.len, [&](int64_t k, int l) __attribute__((always_inline)) {
    const T X[3] = {b.X[0][k], b.X[1][k], b.X[2][k]};
    const T pred[3] = {a.pts[3 * k], a.pts[3 * k + 1], a.pts[3 * k + 2]};
    T g[3], m[kEdgeMoments];
    s.lane(l)[kEdgeMoments] += align_edge_residual(X, Re, te, sigma, pred, a.wts[k], g);
    align_edge_moments(g, pred, m);
    add_lane<kEdgeMoments>(s, l, m);
    for (int i = 0; i < 3; ++i) b.G[i][k] += g[i];
  }, [&](int64_t k) __attribute__((always_inline)) {
    prefetch<3 * kLanes>(a.pts, 3 * k);
    prefetch<kLanes>(a.wts, k);
  });
  s.totals(sums);
}

template <typename T>
__attribute__((always_inline)) inline void flow_body(const FlowArgs<T>& a, ViewBuf<T>& b,
                                                     double* sums) {
  LaneSums<T, kFlowSums> s;
  T Rrel[9], trel[3];
  std::copy(a.Rrel, a.Rrel + 9, Rrel);
  std::copy(a.trel, a.trel + 3, trel);
  const T ft = a.ft, cxt = a.cxt, cyt = a.cyt, thr = a.thr;
  lane_loop(a.len, [&](int64_t k, int l) __attribute__((always_inline)) {
    const T p[3] = {b.ray[0][k], b.ray[1][k], T(1)};
    const T x = b.xs[k], y = b.ys[k], disp = b.disp[k], d = b.depth[k];
    const T mx = a.mx[k], my = a.my[k], mask = a.mask[k];
    T m[kFlowMoments + 1], g_logd;
    m[kFlowMoments] = T(0);  // kept count
    s.lane(l)[kFlowMoments + 1] += flow_residual_ray(x, y, p, disp, d, ft, cxt, cyt, Rrel, trel,
                                                     mx, my, mask, thr, m + kFlowMoments, m,
                                                     &g_logd);
    add_lane<kFlowMoments + 1>(s, l, m);
    a.glf[k] += g_logd;
  }, [&](int64_t k) __attribute__((always_inline)) {
    prefetch<kLanes>(a.mx, k);
    prefetch<kLanes>(a.my, k);
  });
  s.totals(sums);
}

template <typename T>
__attribute__((always_inline)) inline void frame_body(const ViewArgs<T>& a, const ViewBuf<T>& b,
                                                      T* gl, double* sums) {
  LaneSums<T, kFrameMoments> s;
  lane_loop(a.len, [&](int64_t k, int l) __attribute__((always_inline)) {
    const T G[3] = {b.G[0][k], b.G[1][k], b.G[2][k]};
    const T c[3] = {b.c[0][k], b.c[1][k], b.c[2][k]};
    const T rc[3] = {b.rc[0][k], b.rc[1][k], b.rc[2][k]};
    T m[kFrameMoments];
    gl[k] = align_frame_moments(G, c, rc, m);
    add_lane<kFrameMoments>(s, l, m);
  }, [](int64_t) {});
  s.totals(sums);
}

// On x86-64 GCC also emits AVX-512 (x86-64-v4) and AVX2/FMA (x86-64-v3) clones of each pass,
// chosen at load time (the wheel itself stays baseline x86-64). The fixed lanes give all clones
// the same summation order; the FMA clones round fused products unlike the baseline one.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MONST3R_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MONST3R_CLONES
#endif

#define MONST3R_ALIGN_PASSES(T)                                                            \
  MONST3R_CLONES void view_pass(const ViewArgs<T>& a, ViewBuf<T>& b) { view_body(a, b); } \
  MONST3R_CLONES void edge_pass(const EdgeArgs<T>& a, ViewBuf<T>& b, double* sums) {      \
    edge_body(a, b, sums);                                                                \
  }                                                                                       \
  MONST3R_CLONES void flow_pass(const FlowArgs<T>& a, ViewBuf<T>& b, double* sums) {      \
    flow_body(a, b, sums);                                                                \
  }                                                                                       \
  MONST3R_CLONES void frame_pass(const ViewArgs<T>& a, const ViewBuf<T>& b, T* gl,        \
                                 double* sums) {                                          \
    frame_body(a, b, gl, sums);                                                           \
  }
MONST3R_ALIGN_PASSES(float)
MONST3R_ALIGN_PASSES(double)
#undef MONST3R_ALIGN_PASSES

// Thread-local double sums of the moments of every block.
struct Totals {
  std::vector<double> frame, edge, flow;
  double energy = 0.0, flow_stats[4] = {0.0, 0.0, 0.0, 0.0};
  Totals(int64_t n, int64_t e, bool with_flow)
      : frame(n * kFrameMoments, 0.0), edge(e * kEdgeMoments, 0.0),
        flow(with_flow ? e * 2 * kFlowMoments : 0, 0.0) {}
  void add(const Totals& o) {
    for (size_t k = 0; k < frame.size(); ++k) frame[k] += o.frame[k];
    for (size_t k = 0; k < edge.size(); ++k) edge[k] += o.edge[k];
    for (size_t k = 0; k < flow.size(); ++k) flow[k] += o.flow[k];
    energy += o.energy;
    for (int k = 0; k < 4; ++k) flow_stats[k] += o.flow_stats[k];
  }
};

// One task: frame v, pixels [p0, p0 + len).
template <typename T>
void align_task(const AlignProblem<T>& pb, const AlignGrad<T>& out,
                const std::vector<std::vector<std::pair<int64_t, int>>>& incident, int64_t v,
                int64_t p0, int64_t len, ViewBuf<T>& buf, Totals& tot) {
  const int64_t hw = pb.height * pb.width;
  const bool with_flow = pb.flow[0] != nullptr;
  const ViewArgs<T> va{p0, len, pb.width, pb.log_depth + v * hw + p0, pb.focal[v],
                       pb.pp[2 * v], pb.pp[2 * v + 1], pb.rot + 9 * v, pb.trans + 3 * v,
                       with_flow};
  view_pass(va, buf);
  double sums[kFlowSums];
  for (const auto& [e, side] : incident[v]) {
    const EdgeArgs<T> ea{pb.edge_rot + 9 * e, pb.edge_trans + 3 * e, pb.edge_scale[e],
                         pb.pts[side] + (e * hw + p0) * 3, pb.weight[side] + e * hw + p0, len};
    edge_pass(ea, buf, sums);
    double* eacc = tot.edge.data() + e * kEdgeMoments;
    for (int k = 0; k < kEdgeMoments; ++k) eacc[k] += sums[k];
    tot.energy += sums[kEdgeMoments];
    if (!with_flow) continue;
    const int64_t other = pb.edges[2 * e + 1 - side];
    const T* meas = pb.flow[side] + e * 2 * hw + p0;
    const FlowArgs<T> fa{pb.focal[other], pb.pp[2 * other], pb.pp[2 * other + 1],
                         pb.flow_rot + (2 * e + side) * 9, pb.flow_trans + (2 * e + side) * 3,
                         meas, meas + hw, pb.static_mask + v * hw + p0, pb.pixel_thr, len,
                         buf.glf[side]};
    flow_pass(fa, buf, sums);
    double* facc = tot.flow.data() + (2 * e + side) * kFlowMoments;
    for (int k = 0; k < kFlowMoments; ++k) facc[k] += sums[k];
    tot.flow_stats[2 * side + 1] += sums[kFlowMoments];
    tot.flow_stats[2 * side] += sums[kFlowMoments + 1];
  }
  frame_pass(va, buf, out.grad_log_depth + v * hw + p0, sums);
  double* facc = tot.frame.data() + v * kFrameMoments;
  for (int k = 0; k < kFrameMoments; ++k) facc[k] += sums[k];
  if (with_flow) {
    for (int d = 0; d < 2; ++d)
      std::copy(buf.glf[d], buf.glf[d] + len,
                out.grad_log_depth_flow + (d * pb.n_frames + v) * hw + p0);
  }
}

// The blocks from the summed moments (in double), rounded to T.
template <typename T>
void write_blocks(const AlignProblem<T>& pb, const Totals& total, const AlignGrad<T>& out) {
  double block[kFlowGrad];
  auto put = [&block](T* dst, int count) {
    for (int k = 0; k < count; ++k) dst[k] = static_cast<T>(block[k]);
  };
  for (int64_t v = 0; v < pb.n_frames; ++v) {
    align_frame_block(pb.rot + 9 * v, static_cast<double>(pb.focal[v]),
                      total.frame.data() + v * kFrameMoments, block);
    put(out.grad_frame + v * kFrameGrad, kFrameGrad);
  }
  for (int64_t e = 0; e < pb.n_edges; ++e) {
    align_edge_block(pb.edge_rot + 9 * e, static_cast<double>(pb.edge_scale[e]),
                     total.edge.data() + e * kEdgeMoments, block);
    put(out.grad_edge + e * kEdgeGrad, kEdgeGrad);
  }
  *out.energy = total.energy;
  if (pb.flow[0] == nullptr) return;
  for (int64_t es = 0; es < 2 * pb.n_edges; ++es) {  // (edge, side); fs = f of the side's view
    flow_block(pb.flow_rot + 9 * es, static_cast<double>(pb.focal[pb.edges[es]]),
               total.flow.data() + es * kFlowMoments, block);
    put(out.grad_flow + es * kFlowGrad, kFlowGrad);
  }
  for (int k = 0; k < 4; ++k) out.flow_stats[k] = total.flow_stats[k];
}

}  // namespace

template <typename T>
void align_energy_grad_cpu(const AlignProblem<T>& pb, const AlignGrad<T>& out) {
  const int64_t n = pb.n_frames, e_count = pb.n_edges;
  const int64_t hw = pb.height * pb.width;
  // incident[v] = (edge, side) pairs whose side-th view is frame v
  std::vector<std::vector<std::pair<int64_t, int>>> incident(n);
  for (int64_t e = 0; e < e_count; ++e) {
    incident[pb.edges[2 * e]].emplace_back(e, 0);
    incident[pb.edges[2 * e + 1]].emplace_back(e, 1);
  }
  const int64_t chunks = (hw + kChunk - 1) / kChunk;
  const int64_t tasks = n * chunks;
  const bool with_flow = pb.flow[0] != nullptr;
  Totals total(n, e_count, with_flow);

#pragma omp parallel
  {
    Totals tot(n, e_count, with_flow);
    ViewBuf<T> buf;
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t v = task / chunks;
      const int64_t p0 = (task - v * chunks) * kChunk;
      align_task(pb, out, incident, v, p0, std::min(hw, p0 + kChunk) - p0, buf, tot);
    }
#pragma omp critical
    total.add(tot);
  }
  write_blocks(pb, total, out);
}

template void align_energy_grad_cpu<float>(const AlignProblem<float>&, const AlignGrad<float>&);
template void align_energy_grad_cpu<double>(const AlignProblem<double>&, const AlignGrad<double>&);

}  // namespace monst3r
