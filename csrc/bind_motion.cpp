// pybind11 bindings of the motion kernels: ego-motion flow (and its error against measured
// flow), Weiszfeld focal estimation.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "monst3r/cuda_args.h"
#include "monst3r/host_args.h"
#include "monst3r/kernels.h"

namespace py = pybind11;
using F32 = py::array_t<float, py::array::c_style | py::array::forcecast>;

namespace {

const float* f32(const F32& a, const char* name, const std::vector<int64_t>& shape,
                 const char* text) {
  monst3r::host::check_shape(a, name, shape, text);
  return a.data();
}

py::tuple ego_flow(const F32& depth, const F32& focal_src, const F32& pp_src,
                   const F32& focal_tgt, const F32& pp_tgt, const F32& rot, const F32& trans,
                   const py::object& measured, bool return_flow) {
  if (depth.ndim() != 3) throw py::value_error("depth must have shape (M,H,W)");
  const int64_t m = depth.shape(0), h = depth.shape(1), w = depth.shape(2);
  monst3r::EgoFlowProblem pb{};
  pb.maps = m;
  pb.height = h;
  pb.width = w;
  pb.depth = depth.data();
  pb.focal_src = f32(focal_src, "focal_src", {m}, "(M,)");
  pb.pp_src = f32(pp_src, "pp_src", {m, 2}, "(M,2)");
  pb.focal_tgt = f32(focal_tgt, "focal_tgt", {m}, "(M,)");
  pb.pp_tgt = f32(pp_tgt, "pp_tgt", {m, 2}, "(M,2)");
  pb.rot = f32(rot, "rot", {m, 3, 3}, "(M,3,3)");
  pb.trans = f32(trans, "trans", {m, 3}, "(M,3)");
  F32 meas;  // keeps the converted array alive during the call
  py::array_t<float> flow(return_flow ? std::vector<int64_t>{m, 2, h, w} : std::vector<int64_t>{0});
  py::array_t<float> error(measured.is_none() ? std::vector<int64_t>{0}
                                              : std::vector<int64_t>{m, h, w});
  if (!measured.is_none()) {
    meas = measured.cast<F32>();
    pb.measured = f32(meas, "measured", {m, 2, h, w}, "(M,2,H,W) like depth");
    pb.error = error.mutable_data();
  }
  if (return_flow) pb.flow = flow.mutable_data();
  {
    py::gil_scoped_release release;
    monst3r::ego_flow_cpu(pb);
  }
  return py::make_tuple(return_flow ? py::object(flow) : py::object(py::none()),
                        measured.is_none() ? py::object(py::none()) : py::object(error));
}

void ego_flow_cuda(const py::object& depth, const py::object& focal_src, const py::object& pp_src,
                   const py::object& focal_tgt, const py::object& pp_tgt, const py::object& rot,
                   const py::object& trans, const py::object& measured, const py::object& flow,
                   const py::object& error, std::uintptr_t stream) {
  using monst3r::DType;
  monst3r::CudaArgs a("ego_flow_cuda", stream);
  monst3r::EgoFlowProblem pb{};
  pb.depth = a.arg("depth", depth, DType::f32, {"M", "H", "W"}).as<float>();
  pb.focal_src = a.arg("focal_src", focal_src, DType::f32, {"M"}).as<float>();
  pb.pp_src = a.arg("pp_src", pp_src, DType::f32, {"M", 2}).as<float>();
  pb.focal_tgt = a.arg("focal_tgt", focal_tgt, DType::f32, {"M"}).as<float>();
  pb.pp_tgt = a.arg("pp_tgt", pp_tgt, DType::f32, {"M", 2}).as<float>();
  pb.rot = a.arg("rot", rot, DType::f32, {"M", 3, 3}).as<float>();
  pb.trans = a.arg("trans", trans, DType::f32, {"M", 3}).as<float>();
  pb.measured = a.optional("measured", measured, DType::f32, {"M", 2, "H", "W"}).as<float>();
  pb.flow = a.optional("flow", flow, DType::f32, {"M", 2, "H", "W"}).as<float>();
  pb.error = a.optional("error", error, DType::f32, {"M", "H", "W"}).as<float>();
  if (pb.error && !pb.measured) throw py::value_error("ego_flow_cuda: error needs measured");
  if (!pb.flow && !pb.error) throw py::value_error("ego_flow_cuda: pass flow and/or error");
  pb.maps = a.dim("M");
  pb.height = a.dim("H");
  pb.width = a.dim("W");
  a.launch([&](void* st) { return monst3r::ego_flow_cuda(pb, st); });
}

double estimate_focal(const F32& pts, const py::object& weights, double cx, double cy,
                      int iters, int threads) {
  if (pts.ndim() != 3 || pts.shape(2) != 3) throw py::value_error("pts must have shape (H,W,3)");
  const int64_t h = pts.shape(0), w = pts.shape(1);
  F32 wgt;
  const float* wp = nullptr;
  if (!weights.is_none()) {
    wgt = weights.cast<F32>();
    wp = f32(wgt, "weights", {h, w}, "(H,W) like pts");
  }
  const float* p = pts.data();
  py::gil_scoped_release release;
  return monst3r::estimate_focal_cpu(p, wp, h, w, cx, cy, iters, threads);
}

}  // namespace

void register_motion(py::module_& m) {
  m.def("ego_flow", &ego_flow, py::arg("depth"), py::arg("focal_src"), py::arg("pp_src"),
        py::arg("focal_tgt"), py::arg("pp_tgt"), py::arg("rot"), py::arg("trans"),
        py::arg("measured") = py::none(), py::arg("return_flow") = true,
        "CPU ego-motion flow of M maps: depth (M,H,W) z-depth of the source view, focals (M,) and "
        "principal points (M,2) in pixels of source and target views, rot (M,3,3) and trans "
        "(M,3) mapping the source camera to the target camera. Returns (flow (M,2,H,W) or None, "
        "error (M,H,W) = ‖flow − measured‖ or None when measured is None).");
  m.def("estimate_focal", &estimate_focal, py::arg("pts"), py::arg("weights"), py::arg("cx"),
        py::arg("cy"), py::arg("iters") = 10, py::arg("threads") = 0,
        "Weiszfeld focal (pixels) of a camera-frame pointmap (H,W,3) f32 with optional weights "
        "(H,W): L2 solution, then iters IRLS steps; NaN when no finite point has a positive "
        "weight. float64 accumulation, GIL released; threads = OpenMP threads (0: default).");
  m.def("ego_flow_cuda", &ego_flow_cuda, py::arg("depth"), py::arg("focal_src"),
        py::arg("pp_src"), py::arg("focal_tgt"), py::arg("pp_tgt"), py::arg("rot"),
        py::arg("trans"), py::arg("measured") = py::none(), py::arg("flow") = py::none(),
        py::arg("error") = py::none(), py::arg("stream") = 0,
        "CUDA twin of ego_flow: DLPack float32 C-contiguous arrays on one GPU, shapes as "
        "ego_flow; outputs flow (M,2,H,W) and/or error (M,H,W) (error needs measured "
        "(M,2,H,W)); stream: the cudaStream_t to run on (int, 0 = legacy default). Every "
        "array is checked before the launch; host arrays are refused.");
}
