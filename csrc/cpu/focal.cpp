// Weiszfeld focal estimation (official post_process.estimate_focal_knowing_depth,
// focal_mode='weiszfeld'): an IRLS minimisation of Σ_p w_p ‖(u,v)_p − pp − f·(x/z, y/z)_p‖.
#include <cmath>
#include <limits>

#include "monst3r/kernels.h"

namespace monst3r {

double estimate_focal_cpu(const float* pts, const float* weights, int64_t h, int64_t w,
                          double cx, double cy, int iters) {
  const int64_t hw = h * w;
  // Pass 0: closed-form L2 solution; pixels whose point (or weight) is not finite are left out,
  // non-finite x/z, y/z count as 0 (numpy's nan_to_num in the official code).
  auto terms = [&](int64_t p, double& bw, double& dxp, double& dxx, double& px, double& py,
                   double& xx, double& yy) {
    const double x = pts[3 * p], y = pts[3 * p + 1], z = pts[3 * p + 2];
    bw = weights ? static_cast<double>(weights[p]) : 1.0;
    if (!(std::isfinite(x) && std::isfinite(y) && std::isfinite(z) && std::isfinite(bw))) bw = 0.0;
    xx = x / z;
    yy = y / z;
    if (!std::isfinite(xx)) xx = 0.0;
    if (!std::isfinite(yy)) yy = 0.0;
    px = static_cast<double>(p % w) - cx;
    py = static_cast<double>(p / w) - cy;
    dxp = xx * px + yy * py;
    dxx = xx * xx + yy * yy;
  };
  double num = 0.0, den = 0.0, total = 0.0;
#pragma omp parallel for reduction(+ : num, den, total) schedule(static)
  for (int64_t p = 0; p < hw; ++p) {
    double bw, dxp, dxx, px, py, xx, yy;
    terms(p, bw, dxp, dxx, px, py, xx, yy);
    num += bw * dxp;
    den += bw * dxx;
    total += bw;
  }
  if (!(total > 0.0)) return std::numeric_limits<double>::quiet_NaN();
  double focal = num / den;
  for (int it = 0; it < iters; ++it) {
    const double f = focal;
    num = 0.0;
    den = 0.0;
#pragma omp parallel for reduction(+ : num, den) schedule(static)
    for (int64_t p = 0; p < hw; ++p) {
      double bw, dxp, dxx, px, py, xx, yy;
      terms(p, bw, dxp, dxx, px, py, xx, yy);
      const double rx = px - f * xx, ry = py - f * yy;
      const double dis = std::sqrt(rx * rx + ry * ry);
      const double wgt = bw / (dis > 1e-8 ? dis : 1e-8);
      num += wgt * dxp;
      den += wgt * dxx;
    }
    focal = num / den;
  }
  return focal;
}

}  // namespace monst3r
