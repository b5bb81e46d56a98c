// One Adam step per element, exactly as torch.optim.Adam (no weight decay, no amsgrad) does it:
//   exp_avg.lerp_(grad, 1 − β1)
//   exp_avg_sq.mul_(β2).addcmul_(grad, grad, value = 1 − β2)
//   denom = exp_avg_sq.sqrt() / sqrt(1 − β2^t) + eps
//   param.addcdiv_(exp_avg, denom, value = −lr / (1 − β1^t))
// with the same operation order and the same T-precision roundings (scalars computed in double
// on the host, then rounded to T, as torch does for a Python-number argument).
#pragma once

#include <cmath>
#include <cstdint>

#include "monst3r/common.h"

namespace monst3r {

// Coefficients of step t (1-based) in the element type T.
template <typename T>
struct AdamCoeffs {
  T weight1;     // lerp weight 1 − β1
  T beta2;       // β2
  T weight2;     // 1 − β2
  T bias2_sqrt;  // sqrt(1 − β2^t)
  T eps;
  T neg_step;    // −lr / (1 − β1^t)
};

// Host: the coefficients of step `step` (≥ 1) computed in double like torch's Python code.
template <typename T>
inline AdamCoeffs<T> adam_coeffs(int64_t step, double lr, double beta1, double beta2,
                                 double eps) {
  const double t = static_cast<double>(step);
  const double bias1 = 1.0 - std::pow(beta1, t);
  const double bias2 = 1.0 - std::pow(beta2, t);
  return {static_cast<T>(1.0 - beta1), static_cast<T>(beta2),
          static_cast<T>(1.0 - beta2), static_cast<T>(std::pow(bias2, 0.5)),
          static_cast<T>(eps),         static_cast<T>(-(lr / bias1))};
}

// Updates param p, first moment m and second moment v of one element in place, gradient g.
template <typename T>
MONST3R_HD void adam_update(T& p, T& m, T& v, T g, const AdamCoeffs<T>& c) {
  // torch's lerp: start + w·(end − start) for |w| < 0.5, else end − (end − start)·(1 − w)
  m = c.weight1 < T(0.5) ? m + c.weight1 * (g - m) : g - (g - m) * (T(1) - c.weight1);
  v = v * c.beta2;
  v = v + c.weight2 * g * g;
  const T denom = m_sqrt(v) / c.bias2_sqrt + c.eps;
  p = p + c.neg_step * m / denom;
}

}  // namespace monst3r
