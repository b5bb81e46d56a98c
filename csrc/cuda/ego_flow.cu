#include <cuda_runtime.h>

#include "monst3r/egoflow.h"
#include "monst3r/kernels.h"

namespace monst3r {
namespace {

__global__ void ego_flow_kernel(EgoFlowProblem pb) {
  const int64_t hw = pb.height * pb.width, total = pb.maps * hw;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t m = idx / hw, pix = idx - m * hw;
    const float y = static_cast<float>(pix / pb.width), x = static_cast<float>(pix % pb.width);
    float p[3], a[3], q[3], ego[2];
    const float disp = 1.0f / (pb.depth[idx] + 1e-6f);
    ego_flow_pixel(x, y, disp, pb.focal_src[m], pb.pp_src[2 * m], pb.pp_src[2 * m + 1],
                   pb.focal_tgt[m], pb.pp_tgt[2 * m], pb.pp_tgt[2 * m + 1], pb.rot + 9 * m,
                   pb.trans + 3 * m, p, a, q, ego);
    const int64_t off = m * 2 * hw + pix;
    if (pb.flow) {
      pb.flow[off] = ego[0];
      pb.flow[off + hw] = ego[1];
    }
    if (pb.error) {
      const float ex = ego[0] - pb.measured[off], ey = ego[1] - pb.measured[off + hw];
      pb.error[idx] = sqrtf(ex * ex + ey * ey);
    }
  }
}

}  // namespace

std::string ego_flow_cuda(const EgoFlowProblem& pb, void* stream) {
  const int64_t total = pb.maps * pb.height * pb.width;
  if (total == 0) return "";
  const int threads = 256;
  const int64_t wanted = (total + threads - 1) / threads;
  const int blocks = static_cast<int>(wanted < 65535 * 8 ? wanted : 65535 * 8);
  ego_flow_kernel<<<blocks, threads, 0, static_cast<cudaStream_t>(stream)>>>(pb);
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? std::string() : std::string(cudaGetErrorString(err));
}

}  // namespace monst3r
