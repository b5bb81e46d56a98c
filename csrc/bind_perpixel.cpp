// pybind11 bindings of the per-pixel ops of the alignment's outer loop: the fused Adam step and
// world points from depth, pose and intrinsics. CPU entry points check every NumPy array
// (monst3r/host_args.h); CUDA entry points take DLPack arrays through the checked boundary
// (monst3r/cuda_args.h: device, dtype, shape, layout, each array named) and a cudaStream_t, and
// apply the same extra rules as their CPU twins (Adam: no aliased arrays). _core.check_intrinsics
// exposes the intrinsics rule for host matrices headed to the GPU (geometry.world_points).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "monst3r/cuda_args.h"
#include "monst3r/host_args.h"
#include "monst3r/perpixel.h"

namespace py = pybind11;

namespace {

using monst3r::host::check_shape;
using monst3r::host::shape_of;

// ---- Adam ----------------------------------------------------------------------------------------

void check_adam_hyper(int64_t step, double lr, double beta1, double beta2, double eps) {
  if (step < 1) throw py::value_error("step must be >= 1 (1 for the first step), got " +
                                      std::to_string(step));
  if (!(lr >= 0.0) || !std::isfinite(lr))
    throw py::value_error("lr must be finite and >= 0, got " + std::to_string(lr));
  if (!(beta1 >= 0.0 && beta1 < 1.0) || !(beta2 >= 0.0 && beta2 < 1.0))
    throw py::value_error("betas must be in [0, 1), got (" + std::to_string(beta1) + ", " +
                          std::to_string(beta2) + ")");
  if (!(eps >= 0.0)) throw py::value_error("eps must be >= 0, got " + std::to_string(eps));
}

const char* const kAdamNames[4] = {"param", "exp_avg", "exp_avg_sq", "grad"};

// The arrays are updated in place: no two of the `count`-element arrays may start at one address.
void check_adam_distinct(const void* const (&data)[4], int64_t count) {
  for (int k = 1; k < 4 && count > 0; ++k)
    for (int j = 0; j < k; ++j)
      if (data[j] == data[k])
        throw py::value_error(std::string(kAdamNames[k]) + " and " + kAdamNames[j] +
                              " must be different arrays");
}

// Every array: same dtype as param, same shape, C-contiguous; the state arrays writeable; no two
// arrays starting at the same address.
void check_adam_arrays(const py::array (&a)[4]) {
  const py::array& p = a[0];
  const bool f32 = py::isinstance<py::array_t<float>>(p);
  if (!f32 && !py::isinstance<py::array_t<double>>(p))
    throw py::value_error("param must be a float32 or float64 array, got dtype " +
                          std::string(py::str(p.dtype())));
  const char* dtype = f32 ? "float32" : "float64";
  for (int k = 0; k < 4; ++k) {
    const std::string name = kAdamNames[k];
    const bool same = f32 ? py::isinstance<py::array_t<float>>(a[k])
                          : py::isinstance<py::array_t<double>>(a[k]);
    if (!same)
      throw py::value_error(name + " must be " + dtype + " like param, got dtype " +
                            std::string(py::str(a[k].dtype())));
    bool ok = a[k].ndim() == p.ndim();
    for (py::ssize_t i = 0; ok && i < p.ndim(); ++i) ok = a[k].shape(i) == p.shape(i);
    if (!ok)
      throw py::value_error(name + " must have the shape of param " + shape_of(p) + ", got " +
                            shape_of(a[k]));
    if (!(a[k].flags() & py::array::c_style))
      throw py::value_error(name + " must be C-contiguous");
    if (k < 3 && !a[k].writeable()) throw py::value_error(name + " must be writeable");
  }
  check_adam_distinct({a[0].data(), a[1].data(), a[2].data(), a[3].data()}, p.size());
}

template <typename T>
void adam_step_impl(py::array (&a)[4], int64_t step, double lr, double beta1, double beta2,
                    double eps) {
  const auto c = monst3r::adam_coeffs<T>(step, lr, beta1, beta2, eps);
  T* p = static_cast<T*>(a[0].mutable_data());
  T* m = static_cast<T*>(a[1].mutable_data());
  T* v = static_cast<T*>(a[2].mutable_data());
  const T* g = static_cast<const T*>(a[3].data());
  const int64_t count = a[0].size();
  py::gil_scoped_release release;
  monst3r::adam_step_cpu<T>(p, m, v, g, count, c);
}

void adam_step(const py::array& param, const py::array& exp_avg, const py::array& exp_avg_sq,
               const py::array& grad, int64_t step, double lr, double beta1, double beta2,
               double eps) {
  check_adam_hyper(step, lr, beta1, beta2, eps);
  py::array arrays[4] = {param, exp_avg, exp_avg_sq, grad};
  check_adam_arrays(arrays);
  if (py::isinstance<py::array_t<float>>(param))
    adam_step_impl<float>(arrays, step, lr, beta1, beta2, eps);
  else
    adam_step_impl<double>(arrays, step, lr, beta1, beta2, eps);
}

void adam_step_cuda(const py::object& param, const py::object& exp_avg,
                    const py::object& exp_avg_sq, const py::object& grad, int64_t step, double lr,
                    double beta1, double beta2, double eps, std::uintptr_t stream) {
  using monst3r::DType;
  check_adam_hyper(step, lr, beta1, beta2, eps);
  monst3r::CudaArgs a("adam_step_cuda", stream);
  const py::object* objs[4] = {&param, &exp_avg, &exp_avg_sq, &grad};
  const void* data[4];
  for (int k = 0; k < 4; ++k) data[k] = a.arg(kAdamNames[k], *objs[k], DType::real, {"P"}).data;
  check_adam_distinct(data, a.dim("P"));
  auto run = [&](auto zero) {
    using T = decltype(zero);
    const auto c = monst3r::adam_coeffs<T>(step, lr, beta1, beta2, eps);
    a.launch([&](void* st) {
      return monst3r::adam_step_cuda<T>(a.ptr<T>("param"), a.ptr<T>("exp_avg"),
                                        a.ptr<T>("exp_avg_sq"), a.ptr<T>("grad"), a.dim("P"), c,
                                        st);
    });
  };
  if (a.real_is_f64())
    run(0.0);
  else
    run(0.0f);
}

// ---- world points --------------------------------------------------------------------------------

using F32 = py::array_t<float, py::array::c_style | py::array::forcecast>;

// K must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] with finite non-zero focals (no skew).
void check_intrinsics(const float* k, int64_t n) {
  for (int64_t v = 0; v < n; ++v, k += 9) {
    const bool pinhole = k[1] == 0.f && k[3] == 0.f && k[6] == 0.f && k[7] == 0.f && k[8] == 1.f;
    const bool focal = std::isfinite(k[0]) && std::isfinite(k[4]) && k[0] != 0.f && k[4] != 0.f;
    if (!pinhole || !focal)
      throw py::value_error("intrinsics[" + std::to_string(v) +
                            "] must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] with non-zero "
                            "finite fx, fy (no skew)");
  }
}

// intrinsics (N,3,3): each matrix pinhole with finite non-zero focals, or ValueError naming it.
void check_intrinsics_array(const F32& intrinsics) {
  check_shape(intrinsics, "intrinsics", {-1, 3, 3}, "(N,3,3)");
  check_intrinsics(intrinsics.data(), intrinsics.shape(0));
}

py::array_t<float> world_points(const F32& depth, const F32& cam_to_world, const F32& intrinsics) {
  check_shape(depth, "depth", {-1, -1, -1}, "(N,H,W)");
  const int64_t n = depth.shape(0), h = depth.shape(1), w = depth.shape(2);
  check_shape(cam_to_world, "cam_to_world", {n, 4, 4}, "(N,4,4) with N = depth.shape[0]");
  check_shape(intrinsics, "intrinsics", {n, 3, 3}, "(N,3,3) with N = depth.shape[0]");
  check_intrinsics(intrinsics.data(), n);
  py::array_t<float> out({n, h, w, int64_t{3}});
  const float* d = depth.data();
  const float* pose = cam_to_world.data();
  const float* k = intrinsics.data();
  float* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    monst3r::world_points_cpu(d, pose, k, o, n, h, w);
  }
  return out;
}

