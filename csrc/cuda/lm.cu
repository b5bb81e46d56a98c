// CUDA twins of the LM kernels (monst3r/lm.h): the same per-pixel math, one thread per pixel of a
// frame, the frame's incident (edge, side) pairs from a CSR list. Sums are in double: every term
// is reduced per warp (shuffles) into per-warp shared-memory rows, then per block, then added to
// the double accumulators atomically. The CPU's second sweep reads its IRLS weights back rounded to
// T; this twin recomputes them and rounds them the same way.
#include <cuda_runtime.h>

#include "monst3r/cuda_reduce.h"
#include "monst3r/lm.h"

namespace monst3r {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxAcc = kLmFlowAcc;  // the largest accumulator
static_assert(kLmEdgeAcc <= kMaxAcc && kLmFrameAcc <= kMaxAcc, "shared rows too short");

// The device `add` of the header's term functions: every thread of the block calls it with the
// same sequence of indices (uniform control flow); lane 0 of each warp keeps the warp's sum.
struct BlockSums {
  double* rows;  // shared [kWarps][kMaxAcc]
  __host__ __device__ void operator()(int i, double v) const {
#ifdef __CUDA_ARCH__
    const double s = warp_sum(v);
    if ((threadIdx.x & 31) == 0) rows[(threadIdx.x >> 5) * kMaxAcc + i] += s;
#else
    (void)i, (void)v;
#endif
  }
};

// Adds the block's sums of entries [0, count) to dst atomically and clears the rows.
__device__ void flush(double* rows, int count, double* dst) {
  __syncthreads();
  for (int i = threadIdx.x; i < count; i += blockDim.x) {
    double s = 0.0;
    for (int w = 0; w < kWarps; ++w) {
      s += rows[w * kMaxAcc + i];
      rows[w * kMaxAcc + i] = 0.0;
    }
    if (s != 0.0) atomicAdd(dst + i, s);
  }
  __syncthreads();
}

// Per-pixel state of one thread: geometry and the sums over its incident (edge, side) pairs.
struct PixelSums {
  double a[3] = {0, 0, 0}, n[3] = {0, 0, 0}, D = 1.0, x = 0, y = 0;
  double H = 0, g = 0, ws = 0, wr[3] = {0, 0, 0}, bf[7] = {0, 0, 0, 0, 0, 0, 0};
};

// Flow rows of (edge e, side) at the thread's pixel (all zero when inactive).
template <typename T>
__device__ bool flow_rows_at(const AlignProblem<T>& pb, const LmOptions& opt, int64_t e, int side,
                             int64_t v, int64_t p, bool active, const PixelSums& px,
                             LmFlowRows<T>* fr) {
  *fr = LmFlowRows<T>{};
  if (!active) return false;
  const int64_t hw = pb.height * pb.width;
  const LmFlowEdge<T> fe = lm_flow_edge(pb, e, side, opt.flow_scale[side]);
  const T* meas = pb.flow[side] + e * 2 * hw;
  return lm_flow_rows(fe, static_cast<T>(px.x), static_cast<T>(px.y), static_cast<T>(px.D),
                      meas[p], meas[hw + p], pb.static_mask[v * hw + p], fr);
}

// Pass 1 of a pixel: H, g, ΣW, ΣW r, the flow's part of b_f; adds w‖r‖ to *energy.
template <typename T>
__device__ PixelSums pixel_sums(const AlignProblem<T>& pb, const LmOptions& opt, double eps,
                                const int64_t* off, const int64_t* ent, int64_t v, int64_t p,
                                bool active, bool flow, double* energy) {
  PixelSums px;
  if (!active) return px;
  px.D = lm_pixel_geometry(pb, v, p, px.a, px.n);
  px.x = static_cast<double>(p % pb.width);
  px.y = static_cast<double>(p / pb.width);
  const T* Tv = pb.trans + 3 * v;
  for (int64_t j = off[v]; j < off[v + 1]; ++j) {
    const int64_t e = ent[j] >> 1;
    const int side = static_cast<int>(ent[j] & 1);
    double b[3], r[3];
    const double W = lm_align_weight(pb, e, side, p, px.a, Tv, eps, b, r, energy);
    if (W != 0.0) {
      const double* a = px.a;
      px.H += W * (a[0] * a[0] + a[1] * a[1] + a[2] * a[2]);
      px.g += W * (a[0] * r[0] + a[1] * r[1] + a[2] * r[2]);
      px.ws += W;
      for (int k = 0; k < 3; ++k) px.wr[k] += W * r[k];
    }
    if (!flow) continue;
    LmFlowRows<T> fr;
    if (flow_rows_at(pb, opt, e, side, v, p, true, px, &fr)) {
      double bt[7];
      lm_flow_depth_terms(fr, &px.H, &px.g, px.bf, bt);
    }
  }
  return px;
}

// grid (pixel blocks, frames): frame terms, then per incident (edge, side) its terms.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    accumulate_kernel(AlignProblem<T> pb, LmOptions opt, double eps, const int64_t* off,
                      const int64_t* ent, LmOutputs out) {
  __shared__ double rows[kWarps * kMaxAcc];
  for (int i = threadIdx.x; i < kWarps * kMaxAcc; i += blockDim.x) rows[i] = 0.0;
  __syncthreads();
  const int64_t v = blockIdx.y, hw = pb.height * pb.width;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool active = p < hw, frozen = lm_is_frozen(opt, v), flow = lm_with_flow(pb, opt);
  double energy = 0.0;
  PixelSums px = pixel_sums(pb, opt, eps, off, ent, v, p, active, flow, &energy);
  const BlockSums add{rows};
  const double inv = lm_inv(px.H, frozen);
  double M[21];
  lm_frame_terms(px.a, px.n, px.ws, px.wr, px.g, inv, px.bf, M, add);  // px.bf: total b_f now
  flush(rows, kLmFrameAcc, out.frame_acc + v * kLmFrameAcc);
  add(0, energy);
  flush(rows, 1, out.energy);
  const T* Tv = pb.trans + 3 * v;
  for (int64_t j = off[v]; j < off[v + 1]; ++j) {
    const int64_t e = ent[j] >> 1;
    const int side = static_cast<int>(ent[j] & 1);
    double b[3] = {0, 0, 0}, r[3] = {0, 0, 0}, W = 0.0, unused = 0.0;
    if (active) W = lm_align_weight(pb, e, side, p, px.a, Tv, eps, b, r, &unused);
    lm_edge_terms(px.a, b, r, static_cast<double>(static_cast<T>(W)), px.g, inv, M, add);
    flush(rows, kLmEdgeAcc, out.edge_acc + (2 * e + side) * kLmEdgeAcc);
    if (!flow) continue;
    LmFlowRows<T> fr;
    double bt[7] = {0, 0, 0, 0, 0, 0, 0}, h2 = 0.0, g2 = 0.0, bf2[7] = {0, 0, 0, 0, 0, 0, 0};
    if (flow_rows_at(pb, opt, e, side, v, p, active, px, &fr))
      lm_flow_depth_terms(fr, &h2, &g2, bf2, bt);
    lm_flow_direct(fr, add);
    if (!frozen) lm_flow_schur(px.bf, bt, px.g, inv, add);  // uniform over the block (frame v)
    flush(rows, kLmFlowAcc, out.flow_acc + (2 * e + side) * kLmFlowAcc);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    backsub_kernel(AlignProblem<T> pb, LmOptions opt, double eps, const int64_t* off,
                   const int64_t* ent, LmBacksub<T> bs) {
  const int64_t v = blockIdx.y, hw = pb.height * pb.width;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= hw) return;
  if (lm_is_frozen(opt, v)) {
    bs.dl[v * hw + p] = T(0);
    return;
  }
  const bool flow = lm_with_flow(pb, opt);
  const double* df = bs.dframe + 7 * v;
  const T* Tv = pb.trans + 3 * v;
  double a[3], nn[3], dx[3];
  const double D = lm_pixel_geometry(pb, v, p, a, nn);
  lm_cross3(df, a, dx);
  for (int k = 0; k < 3; ++k) dx[k] += df[3 + k] + nn[k] * df[6];
  const double pf = a[0] * dx[0] + a[1] * dx[1] + a[2] * dx[2];
  double H = 0.0, g = 0.0, ws = 0.0, pe = 0.0;
  PixelSums px;
  px.D = D, px.x = static_cast<double>(p % pb.width), px.y = static_cast<double>(p / pb.width);
  for (int64_t j = off[v]; j < off[v + 1]; ++j) {
    const int64_t e = ent[j] >> 1;
    const int side = static_cast<int>(ent[j] & 1);
    const double* de = bs.dedge + 7 * e;
    double b[3], r[3], bp[3], unused = 0.0;
    const double Wx = lm_align_weight(pb, e, side, p, a, Tv, eps, b, r, &unused);
    if (Wx != 0.0) {
      H += Wx * (a[0] * a[0] + a[1] * a[1] + a[2] * a[2]);
      g += Wx * (a[0] * r[0] + a[1] * r[1] + a[2] * r[2]);
      const double W = static_cast<T>(Wx);
      ws += W;
      lm_cross3(b, de, bp);  // J_e δe = b × δφ − δt − b δs
      double s = 0.0;
      for (int k = 0; k < 3; ++k) s += a[k] * (bp[k] - de[3 + k] - b[k] * de[6]);
      pe += W * s;
    }
    if (!flow) continue;
    LmFlowRows<T> fr;
    if (!flow_rows_at(pb, opt, e, side, v, p, true, px, &fr)) continue;
    const double* dft = bs.dframe + 7 * pb.edges[2 * e + 1 - side];
    for (int c = 0; c < 2; ++c) {
      const double wl = fr.w[c] * fr.J[c][14];
      double jd = 0.0;
      for (int k = 0; k < 7; ++k) jd += fr.J[c][k] * df[k] + fr.J[c][7 + k] * dft[k];
      H += wl * fr.J[c][14];
      g += wl * fr.r[c];
      pe += wl * jd;
    }
  }
  const double Ht = static_cast<T>(H), gt = static_cast<T>(g);
  bs.dl[v * hw + p] = Ht > 0 ? static_cast<T>(-(gt + ws * pf + pe) / Ht) : T(0);
}

// One thread per pixel of [p0, p1) of frame v; x (rows × (p1 − p0) floats) zeroed beforehand.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    features_kernel(AlignProblem<T> pb, LmOptions opt, double eps, int64_t v, int64_t p0,
                    int64_t p1, const int64_t* off, const int64_t* ent, const int64_t* targets,
                    int64_t n_targets, float* x) {
  const int64_t np = p1 - p0;
  const int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q >= np) return;
  const int64_t p = p0 + q;
  const bool flow = lm_with_flow(pb, opt) && n_targets > 0;
  double unused = 0.0;
  const PixelSums px = pixel_sums(pb, opt, eps, off, ent, v, p, true, flow, &unused);
  const double is = (!lm_is_frozen(opt, v) && px.H > 0) ? 1.0 / sqrt(px.H) : 0.0;
  const double a2 = px.a[0] * px.a[0] + px.a[1] * px.a[1] + px.a[2] * px.a[2];
  const int64_t k = off[v + 1] - off[v];
  const T* Tv = pb.trans + 3 * v;
  for (int64_t j = 0; j < k; ++j) {
    const int64_t e = ent[off[v] + j] >> 1;
    const int side = static_cast<int>(ent[off[v] + j] & 1);
    double b[3], r[3];
    const double wi = lm_align_weight(pb, e, side, p, px.a, Tv, eps, b, r, &unused) * is;
    float* dst = x + kLmEdgeFeatures * j * np + q;
    dst[0] = static_cast<float>(wi * px.a[0]);
    dst[np] = static_cast<float>(wi * px.a[1]);
    dst[2 * np] = static_cast<float>(wi * px.a[2]);
    dst[3 * np] = static_cast<float>(wi * a2);
    if (!flow) continue;
    LmFlowRows<T> fr;
    if (!flow_rows_at(pb, opt, e, side, v, p, true, px, &fr)) continue;
    double h2 = 0.0, g2 = 0.0, bf2[7] = {0, 0, 0, 0, 0, 0, 0}, bt[7];
    lm_flow_depth_terms(fr, &h2, &g2, bf2, bt);
    const int64_t t = pb.edges[2 * e + 1 - side];
    int64_t u = 0;
    while (u < n_targets - 1 && targets[u] != t) ++u;
    float* y = x + (kLmEdgeFeatures * k + kLmTargetFeatures * u) * np + q;
    for (int c = 0; c < kLmTargetFeatures; ++c) y[c * np] += static_cast<float>(bt[c] * is);
  }
}

