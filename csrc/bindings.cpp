// pybind11 module monst3r_rt._core: input checks, GIL release and CPU/CUDA dispatch.
// CPU entry points take numpy arrays; CUDA entry points take raw device pointers (uintptr_t)
// plus a stream handle, so torch tensors and CuPy arrays can both be passed from Python.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "monst3r/kernels.h"

namespace py = pybind11;
using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

namespace {

std::string shape_str(const py::array& a) {
  std::ostringstream s;
  s << "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s << (i ? "," : "") << a.shape(i);
  s << ")";
  return s.str();
}

void check_shape(const py::array& a, const char* name, const std::vector<int64_t>& expected,
                 const char* expected_text) {
  bool ok = a.ndim() == static_cast<py::ssize_t>(expected.size());
  for (size_t i = 0; ok && i < expected.size(); ++i)
    ok = expected[i] < 0 || a.shape(i) == expected[i];
  if (!ok)
    throw py::value_error(std::string(name) + " must have shape " + expected_text + ", got " +
                          shape_str(a));
}

py::array_t<float> depth_to_points(const FloatArray& depth, const FloatArray& focal,
                                   const FloatArray& pp) {
  check_shape(depth, "depth", {-1, -1, -1}, "(N,H,W)");
  const int64_t n = depth.shape(0), h = depth.shape(1), w = depth.shape(2);
  check_shape(focal, "focal", {n}, "(N,) with N = depth.shape[0]");
  check_shape(pp, "pp", {n, 2}, "(N,2) with N = depth.shape[0]");
  py::array_t<float> out({n, h, w, int64_t{3}});
  const float* d = depth.data();
  const float* f = focal.data();
  const float* c = pp.data();
  float* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    monst3r::depth_to_points_cpu(d, f, c, o, n, h, w);
  }
  return out;
}

#ifndef MONST3R_RT_WITH_CUDA
[[noreturn]] void no_cuda() {
  throw std::runtime_error(
      "monst3r_rt._core was built without CUDA kernels (" MONST3R_RT_CUDA_REASON
      "); rebuild with a CUDA compiler and MONST3R_RT_CUDA=ON");
}
#endif

void depth_to_points_cuda(std::uintptr_t depth, std::uintptr_t focal, std::uintptr_t pp,
                          std::uintptr_t points, int64_t n, int64_t h, int64_t w,
                          std::uintptr_t stream) {
#ifdef MONST3R_RT_WITH_CUDA
  if (n < 0 || h < 0 || w < 0) throw py::value_error("N, H, W must be non-negative");
  std::string err;
  {
    py::gil_scoped_release release;
    err = monst3r::depth_to_points_cuda(
        reinterpret_cast<const float*>(depth), reinterpret_cast<const float*>(focal),
        reinterpret_cast<const float*>(pp), reinterpret_cast<float*>(points), n, h, w,
        reinterpret_cast<void*>(stream));
  }
  if (!err.empty()) throw std::runtime_error("depth_to_points_cuda: " + err);
#else
  (void)depth, (void)focal, (void)pp, (void)points, (void)n, (void)h, (void)w, (void)stream;
  no_cuda();
#endif
}

py::dict build_info() {
  py::dict info;
  info["version"] = MONST3R_RT_VERSION;
  info["compiler"] = MONST3R_RT_CXX_COMPILER;
  info["build_type"] = MONST3R_RT_BUILD_TYPE;
#ifdef MONST3R_RT_OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
  info["omp_threads"] = monst3r::cpu_num_threads();
#ifdef MONST3R_RT_WITH_CUDA
  info["cuda"] = true;
  info["cuda_version"] = MONST3R_RT_CUDA_VERSION;
  std::vector<std::string> archs;
  std::istringstream s(MONST3R_RT_CUDA_ARCHS);
  for (std::string a; s >> a;) archs.push_back("sm_" + a);
  info["cuda_architectures"] = archs;
  info["cuda_reason"] = "";
#else
  info["cuda"] = false;
  info["cuda_version"] = "";
  info["cuda_architectures"] = std::vector<std::string>{};
  info["cuda_reason"] = MONST3R_RT_CUDA_REASON;
#endif
  return info;
}

int cuda_device_count() {
#ifdef MONST3R_RT_WITH_CUDA
  return monst3r::cuda_device_count(nullptr);
#else
  return 0;
#endif
}

py::dict cuda_status() {
  py::dict st;
#ifdef MONST3R_RT_WITH_CUDA
  std::string reason;
  const int count = monst3r::cuda_device_count(&reason);
  std::vector<std::string> names;
  for (int i = 0; i < count; ++i) names.push_back(monst3r::cuda_device_name(i));
  st["device_count"] = count;
  st["devices"] = names;
  st["reason"] = reason;
  st["runtime_version"] = monst3r::cuda_runtime_version();
  st["driver_version"] = monst3r::cuda_driver_version();
#else
  st["device_count"] = 0;
  st["devices"] = std::vector<std::string>{};
  st["reason"] = std::string("built without CUDA kernels (") + MONST3R_RT_CUDA_REASON + ")";
  st["runtime_version"] = 0;
  st["driver_version"] = 0;
#endif
  return st;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "monst3r_rt compiled core: C++/OpenMP kernels and their CUDA twins";
  m.def("build_info", &build_info,
        "What the module was built with: compiler, OpenMP and thread count, CUDA and its "
        "architectures.");
  m.def("cuda_device_count", &cuda_device_count,
        "Usable CUDA devices at run time (0 without a GPU or driver; never raises).");
  m.def("cuda_status", &cuda_status,
        "Run-time CUDA state: device_count, devices, reason (why none), runtime/driver version.");
  m.def("num_threads", &monst3r::cpu_num_threads, "OpenMP threads used by the CPU kernels.");
  m.def("set_num_threads", &monst3r::set_cpu_num_threads, py::arg("n"),
        "Set the OpenMP threads used by the CPU kernels.");
  m.def("depth_to_points", &depth_to_points, py::arg("depth"), py::arg("focal"), py::arg("pp"),
        "CPU: depth (N,H,W) f32, focal (N,) px, pp (N,2) px -> points (N,H,W,3) f32, "
        "camera frame.");
  m.def("depth_to_points_cuda", &depth_to_points_cuda, py::arg("depth"), py::arg("focal"),
        py::arg("pp"), py::arg("points"), py::arg("n"), py::arg("h"), py::arg("w"),
        py::arg("stream") = 0,
        "CUDA: raw device pointers (float32, contiguous) and a cudaStream_t handle; same "
        "contract as depth_to_points.");
  m.attr("has_cuda") = py::bool_(
#ifdef MONST3R_RT_WITH_CUDA
      true
#else
      false
#endif
  );
}
