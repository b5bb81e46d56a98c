// pybind11 bindings of the tracking op: normal equations of a robust Sim(3) registration of
// pixel-aligned point pairs (monst3r/track.h). The CPU entry point checks every NumPy array
// (monst3r/host_args.h); the CUDA twin takes DLPack arrays through the checked boundary
// (monst3r/cuda_args.h: device, dtype, shape, layout, each array named) and a cudaStream_t. The
// pose (scale, rot, trans) and the Huber threshold are host values in both.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "monst3r/cuda_args.h"
#include "monst3r/host_args.h"
#include "monst3r/track.h"

namespace py = pybind11;

namespace {

using monst3r::host::check_shape;
using monst3r::host::typed;

// The pose as sR, t; ValueError naming the bad argument.
monst3r::Sim3Pose pose_of(double scale, const py::array& rot, const py::array& trans,
                          double huber) {
  if (!std::isfinite(scale) || scale == 0.0)
    throw py::value_error("scale must be finite and non-zero, got " + std::to_string(scale));
  if (!(huber > 0.0))
    throw py::value_error("huber must be > 0 (inf: plain least squares), got " +
                          std::to_string(huber));
  const double* r = typed<double>(rot, "rot", {3, 3});
  const double* t = typed<double>(trans, "trans", {3});
  monst3r::Sim3Pose pose{};
  for (int i = 0; i < 9; ++i) pose.sR[i] = scale * r[i];
  for (int i = 0; i < 3; ++i) pose.t[i] = t[i];
  return pose;
}

// ValueError unless 0 < axial_weight <= 1.
void check_axial_weight(double axial_weight) {
  if (!(axial_weight > 0.0 && axial_weight <= 1.0))
    throw py::value_error("axial_weight must be in (0, 1], got " + std::to_string(axial_weight));
}

py::tuple sim3_normal_equations(const py::array& src, const py::array& dst,
                                const py::array& weight, const py::array& inv_sigma, double scale,
                                const py::array& rot, const py::array& trans, double huber,
                                int threads, const py::object& axis, double axial_weight) {
  check_shape(src, "src", {-1, 3}, "(M,3)");
  const int64_t m = src.shape(0);
  const float* x = typed<float>(src, "src", {m, 3});
  const float* y = typed<float>(dst, "dst", {m, 3});
  const float* w = typed<float>(weight, "weight", {m});
  const float* is = typed<float>(inv_sigma, "inv_sigma", {m});
  py::array axis_array;  // keeps the axis alive during the call
  const float* ax = nullptr;
  if (!axis.is_none()) {
    if (!py::isinstance<py::array>(axis))
      throw py::value_error("axis must be None or a C-contiguous float32 array of shape (" +
                            std::to_string(m) + ",3), got " +
                            std::string(py::str(py::type::of(axis).attr("__name__"))));
    axis_array = axis.cast<py::array>();
    ax = typed<float>(axis_array, "axis", {m, 3});
  }
  check_axial_weight(axial_weight);
  const monst3r::Sim3Pose pose = pose_of(scale, rot, trans, huber);
  double out[monst3r::kSim3Out];
  {
    py::gil_scoped_release release;
    monst3r::sim3_normal_equations_cpu(x, y, w, is, ax, axial_weight, m, pose, huber, out,
                                       threads);
  }
  py::array_t<double> H({int64_t{7}, int64_t{7}});
  py::array_t<double> g(int64_t{7});
  std::copy(out, out + 49, H.mutable_data());
  std::copy(out + 49, out + 56, g.mutable_data());
  return py::make_tuple(H, g, out[56], static_cast<int64_t>(out[57]),
                        static_cast<int64_t>(out[58]));
}

void sim3_normal_equations_cuda(const py::object& src, const py::object& dst,
                                const py::object& weight, const py::object& inv_sigma,
                                double scale, const py::array& rot, const py::array& trans,
                                double huber, const py::object& partials, const py::object& out,
                                std::uintptr_t stream, const py::object& axis,
                                double axial_weight) {
  using monst3r::DType;
  monst3r::CudaArgs a("sim3_normal_equations_cuda", stream);
  const float* x = a.arg("src", src, DType::f32, {"M", 3}).as<float>();
  const float* y = a.arg("dst", dst, DType::f32, {"M", 3}).as<float>();
  const float* w = a.arg("weight", weight, DType::f32, {"M"}).as<float>();
  const float* is = a.arg("inv_sigma", inv_sigma, DType::f32, {"M"}).as<float>();
  const float* ax = a.optional("axis", axis, DType::f32, {"M", 3}).as<float>();
  double* p = a.arg("partials", partials, DType::f64,
                    {monst3r::kSim3Blocks, monst3r::kSim3Acc}).as<double>();
  double* o = a.arg("out", out, DType::f64, {monst3r::kSim3Out}).as<double>();
  check_axial_weight(axial_weight);
  const monst3r::Sim3Pose pose = pose_of(scale, rot, trans, huber);
  a.launch([&](void* st) {
    return monst3r::sim3_normal_equations_cuda(x, y, w, is, ax, axial_weight, a.dim("M"), pose,
                                               huber, p, o, st);
  });
}

}  // namespace

