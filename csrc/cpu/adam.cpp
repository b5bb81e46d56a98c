// CPU twin of the fused Adam step (monst3r/adam.h): one OpenMP + SIMD pass over the elements.
#include "monst3r/adam.h"
#include "monst3r/perpixel.h"

namespace monst3r {

template <typename T>
void adam_step_cpu(T* __restrict__ param, T* __restrict__ exp_avg, T* __restrict__ exp_avg_sq,
                   const T* __restrict__ grad, int64_t count, const AdamCoeffs<T>& coeffs) {
  const AdamCoeffs<T> c = coeffs;  // local copy: loop-invariant for the vectoriser
#pragma omp parallel for simd schedule(static) if (count > 65536)
  for (int64_t k = 0; k < count; ++k) adam_update(param[k], exp_avg[k], exp_avg_sq[k], grad[k], c);
}

template void adam_step_cpu<float>(float*, float*, float*, const float*, int64_t,
                                   const AdamCoeffs<float>&);
template void adam_step_cpu<double>(double*, double*, double*, const double*, int64_t,
                                    const AdamCoeffs<double>&);

}  // namespace monst3r
