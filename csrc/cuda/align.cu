// CUDA twin of the alignment kernel: one block per (edge, side); threads stride over pixels,
// per-frame / per-edge sums are block-reduced, then added atomically (a frame is shared by
// many edges; an edge by its two sides). Log-depth gradients are added atomically per pixel.
//
// Precision: every reduction is carried in double or compensated so that the sums agree with
// the CPU twin (which sums in double) at realistic sizes (E·H·W ≈ 10⁷ terms per block row):
//   per-thread sums  double where FP64 is fast (sm_80, sm_90, sm_100) or T = double;
//                    elsewhere (Jetson Orin, consumer GPUs: FP64 at 1/32–1/64 rate)
//                    Neumaier-compensated float, whose error does not grow with the number
//                    of terms;
//   warp, block and cross-block sums  double (shuffles, shared memory, double atomics), and the
//                    summed blocks (grad_frame, grad_edge, grad_flow, energy, flow_stats) are
//                    written in double;
//   per-pixel log-depth gradients  T atomics: a pixel sums one term per incident (edge, side),
//                    a few tens of terms, exactly as the CPU twin (which sums them in T too).
#include <cuda_runtime.h>

#include <type_traits>

#include "monst3r/align.h"
#include "monst3r/cuda_reduce.h"
#include "monst3r/kernels.h"

