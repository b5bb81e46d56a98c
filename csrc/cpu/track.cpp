// OpenMP loop of the Sim(3) normal equations (monst3r/track.h), summed deterministically in chunks.
#include "monst3r/chunked_sum.h"
#include "monst3r/track.h"

namespace monst3r {

namespace {
// A point costs about ten times a pair moment: a thread pays off from this many points on.
constexpr int64_t kTrackPointsPerThread = 1 << 15;

// The kAxis loop: kN = kSim3AccIso sums without an axis, kSim3Acc with one; acc[kN].
template <bool kAxis, int kN>
void sim3_sums(const float* src, const float* dst, const float* weight, const float* inv_sigma,
               const float* axis, Sim3Axial axial, int64_t points, const Sim3Pose& pose,
               double huber, int threads, double* acc) {
  auto add = [&](int64_t, int64_t lo, int64_t hi, double* a) {
    double local[kN] = {};  // the point math is branch-free: the loop vectorises
#pragma omp simd reduction(+ : local[:kN])
    for (int64_t k = lo; k < hi; ++k)
      accumulate_sim3_point<kAxis>(src, dst, weight, inv_sigma, axis, axial, k, pose, huber,
                                   local);
    for (int m = 0; m < kN; ++m) a[m] += local[m];
  };
  chunked_sum<kN>(1, points, threads, add, acc, kTrackPointsPerThread);
}
}  // namespace

void sim3_normal_equations_cpu(const float* src, const float* dst, const float* weight,
                               const float* inv_sigma, const float* axis, double axial_weight,
                               int64_t points, const Sim3Pose& pose, double huber, double* out,
                               int threads) {
  double acc[kSim3Acc] = {};
  const Sim3Axial axial = sim3_axial(axial_weight);
  if (axis)
    sim3_sums<true, kSim3Acc>(src, dst, weight, inv_sigma, axis, axial, points, pose, huber,
                              threads, acc);
  else
    sim3_sums<false, kSim3AccIso>(src, dst, weight, inv_sigma, axis, axial, points, pose, huber,
                                  threads, acc);
  expand_sim3_normal_equations(acc, out);
}

}  // namespace monst3r