void register_track(py::module_& m) {
  m.def("sim3_normal_equations", &sim3_normal_equations, py::arg("src"), py::arg("dst"),
        py::arg("weight"), py::arg("inv_sigma"), py::arg("scale"), py::arg("rot"),
        py::arg("trans"), py::arg("huber"), py::arg("threads") = 0, py::kw_only(),
        py::arg("axis") = py::none(), py::arg("axial_weight") = 1.0,
        "Normal equations of a robust Sim(3) registration (csrc/include/monst3r/track.h) at the "
        "pose x' = scale·rot·src + trans: src, dst (M,3), weight, inv_sigma (M,) C-contiguous "
        "float32; scale float, rot (3,3), trans (3,) float64; huber > 0 on ‖r‖, r = "
        "inv_sigma·(x' − dst), or with axis (M,3) float32 (None: isotropic; normalised here) "
        "r = inv_sigma·P·(x' − dst), P = I − (1 − √axial_weight) â âᵀ, 0 < axial_weight <= 1. "
        "Returns (H (7,7) float64, g (7,) float64, cost float, count int, inliers int) "
        "for the left update ξ = (ω, v, λ): x'' = e^λ Exp(ω) x' + v. Points with weight <= 0, "
        "inv_sigma <= 0, a non-finite value or a zero axis are ignored. GIL released; threads = "
        "OpenMP threads (0: default); the result does not depend on it.");
  m.def("sim3_normal_equations_cuda", &sim3_normal_equations_cuda, py::arg("src"),
        py::arg("dst"), py::arg("weight"), py::arg("inv_sigma"), py::arg("scale"),
        py::arg("rot"), py::arg("trans"), py::arg("huber"), py::kw_only(), py::arg("partials"),
        py::arg("out"), py::arg("stream") = 0, py::arg("axis") = py::none(),
        py::arg("axial_weight") = 1.0,
        "CUDA twin of sim3_normal_equations: src, dst (M,3), weight, inv_sigma (M,) float32 "
        "DLPack arrays on one GPU (checked); axis None (isotropic) or an (M,3) float32 DLPack "
        "array on the same GPU, axial_weight in (0, 1]; scale, rot (3,3) and trans (3,) float64 "
        "host values; "
        "outputs (overwritten) partials (SIM3_NE_BLOCKS, SIM3_NE_PARTIAL) float64 scratch and "
        "out (SIM3_NE_SIZE,) float64 = [H (49, row-major), g (7), cost, count, inliers]; stream: "
        "the cudaStream_t to run on. Deterministic (no atomics).");
  m.attr("SIM3_NE_SIZE") = monst3r::kSim3Out;
  m.attr("SIM3_NE_PARTIAL") = monst3r::kSim3Acc;
  m.attr("SIM3_NE_BLOCKS") = monst3r::kSim3Blocks;
  m.attr("SIM3_NE_THREADS") = monst3r::kSim3Threads;
}
