#include "monst3r/egoflow.h"
#include "monst3r/kernels.h"

namespace monst3r {

void ego_flow_cpu(const EgoFlowProblem& pb) {
  const int64_t h = pb.height, w = pb.width, hw = h * w, rows = pb.maps * h;
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t m = row / h;
    const float y = static_cast<float>(row - m * h);
    const float fs = pb.focal_src[m], cxs = pb.pp_src[2 * m], cys = pb.pp_src[2 * m + 1];
    const float ft = pb.focal_tgt[m], cxt = pb.pp_tgt[2 * m], cyt = pb.pp_tgt[2 * m + 1];
    const float* R = pb.rot + 9 * m;
    const float* t = pb.trans + 3 * m;
    const float* d = pb.depth + row * w;
    const int64_t off = m * 2 * hw + (row - m * h) * w;  // channel 0 of this row
#pragma omp simd
    for (int64_t x = 0; x < w; ++x) {
      float p[3], a[3], q[3], ego[2];
      const float disp = 1.0f / (d[x] + 1e-6f);
      ego_flow_pixel(static_cast<float>(x), y, disp, fs, cxs, cys, ft, cxt, cyt, R, t, p, a, q, ego);
      if (pb.flow) {
        pb.flow[off + x] = ego[0];
        pb.flow[off + hw + x] = ego[1];
      }
      if (pb.error) {
        const float ex = ego[0] - pb.measured[off + x], ey = ego[1] - pb.measured[off + hw + x];
        pb.error[row * w + x] = std::sqrt(ex * ex + ey * ey);
      }
    }
  }
}

}  // namespace monst3r
