// Launchers for every kernel of the core: each op has a CPU twin (OpenMP) and a CUDA twin over
// the same inline math in monst3r/geometry.h. Arrays are C-contiguous float32.
#pragma once

#include <cstdint>
#include <string>

#include "monst3r/align.h"

namespace monst3r {

// depth:  (N, H, W)      z-depth, any unit (points come out in the same unit)
// focal:  (N,)           focal length in pixels
// pp:     (N, 2)         principal point (cx, cy) in pixels
// points: (N, H, W, 3)   output, camera frame of each view
void depth_to_points_cpu(const float* depth, const float* focal, const float* pp, float* points,
                         int64_t n, int64_t h, int64_t w);

// Alignment energy and gradients (see monst3r/align.h for the definition), T = float or double.
template <typename T>
void align_energy_grad_cpu(const AlignProblem<T>& problem, const AlignGrad<T>& out);

// Ego-motion flow of M maps (monst3r/egoflow.h). Map m: depth (H,W) of the source view, focal and
// principal point of the source and target views, relative pose R_rel (9, row-major) and t_rel
// (3) mapping source camera to target camera. Outputs (each optional, null to skip):
// flow (M,2,H,W) ego-flow (x, y) in pixels; error (M,H,W) ‖ego − measured‖₂ where measured is
// (M,2,H,W) (required for error).
struct EgoFlowProblem {
  int64_t maps, height, width;
  const float* depth;      // (M,H,W)
  const float* focal_src;  // (M,)
  const float* pp_src;     // (M,2)
  const float* focal_tgt;  // (M,)
  const float* pp_tgt;     // (M,2)
  const float* rot;        // (M,9)
  const float* trans;      // (M,3)
  const float* measured;   // (M,2,H,W) or null
  float* flow;             // (M,2,H,W) or null
  float* error;            // (M,H,W) or null
};
void ego_flow_cpu(const EgoFlowProblem& pb);

// Weiszfeld focal of a camera-frame pointmap pts (H,W,3) with optional per-pixel weights (H,W)
// (null = 1), principal point (cx, cy): the L2 solution then `iters` IRLS re-weightings by
// 1/max(residual, 1e-8). Pixels with a non-finite point or weight are left out; NaN when none is
// left. Accumulates in float64, in fixed chunks (monst3r/chunked_sum.h: the result does not depend
// on the thread count; small maps run on one thread). threads: OpenMP threads (0 = the core's
// setting; 1 when the caller already runs several of these at once).
double estimate_focal_cpu(const float* pts, const float* weights, int64_t h, int64_t w,
                          double cx, double cy, int iters, int threads = 0);

// Number of OpenMP threads the CPU kernels use (1 when built without OpenMP).
int cpu_num_threads();
void set_cpu_num_threads(int n);

// ---- CUDA launchers ----------------------------------------------------------------------------
// Declared in every build, defined (csrc/cuda/*.cu) only with MONST3R_RT_WITH_CUDA: call them only
// from inside monst3r::CudaArgs::launch (monst3r/cuda_args.h), which never runs its launcher in a
// build without CUDA kernels. Every pointer is device memory; `stream` is a cudaStream_t (0 =
// legacy default stream). They return an empty string on success, else the CUDA error text.

// Same contract as the CPU twin.
std::string depth_to_points_cuda(const float* depth, const float* focal, const float* pp,
                                 float* points, int64_t n, int64_t h, int64_t w, void* stream);

// Alignment (out.energy: one double). Per-thread sums are double or compensated, block
// reductions and atomics double, so the summed blocks are double.
template <typename T>
std::string align_energy_grad_cuda(const AlignProblem<T>& problem,
                                   const AlignGrad<T, double>& out, void* stream);

// CUDA twin of ego_flow_cpu.
std::string ego_flow_cuda(const EgoFlowProblem& pb, void* stream);

#ifdef MONST3R_RT_WITH_CUDA
// The calling thread's current CUDA device / make `device` current (monst3r::DeviceGuard).
// Empty string on success, else the CUDA error text.
std::string cuda_get_device(int* device);
std::string cuda_set_device(int device);

// Usable CUDA devices (0 when no driver / no GPU); `reason` says why when 0.
int cuda_device_count(std::string* reason);
std::string cuda_device_name(int index);
int cuda_runtime_version();
int cuda_driver_version();
#endif

}  // namespace monst3r
