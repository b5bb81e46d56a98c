// Weiszfeld focal estimation (official post_process.estimate_focal_knowing_depth,
// focal_mode='weiszfeld'): an IRLS minimisation of Σ_p w_p ‖(u,v)_p − pp − f·(x/z, y/z)_p‖.
#include <cmath>
#include <limits>
#include <vector>

#include "monst3r/chunked_sum.h"
#include "monst3r/kernels.h"

namespace monst3r {

namespace {

// One IRLS pass over pixels [lo, hi): acc = (Σ wgt·dxp, Σ wgt·dxx) with wgt = bw / max(‖r‖, 1e-8)
// and r = (px, py) − f·(xx, yy). A plain function of restrict pointers: GCC vectorises it
// (written inside a lambda, its loads became per-lane gathers, three times slower).
void irls_sums(const double* __restrict bw, const double* __restrict xx,
               const double* __restrict yy, const double* __restrict px,
               const double* __restrict py, const double* __restrict dxp,
               const double* __restrict dxx, double f, int64_t lo, int64_t hi, double* acc) {
  double num = 0.0, den = 0.0;
#pragma omp simd reduction(+ : num, den)
  for (int64_t p = lo; p < hi; ++p) {
    const double rx = px[p] - f * xx[p], ry = py[p] - f * yy[p];
    const double dis = std::sqrt(rx * rx + ry * ry);
    const double wgt = bw[p] / (dis > 1e-8 ? dis : 1e-8);
    num += wgt * dxp[p];
    den += wgt * dxx[p];
  }
  acc[0] = num;
  acc[1] = den;
}

}  // namespace

double estimate_focal_cpu(const float* pts, const float* weights, int64_t h, int64_t w,
                          double cx, double cy, int iters, int threads) {
  const int64_t hw = h * w;
  // Per-pixel terms, once (structure of arrays so that the IRLS passes vectorise): pixels whose
  // point (or weight) is not finite get weight 0; non-finite x/z, y/z count as 0 (numpy's
  // nan_to_num in the official code). Sums are chunked (monst3r/chunked_sum.h): the focal does
  // not depend on the number of threads.
  std::vector<double> buf(static_cast<size_t>(7 * hw));
  double *bw = buf.data(), *xx = bw + hw, *yy = xx + hw, *px = yy + hw, *py = px + hw,
         *dxp = py + hw, *dxx = dxp + hw;
  auto setup = [=](int64_t, int64_t lo, int64_t hi, double* acc) {
    int64_t row = lo / w, col = lo - row * w;
    for (int64_t p = lo; p < hi; ++p) {
      const double x = pts[3 * p], y = pts[3 * p + 1], z = pts[3 * p + 2];
      double b = weights ? static_cast<double>(weights[p]) : 1.0;
      if (!(std::isfinite(x) && std::isfinite(y) && std::isfinite(z) && std::isfinite(b)))
        b = 0.0;
      double u = x / z, v = y / z;
      if (!std::isfinite(u)) u = 0.0;
      if (!std::isfinite(v)) v = 0.0;
      bw[p] = b;
      xx[p] = u;
      yy[p] = v;
      px[p] = static_cast<double>(col) - cx;
      py[p] = static_cast<double>(row) - cy;
      dxp[p] = u * px[p] + v * py[p];
      dxx[p] = u * u + v * v;
      acc[0] += b * dxp[p];  // pass 0: the closed-form L2 solution
      acc[1] += b * dxx[p];
      acc[2] += b;
      if (++col == w) {
        col = 0;
        ++row;
      }
    }
  };
  double sums[3];
  chunked_sum<3>(1, hw, threads, setup, sums);
  if (!(sums[2] > 0.0)) return std::numeric_limits<double>::quiet_NaN();
  double focal = sums[0] / sums[1];
  for (int it = 0; it < iters; ++it) {
    const double f = focal;
    auto irls = [=](int64_t, int64_t lo, int64_t hi, double* acc) {
      irls_sums(bw, xx, yy, px, py, dxp, dxx, f, lo, hi, acc);
    };
    chunked_sum<2>(1, hw, threads, irls, sums);
    focal = sums[0] / sums[1];
  }
  return focal;
}

}  // namespace monst3r