void world_points_cuda(const py::object& depth, const py::object& cam_to_world,
                       const py::object& intrinsics, const py::object& points,
                       std::uintptr_t stream) {
  using monst3r::DType;
  monst3r::CudaArgs a("world_points_cuda", stream);
  const float* d = a.arg("depth", depth, DType::f32, {"N", "H", "W"}).as<float>();
  const float* pose = a.arg("cam_to_world", cam_to_world, DType::f32, {"N", 4, 4}).as<float>();
  const float* k = a.arg("intrinsics", intrinsics, DType::f32, {"N", 3, 3}).as<float>();
  float* o = a.arg("points", points, DType::f32, {"N", "H", "W", 3}).as<float>();
  a.launch([&](void* st) {
    return monst3r::world_points_cuda(d, pose, k, o, a.dim("N"), a.dim("H"), a.dim("W"), st);
  });
}

}  // namespace

void register_perpixel(py::module_& m) {
  m.def("adam_step", &adam_step, py::arg("param"), py::arg("exp_avg"), py::arg("exp_avg_sq"),
        py::arg("grad"), py::arg("step"), py::arg("lr"), py::arg("beta1") = 0.9,
        py::arg("beta2") = 0.9, py::arg("eps") = 1e-8,
        "CPU: one torch.optim.Adam step (no weight decay) in place over C-contiguous float32 or "
        "float64 arrays of one shape: param, exp_avg, exp_avg_sq updated from grad; step is "
        "1-based (bias corrections 1 - beta^step). One fused OpenMP pass, GIL released.");
  m.def("adam_step_cuda", &adam_step_cuda, py::arg("param"), py::arg("exp_avg"),
        py::arg("exp_avg_sq"), py::arg("grad"), py::arg("step"), py::arg("lr"),
        py::arg("beta1") = 0.9, py::arg("beta2") = 0.9, py::arg("eps") = 1e-8, py::kw_only(),
        py::arg("stream") = 0,
        "CUDA twin of adam_step (DLPack arrays, checked): param, exp_avg, exp_avg_sq, grad "
        "contiguous 1-D views of one length, all float32 or all float64 on one GPU; a "
        "cudaStream_t handle.");
  m.def("world_points", &world_points, py::arg("depth"), py::arg("cam_to_world"),
        py::arg("intrinsics"),
        "CPU: depth (N,H,W) z-depth, cam_to_world (N,4,4), intrinsics (N,3,3) pinhole "
        "[[fx,0,cx],[0,fy,cy],[0,0,1]] (pixels) -> (N,H,W,3) float32 world points.");
  m.def("check_intrinsics", &check_intrinsics_array, py::arg("intrinsics"),
        "The intrinsics rule of world_points on host matrices (N,3,3): each must be "
        "[[fx,0,cx],[0,fy,cy],[0,0,1]] with finite non-zero fx, fy, else ValueError naming "
        "intrinsics[i]. For host intrinsics headed to world_points_cuda, which cannot read them.");
  m.def("world_points_cuda", &world_points_cuda, py::arg("depth"), py::arg("cam_to_world"),
        py::arg("intrinsics"), py::arg("points"), py::kw_only(), py::arg("stream") = 0,
        "CUDA twin of world_points (DLPack arrays, checked): depth (N,H,W), cam_to_world (N,4,4), "
        "intrinsics (N,3,3), points (N,H,W,3) output, all float32 on one GPU; a cudaStream_t "
        "handle.");
}