std::string status(cudaError_t err) {
  return err == cudaSuccess ? std::string() : std::string(cudaGetErrorString(err));
}

dim3 pixel_grid(int64_t pixels, int64_t frames) {
  return dim3(static_cast<unsigned>((pixels + kThreads - 1) / kThreads),
              static_cast<unsigned>(frames));
}

}  // namespace

template <typename T>
std::string lm_accumulate_cuda(const AlignProblem<T>& pb, const LmOptions& opt, T eps,
                               const int64_t* inc_offsets, const int64_t* inc_entries,
                               const LmOutputs& out, void* stream_ptr) {
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  const bool flow = lm_with_flow(pb, opt);
  cudaError_t err = cudaMemsetAsync(out.energy, 0, sizeof(double), stream);
  if (err == cudaSuccess)
    err = cudaMemsetAsync(out.frame_acc, 0, sizeof(double) * pb.n_frames * kLmFrameAcc, stream);
  if (err == cudaSuccess)
    err = cudaMemsetAsync(out.edge_acc, 0, sizeof(double) * pb.n_edges * 2 * kLmEdgeAcc, stream);
  if (err == cudaSuccess && flow)
    err = cudaMemsetAsync(out.flow_acc, 0, sizeof(double) * pb.n_edges * 2 * kLmFlowAcc, stream);
  if (err != cudaSuccess) return status(err);
  accumulate_kernel<T><<<pixel_grid(pb.height * pb.width, pb.n_frames), kThreads, 0, stream>>>(
      pb, opt, static_cast<double>(eps), inc_offsets, inc_entries, out);
  return status(cudaGetLastError());
}

