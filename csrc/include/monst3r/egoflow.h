// Ego-motion flow: the optical flow that camera motion alone induces at a pixel of known depth
// (official DepthBasedWarping, spec §4.5), written once for the CPU loops, the CUDA kernels and the
// alignment's flow term.
#pragma once

#include "monst3r/common.h"

namespace monst3r {

// First step of ego_flow_pixel: the ray p = K_s⁻¹ (x, y, 1) of pixel (x, y) in the source view.
// It depends on the source view only (loops over several targets compute it once).
template <typename T>
MONST3R_HD void ego_flow_ray(T x, T y, T fs, T cxs, T cys, T* p) {
  p[0] = (x - cxs) / fs;
  p[1] = (y - cys) / fs;
  p[2] = T(1);
}

// The rest of ego_flow_pixel from the ray p: writes a, q and ego; returns 1/(q_z + 1e-6).
template <typename T>
MONST3R_HD T ego_flow_from_ray(T x, T y, const T* p, T disp, T ft, T cxt, T cyt, const T* Rrel,
                               const T* trel, T* a, T* q, T* ego) {
  for (int k = 0; k < 3; ++k)
    a[k] = Rrel[3 * k] * p[0] + Rrel[3 * k + 1] * p[1] + Rrel[3 * k + 2] * p[2] + disp * trel[k];
  q[0] = ft * a[0] + cxt * a[2];
  q[1] = ft * a[1] + cyt * a[2];
  q[2] = a[2];
  const T zinv = T(1) / (q[2] + T(1e-6));
  ego[0] = q[0] * zinv - x;
  ego[1] = q[1] * zinv - y;
  return zinv;
}

// Pixel (x, y) of the source view s with disparity disp = 1/(D + 1e-6) (z-depth D; the official
// code warps by this disparity), relative pose (R_rel, t_rel) mapping camera s to camera t
// (X_t = R_rel X_s + t_rel, R_rel row-major):
//   p = K_s⁻¹ (x, y, 1),  a = R_rel p + disp·t_rel,  q = K_t a,
//   ego = (q_x, q_y) / (q_z + 1e-6) − (x, y).
// Writes p, a, q and ego; returns 1/(q_z + 1e-6) (the backward pass of the flow term needs it).
template <typename T>
MONST3R_HD T ego_flow_pixel(T x, T y, T disp, T fs, T cxs, T cys, T ft, T cxt, T cyt,
                            const T* Rrel, const T* trel, T* p, T* a, T* q, T* ego) {
  ego_flow_ray(x, y, fs, cxs, cys, p);
  return ego_flow_from_ray(x, y, p, disp, ft, cxt, cyt, Rrel, trel, a, q, ego);
}

}  // namespace monst3r
