// Weiszfeld focal estimation (official post_process.estimate_focal_knowing_depth,
// focal_mode='weiszfeld'): an IRLS minimisation of Σ_p w_p ‖(u,v)_p − pp − f·(x/z, y/z)_p‖.
#include <cmath>
#include <limits>
#include <vector>

#include "monst3r/kernels.h"

namespace monst3r {

double estimate_focal_cpu(const float* pts, const float* weights, int64_t h, int64_t w,
                          double cx, double cy, int iters, int threads) {
  const int64_t hw = h * w;
  const int nt = threads > 0 ? threads : cpu_num_threads();
  // Per-pixel terms, once (structure of arrays so that the IRLS passes vectorise): pixels whose
  // point (or weight) is not finite get weight 0; non-finite x/z, y/z count as 0 (numpy's
  // nan_to_num in the official code).
  std::vector<double> buf(static_cast<size_t>(7 * hw));
  double *bw = buf.data(), *xx = bw + hw, *yy = xx + hw, *px = yy + hw, *py = px + hw,
         *dxp = py + hw, *dxx = dxp + hw;
  double num = 0.0, den = 0.0, total = 0.0;
#pragma omp parallel for reduction(+ : num, den, total) schedule(static) num_threads(nt)
  for (int64_t r = 0; r < h; ++r) {
    for (int64_t c = 0; c < w; ++c) {
      const int64_t p = r * w + c;
      const double x = pts[3 * p], y = pts[3 * p + 1], z = pts[3 * p + 2];
      double b = weights ? static_cast<double>(weights[p]) : 1.0;
      if (!(std::isfinite(x) && std::isfinite(y) && std::isfinite(z) && std::isfinite(b))) b = 0.0;
      double u = x / z, v = y / z;
      if (!std::isfinite(u)) u = 0.0;
      if (!std::isfinite(v)) v = 0.0;
      bw[p] = b;
      xx[p] = u;
      yy[p] = v;
      px[p] = static_cast<double>(c) - cx;
      py[p] = static_cast<double>(r) - cy;
      dxp[p] = u * px[p] + v * py[p];
      dxx[p] = u * u + v * v;
      num += b * dxp[p];  // pass 0: the closed-form L2 solution
      den += b * dxx[p];
      total += b;
    }
  }
  if (!(total > 0.0)) return std::numeric_limits<double>::quiet_NaN();
  double focal = num / den;
  for (int it = 0; it < iters; ++it) {
    const double f = focal;
    num = 0.0;
    den = 0.0;
#pragma omp parallel for simd reduction(+ : num, den) schedule(static) num_threads(nt)
    for (int64_t p = 0; p < hw; ++p) {
      const double rx = px[p] - f * xx[p], ry = py[p] - f * yy[p];
      const double dis = std::sqrt(rx * rx + ry * ry);
      const double wgt = bw[p] / (dis > 1e-8 ? dis : 1e-8);
      num += wgt * dxp[p];
      den += wgt * dxx[p];
    }
    focal = num / den;
  }
  return focal;
}

}  // namespace monst3r
