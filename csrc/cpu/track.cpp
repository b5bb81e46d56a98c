// OpenMP loop of the Sim(3) normal equations (monst3r/track.h), summed deterministically in chunks.
#include "monst3r/chunked_sum.h"
#include "monst3r/track.h"

namespace monst3r {

namespace {
// A point costs about ten times a pair moment: a thread pays off from this many points on.
constexpr int64_t kTrackPointsPerThread = 1 << 15;
}  // namespace

void sim3_normal_equations_cpu(const float* src, const float* dst, const float* weight,
                               const float* inv_sigma, int64_t points, const Sim3Pose& pose,
                               double huber, double* out, int threads) {
  double acc[kSim3Acc];
  auto add = [&](int64_t, int64_t lo, int64_t hi, double* a) {
    double local[kSim3Acc] = {};  // the point math is branch-free: the loop vectorises
#pragma omp simd reduction(+ : local[:kSim3Acc])
    for (int64_t k = lo; k < hi; ++k)
      accumulate_sim3_point(src, dst, weight, inv_sigma, k, pose, huber, local);
    for (int m = 0; m < kSim3Acc; ++m) a[m] += local[m];
  };
  chunked_sum<kSim3Acc>(1, points, threads, add, acc, kTrackPointsPerThread);
  expand_sim3_normal_equations(acc, out);
}

}  // namespace monst3r