template <typename T>
std::string lm_backsub_cuda(const AlignProblem<T>& pb, const LmOptions& opt, T eps,
                            const int64_t* inc_offsets, const int64_t* inc_entries,
                            const LmBacksub<T>& bs, void* stream_ptr) {
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  backsub_kernel<T><<<pixel_grid(pb.height * pb.width, pb.n_frames), kThreads, 0, stream>>>(
      pb, opt, static_cast<double>(eps), inc_offsets, inc_entries, bs);
  return status(cudaGetLastError());
}

template <typename T>
std::string lm_cross_features_cuda(const AlignProblem<T>& pb, const LmOptions& opt, T eps,
                                   int64_t v, int64_t p0, int64_t p1, const int64_t* inc_offsets,
                                   const int64_t* inc_entries, const int64_t* targets,
                                   int64_t n_targets, float* x, int64_t rows, void* stream_ptr) {
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  cudaError_t err = cudaMemsetAsync(x, 0, sizeof(float) * rows * (p1 - p0), stream);
  if (err != cudaSuccess) return status(err);
  features_kernel<T><<<pixel_grid(p1 - p0, 1), kThreads, 0, stream>>>(
      pb, opt, static_cast<double>(eps), v, p0, p1, inc_offsets, inc_entries, targets, n_targets,
      x);
  return status(cudaGetLastError());
}

#define MONST3R_LM_CUDA(T)                                                                        \
  template std::string lm_accumulate_cuda<T>(const AlignProblem<T>&, const LmOptions&, T,        \
                                             const int64_t*, const int64_t*, const LmOutputs&,   \
                                             void*);                                             \
  template std::string lm_backsub_cuda<T>(const AlignProblem<T>&, const LmOptions&, T,           \
                                          const int64_t*, const int64_t*, const LmBacksub<T>&,   \
                                          void*);                                                \
  template std::string lm_cross_features_cuda<T>(const AlignProblem<T>&, const LmOptions&, T,    \
                                                 int64_t, int64_t, int64_t, const int64_t*,      \
                                                 const int64_t*, const int64_t*, int64_t, float*, \
                                                 int64_t, void*);
MONST3R_LM_CUDA(float)
MONST3R_LM_CUDA(double)

}  // namespace monst3r