namespace monst3r {
namespace align_sums {  // named (not anonymous): only some architectures use these

// Neumaier-compensated float sum: the rounding error of each addition is kept in `comp`, so the
// error of the total does not grow with the number of terms (also when terms cancel).
struct CompensatedSum {
  float sum = 0.0f, comp = 0.0f;
  __device__ CompensatedSum& operator+=(float x) {
    const float t = sum + x;
    comp += fabsf(sum) >= fabsf(x) ? (sum - t) + x : (x - t) + sum;
    sum = t;
    return *this;
  }
  __device__ CompensatedSum& operator-=(float x) { return *this += -x; }
};

__device__ inline double total(double v) { return v; }
__device__ inline double total(const CompensatedSum& v) {
  return static_cast<double>(v.sum) + static_cast<double>(v.comp);
}

}  // namespace align_sums

namespace {

constexpr int kThreads = 256;
constexpr int kSums = kFrameGrad + kEdgeGrad + 1;  // + energy
constexpr int kFlowSums = kFlowGrad + 2;             // + kept loss, kept count
constexpr int kAll = kSums + kFlowSums;

#if defined(__CUDA_ARCH__) && \
    (__CUDA_ARCH__ == 800 || __CUDA_ARCH__ == 900 || __CUDA_ARCH__ == 1000)
constexpr bool kFastFp64 = true;
#else
constexpr bool kFastFp64 = false;
#endif

template <typename T>
__global__ void __launch_bounds__(kThreads)
    align_kernel(AlignProblem<T> pb, AlignGrad<T, double> out) {
  using Acc = std::conditional_t<std::is_same_v<T, double> || kFastFp64, double,
                                 align_sums::CompensatedSum>;
  const int64_t e = blockIdx.x >> 1;
  const int side = blockIdx.x & 1;
  const int64_t v = pb.edges[2 * e + side];
  const int64_t hw = pb.height * pb.width;
  const T* R = pb.rot + 9 * v;
  const T* Tv = pb.trans + 3 * v;
  const T f = pb.focal[v], cx = pb.pp[2 * v], cy = pb.pp[2 * v + 1];
  const T* Re = pb.edge_rot + 9 * e;
  const T* te = pb.edge_trans + 3 * e;
  const T sigma = pb.edge_scale[e];
  const T* pts = pb.pts[side] + e * hw * 3;
  const T* wts = pb.weight[side] + e * hw;
  const T* logd = pb.log_depth + v * hw;
  T* gl = out.grad_log_depth + v * hw;

  const bool with_flow = pb.flow[0] != nullptr;
  const int64_t other = pb.edges[2 * e + 1 - side];
  const T ft = pb.focal[other], cxt = pb.pp[2 * other], cyt = pb.pp[2 * other + 1];
  const T* Rrel = with_flow ? pb.flow_rot + (2 * e + side) * 9 : nullptr;
  const T* trel = with_flow ? pb.flow_trans + (2 * e + side) * 3 : nullptr;
  const T* meas = with_flow ? pb.flow[side] + e * 2 * hw : nullptr;
  const T* mask = with_flow ? pb.static_mask + v * hw : nullptr;

  Acc acc[kAll] = {};
  for (int64_t p = threadIdx.x; p < hw; p += blockDim.x) {
    const T y = static_cast<T>(p / pb.width), x = static_cast<T>(p % pb.width);
    const T d = m_exp(logd[p]);
    if (with_flow) {
      T g_logd, kept = T(0);
      acc[kSums + kFlowGrad] +=
          flow_residual(x, y, d, f, cx, cy, ft, cxt, cyt, Rrel, trel, meas[p], meas[hw + p],
                        mask[p], pb.pixel_thr, &kept, acc + kSums, &g_logd);
      acc[kSums + kFlowGrad + 1] += kept;
      atomicAdd(out.grad_log_depth_flow + (side * pb.n_frames + v) * hw + p, g_logd);
    }
    const T wp = wts[p];
    if (wp == T(0)) continue;
    T g[3], c[3], rc[3];
    acc[kSums - 1] += align_residual(x, y, d, f, cx, cy, R, Tv, Re, te, sigma, pts + 3 * p, wp,
                                     g, c, rc);
    const T gd = align_accumulate(g, c, rc, Re, R, pts + 3 * p, sigma, f, acc, acc + kFrameGrad);
    atomicAdd(gl + p, gd);
  }

  __shared__ double partial[kThreads / 32][kAll];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n_sums = with_flow ? kAll : kSums;
#pragma unroll
  for (int k = 0; k < kAll; ++k) {  // constant indices keep acc in registers
    if (k >= n_sums) break;
    const double s = warp_sum(align_sums::total(acc[k]));
    if (lane == 0) partial[warp][k] = s;
  }
  __syncthreads();
  if (warp == 0) {
    for (int k = 0; k < n_sums; ++k) {
      double s = lane < kThreads / 32 ? partial[lane][k] : 0.0;
      s = warp_sum(s);
      if (lane == 0) {
        if (k < kFrameGrad)
          atomicAdd(out.grad_frame + v * kFrameGrad + k, s);
        else if (k < kFrameGrad + kEdgeGrad)
          atomicAdd(out.grad_edge + e * kEdgeGrad + (k - kFrameGrad), s);
        else if (k == kSums - 1)
          atomicAdd(out.energy, s);
        else if (k < kSums + kFlowGrad)
          out.grad_flow[(2 * e + side) * kFlowGrad + (k - kSums)] = s;  // owned by this block
        else
          atomicAdd(out.flow_stats + 2 * side + (k - kSums - kFlowGrad), s);
      }
    }
  }
}

}  // namespace

template <typename T>
std::string align_energy_grad_cuda(const AlignProblem<T>& pb, const AlignGrad<T, double>& out,
                                   void* stream_ptr) {
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  const int64_t hw = pb.height * pb.width;
  cudaError_t err = cudaMemsetAsync(out.energy, 0, sizeof(double), stream);
  if (err == cudaSuccess)
    err = cudaMemsetAsync(out.grad_log_depth, 0, sizeof(T) * pb.n_frames * hw, stream);
  if (err == cudaSuccess)
    err = cudaMemsetAsync(out.grad_frame, 0, sizeof(double) * pb.n_frames * kFrameGrad, stream);
  if (err == cudaSuccess)
    err = cudaMemsetAsync(out.grad_edge, 0, sizeof(double) * pb.n_edges * kEdgeGrad, stream);
  if (err == cudaSuccess && pb.flow[0] != nullptr) {
    err = cudaMemsetAsync(out.flow_stats, 0, 4 * sizeof(double), stream);
    if (err == cudaSuccess)
      err = cudaMemsetAsync(out.grad_log_depth_flow, 0, sizeof(T) * 2 * pb.n_frames * hw, stream);
  }
  if (err != cudaSuccess) return cudaGetErrorString(err);
  if (pb.n_edges > 0) {
    align_kernel<T><<<static_cast<unsigned>(2 * pb.n_edges), kThreads, 0, stream>>>(pb, out);
    err = cudaGetLastError();
  }
  return err == cudaSuccess ? std::string() : std::string(cudaGetErrorString(err));
}

template std::string align_energy_grad_cuda<float>(const AlignProblem<float>&,
                                                    const AlignGrad<float, double>&, void*);
template std::string align_energy_grad_cuda<double>(const AlignProblem<double>&,
                                                     const AlignGrad<double, double>&, void*);

}  // namespace monst3r
