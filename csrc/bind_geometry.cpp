// pybind11 bindings of the geometry kernels: weighted moments of point pairs (the per-pixel part
// of a weighted Umeyama registration, monst3r/moments.h).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "monst3r/cuda_args.h"
#include "monst3r/host_args.h"
#include "monst3r/moments.h"

namespace py = pybind11;

namespace {

using monst3r::host::shape_of;
using monst3r::host::typed;

template <typename T>
py::array_t<double> pair_moments_impl(const py::array& src, const py::array& dst,
                                      const py::object& weights, int threads) {
  const int64_t b = src.shape(0), p = src.shape(1);
  const T* x = typed<T>(src, "src", {b, p, 3});
  const T* y = typed<T>(dst, "dst", {b, p, 3});
  py::array wa;  // keeps the weights alive during the call
  const T* w = nullptr;
  if (!weights.is_none()) {
    wa = weights.cast<py::array>();
    w = typed<T>(wa, "weights", {b, p});
  }
  py::array_t<double> out({b, int64_t{monst3r::kPairMoments}});
  double* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    monst3r::pair_moments_cpu<T>(x, y, w, b, p, o, threads);
  }
  return out;
}

py::array_t<double> pair_moments(const py::array& src, const py::array& dst,
                                 const py::object& weights, int threads) {
  if (src.ndim() != 3 || src.shape(2) != 3)
    throw py::value_error("src must have shape (B,P,3), got " + shape_of(src));
  if (py::isinstance<py::array_t<double>>(src))
    return pair_moments_impl<double>(src, dst, weights, threads);
  if (py::isinstance<py::array_t<float>>(src))
    return pair_moments_impl<float>(src, dst, weights, threads);
  throw py::value_error("src must be float32 or float64");
}

void pair_moments_cuda(const py::object& src, const py::object& dst, const py::object& weights,
                       const py::object& out, std::uintptr_t stream) {
  using monst3r::DType;
  monst3r::CudaArgs a("pair_moments_cuda", stream);
  const float* x = a.arg("src", src, DType::f32, {"B", "P", 3}).as<float>();
  const float* y = a.arg("dst", dst, DType::f32, {"B", "P", 3}).as<float>();
  const float* w = a.optional("weights", weights, DType::f32, {"B", "P"}).as<float>();
  double* o = a.arg("out", out, DType::f64, {"B", 17}).as<double>();
  a.launch([&](void* st) {
    return monst3r::pair_moments_cuda(x, y, w, a.dim("B"), a.dim("P"), o, st);
  });
}

}  // namespace

void register_geometry(py::module_& m) {
  m.def("pair_moments", &pair_moments, py::arg("src"), py::arg("dst"),
        py::arg("weights") = py::none(), py::arg("threads") = 0,
        "Weighted moments of B sets of P point pairs: src, dst (B,P,3) and weights (B,P) (None = "
        "1), all float32 or all float64 -> (B,17) float64 [Σw, Σw·x (3), Σw·y (3), Σw·x yᵀ (9, "
        "row-major), Σw·|x|²]; pairs with a non-finite value are skipped. GIL released; threads "
        "= OpenMP threads (0: default); the result does not depend on it.");
  m.def("pair_moments_cuda", &pair_moments_cuda, py::arg("src"), py::arg("dst"),
        py::arg("weights"), py::arg("out"), py::kw_only(), py::arg("stream") = 0,
        "CUDA twin of pair_moments (DLPack arrays, checked): src/dst (B,P,3) float32, weights "
        "(B,P) float32 or None, out (B,17) float64, all on one GPU; a cudaStream_t handle.");
}
