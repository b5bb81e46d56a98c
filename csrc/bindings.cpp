// pybind11 module monst3r_rt._core: input checks, GIL release and CPU/CUDA dispatch.
// CPU entry points take numpy arrays; CUDA entry points take DLPack arrays (torch tensors, CuPy
// arrays) checked by monst3r::CudaArgs (monst3r/cuda_args.h), plus the cudaStream_t to run on.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "monst3r/cuda_args.h"
#include "monst3r/host_args.h"
#include "monst3r/kernels.h"

namespace py = pybind11;
using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

namespace {

using monst3r::host::check_shape;
using monst3r::host::typed;

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

void depth_to_points_cuda(const py::object& depth, const py::object& focal, const py::object& pp,
                          const py::object& points, std::uintptr_t stream) {
  using monst3r::DType;
  monst3r::CudaArgs a("depth_to_points_cuda", stream);
  const auto& d = a.arg("depth", depth, DType::f32, {"N", "H", "W"});
  const auto& f = a.arg("focal", focal, DType::f32, {"N"});
  const auto& c = a.arg("pp", pp, DType::f32, {"N", 2});
  const auto& o = a.arg("points", points, DType::f32, {"N", "H", "W", 3});
  a.launch([&](void* st) {
    return monst3r::depth_to_points_cuda(d.as<float>(), f.as<float>(), c.as<float>(),
                                         o.as<float>(), a.dim("N"), a.dim("H"), a.dim("W"), st);
  });
}

// ---- alignment -------------------------------------------------------------------------------

template <typename T>
py::tuple align_energy_grad_impl(const py::array& edges, const py::array& pts_i,
                                 const py::array& pts_j, const py::array& w_i,
                                 const py::array& w_j, const py::array& log_depth,
                                 const py::array& rot, const py::array& trans,
                                 const py::array& focal, const py::array& pp,
                                 const py::array& edge_rot, const py::array& edge_trans,
                                 const py::array& edge_scale, const py::object& flow_ij,
                                 const py::object& flow_ji, const py::object& static_mask,
                                 const py::object& flow_rot, const py::object& flow_trans,
                                 double pixel_thr) {
  check_shape(pts_i, "pts_i", {-1, -1, -1, 3}, "(E,H,W,3)");
  check_shape(log_depth, "log_depth", {-1, -1, -1}, "(N,H,W)");
  const int64_t e = pts_i.shape(0), h = pts_i.shape(1), w = pts_i.shape(2);
  const int64_t n = log_depth.shape(0);
  monst3r::AlignProblem<T> pb;
  pb.n_frames = n;
  pb.n_edges = e;
  pb.height = h;
  pb.width = w;
  pb.edges = typed<int64_t>(edges, "edges", {e, 2});
  for (int64_t k = 0; k < 2 * e; ++k)
    if (pb.edges[k] < 0 || pb.edges[k] >= n)
      throw py::value_error("edges reference frame " + std::to_string(pb.edges[k]) +
                            " outside 0.." + std::to_string(n - 1));
  pb.pts[0] = typed<T>(pts_i, "pts_i", {e, h, w, 3});
  pb.pts[1] = typed<T>(pts_j, "pts_j", {e, h, w, 3});
  pb.weight[0] = typed<T>(w_i, "w_i", {e, h, w});
  pb.weight[1] = typed<T>(w_j, "w_j", {e, h, w});
  pb.log_depth = typed<T>(log_depth, "log_depth", {n, h, w});
  pb.rot = typed<T>(rot, "rot", {n, 3, 3});
  pb.trans = typed<T>(trans, "trans", {n, 3});
  pb.focal = typed<T>(focal, "focal", {n});
  pb.pp = typed<T>(pp, "pp", {n, 2});
  pb.edge_rot = typed<T>(edge_rot, "edge_rot", {e, 3, 3});
  pb.edge_trans = typed<T>(edge_trans, "edge_trans", {e, 3});
  pb.edge_scale = typed<T>(edge_scale, "edge_scale", {e});

  const bool with_flow = !flow_ij.is_none();
  py::array a_fij, a_fji, a_mask, a_frot, a_ftrans;  // keep the arrays alive during the call
  if (with_flow) {
    if (flow_ji.is_none() || static_mask.is_none() || flow_rot.is_none() || flow_trans.is_none())
      throw py::value_error("flow_ij, flow_ji, static_mask, flow_rot and flow_trans go together");
    a_fij = flow_ij.cast<py::array>();
    a_fji = flow_ji.cast<py::array>();
    a_mask = static_mask.cast<py::array>();
    a_frot = flow_rot.cast<py::array>();
    a_ftrans = flow_trans.cast<py::array>();
    pb.flow[0] = typed<T>(a_fij, "flow_ij", {e, 2, h, w});
    pb.flow[1] = typed<T>(a_fji, "flow_ji", {e, 2, h, w});
    pb.static_mask = typed<T>(a_mask, "static_mask", {n, h, w});
    pb.flow_rot = typed<T>(a_frot, "flow_rot", {e, 2, 3, 3});
    pb.flow_trans = typed<T>(a_ftrans, "flow_trans", {e, 2, 3});
    pb.pixel_thr = static_cast<T>(pixel_thr);
  }

  py::array_t<T> g_depth({n, h, w}), g_frame({n, int64_t{monst3r::kFrameGrad}}),
      g_edge({e, int64_t{monst3r::kEdgeGrad}});
  py::array_t<T> g_depth_flow(with_flow ? std::vector<int64_t>{2, n, h, w}
                                        : std::vector<int64_t>{0});
  py::array_t<T> g_flow(with_flow ? std::vector<int64_t>{e, 2, monst3r::kFlowGrad}
                                  : std::vector<int64_t>{0});
  double energy = 0.0, flow_stats[4] = {0.0, 0.0, 0.0, 0.0};
  monst3r::AlignGrad<T> out{&energy, g_depth.mutable_data(), g_frame.mutable_data(),
                            g_edge.mutable_data()};
  if (with_flow) {
    out.flow_stats = flow_stats;
    out.grad_log_depth_flow = g_depth_flow.mutable_data();
    out.grad_flow = g_flow.mutable_data();
  }
  {
    py::gil_scoped_release release;
    monst3r::align_energy_grad_cpu<T>(pb, out);
  }
  if (!with_flow) return py::make_tuple(energy, g_depth, g_frame, g_edge);
  py::tuple stats = py::make_tuple(flow_stats[0], flow_stats[1], flow_stats[2], flow_stats[3]);
  return py::make_tuple(energy, g_depth, g_frame, g_edge, stats, g_depth_flow, g_flow);
}

py::tuple align_energy_grad(const py::array& edges, const py::array& pts_i,
                            const py::array& pts_j, const py::array& w_i, const py::array& w_j,
                            const py::array& log_depth, const py::array& rot,
                            const py::array& trans, const py::array& focal, const py::array& pp,
                            const py::array& edge_rot, const py::array& edge_trans,
                            const py::array& edge_scale, const py::object& flow_ij,
                            const py::object& flow_ji, const py::object& static_mask,
                            const py::object& flow_rot, const py::object& flow_trans,
                            double pixel_thr) {
  if (py::isinstance<py::array_t<double>>(pts_i))
    return align_energy_grad_impl<double>(edges, pts_i, pts_j, w_i, w_j, log_depth, rot, trans,
                                          focal, pp, edge_rot, edge_trans, edge_scale, flow_ij,
                                          flow_ji, static_mask, flow_rot, flow_trans, pixel_thr);
  return align_energy_grad_impl<float>(edges, pts_i, pts_j, w_i, w_j, log_depth, rot, trans,
                                       focal, pp, edge_rot, edge_trans, edge_scale, flow_ij,
                                       flow_ji, static_mask, flow_rot, flow_trans, pixel_thr);
}

// The arrays of align_energy_grad_cuda, in its argument order; the flow group is optional.
constexpr const char* kAlignArrays[] = {
    "edges", "pts_i", "pts_j", "w_i", "w_j", "log_depth", "rot", "trans", "focal", "pp",
    "edge_rot", "edge_trans", "edge_scale", "energy", "grad_log_depth", "grad_frame", "grad_edge"};
constexpr const char* kAlignFlowArrays[] = {"flow_ij",    "flow_ji",    "static_mask",
                                            "flow_rot",   "flow_trans", "flow_stats",
                                            "grad_log_depth_flow", "grad_flow"};

void check_align_cuda(monst3r::CudaArgs& a, const std::vector<py::object>& arrays,
                      const std::vector<py::object>& flow) {
  using monst3r::DType;
  const DType real = DType::real, f64 = DType::f64;
  const std::vector<std::vector<monst3r::Dim>> shapes = {
      {"E", 2},           {"E", "H", "W", 3}, {"E", "H", "W", 3}, {"E", "H", "W"},
      {"E", "H", "W"},    {"N", "H", "W"},    {"N", 3, 3},        {"N", 3},
      {"N"},              {"N", 2},           {"E", 3, 3},        {"E", 3},
      {"E"},              {1},                {"N", "H", "W"},    {"N", monst3r::kFrameGrad},
      {"E", monst3r::kEdgeGrad}};
  const DType dtypes[] = {DType::i64, real, real, real, real, real, real, real, real,
                          real,       real, real, real, f64,  real, f64,  f64};
  for (size_t k = 0; k < shapes.size(); ++k) a.arg(kAlignArrays[k], arrays[k], dtypes[k], shapes[k]);
  const std::vector<std::vector<monst3r::Dim>> flow_shapes = {
      {"E", 2, "H", "W"}, {"E", 2, "H", "W"}, {"N", "H", "W"},    {"E", 2, 3, 3},
      {"E", 2, 3},        {4},                {2, "N", "H", "W"}, {"E", 2, monst3r::kFlowGrad}};
  const DType flow_dtypes[] = {real, real, real, real, real, f64, real, f64};
  bool any = false;
  std::string missing;
  for (size_t k = 0; k < flow_shapes.size(); ++k) {
    const auto& arr = a.optional(kAlignFlowArrays[k], flow[k], flow_dtypes[k], flow_shapes[k]);
    any = any || arr.present;
    if (!arr.present) missing += std::string(missing.empty() ? "" : ", ") + kAlignFlowArrays[k];
  }
  if (any && !missing.empty())
    throw py::value_error("the flow term needs all of flow_ij, flow_ji, static_mask, flow_rot, "
                          "flow_trans, flow_stats, grad_log_depth_flow and grad_flow; missing: " +
                          missing);
}

template <typename T>
void launch_align_cuda(const monst3r::CudaArgs& a, double pixel_thr) {
  monst3r::AlignProblem<T> pb;
  pb.n_frames = a.dim("N");
  pb.n_edges = a.dim("E");
  pb.height = a.dim("H");
  pb.width = a.dim("W");
  pb.edges = a.ptr<int64_t>("edges");
  pb.pts[0] = a.ptr<T>("pts_i");
  pb.pts[1] = a.ptr<T>("pts_j");
  pb.weight[0] = a.ptr<T>("w_i");
  pb.weight[1] = a.ptr<T>("w_j");
  pb.log_depth = a.ptr<T>("log_depth");
  pb.rot = a.ptr<T>("rot");
  pb.trans = a.ptr<T>("trans");
  pb.focal = a.ptr<T>("focal");
  pb.pp = a.ptr<T>("pp");
  pb.edge_rot = a.ptr<T>("edge_rot");
  pb.edge_trans = a.ptr<T>("edge_trans");
  pb.edge_scale = a.ptr<T>("edge_scale");
  monst3r::AlignGrad<T, double> out{a.ptr<double>("energy"), a.ptr<T>("grad_log_depth"),
                                    a.ptr<double>("grad_frame"), a.ptr<double>("grad_edge")};
  if (a["flow_ij"].present) {
    pb.flow[0] = a.ptr<T>("flow_ij");
    pb.flow[1] = a.ptr<T>("flow_ji");
    pb.static_mask = a.ptr<T>("static_mask");
    pb.flow_rot = a.ptr<T>("flow_rot");
    pb.flow_trans = a.ptr<T>("flow_trans");
    pb.pixel_thr = static_cast<T>(pixel_thr);
    out.flow_stats = a.ptr<double>("flow_stats");
    out.grad_log_depth_flow = a.ptr<T>("grad_log_depth_flow");
    out.grad_flow = a.ptr<double>("grad_flow");
  }
  a.launch([&](void* st) { return monst3r::align_energy_grad_cuda<T>(pb, out, st); });
}

void align_energy_grad_cuda(
    const py::object& edges, const py::object& pts_i, const py::object& pts_j,
    const py::object& w_i, const py::object& w_j, const py::object& log_depth,
    const py::object& rot, const py::object& trans, const py::object& focal, const py::object& pp,
    const py::object& edge_rot, const py::object& edge_trans, const py::object& edge_scale,
    const py::object& energy, const py::object& grad_log_depth, const py::object& grad_frame,
    const py::object& grad_edge, const py::object& flow_ij, const py::object& flow_ji,
    const py::object& static_mask, const py::object& flow_rot, const py::object& flow_trans,
    const py::object& flow_stats, const py::object& grad_log_depth_flow,
    const py::object& grad_flow, double pixel_thr, std::uintptr_t stream) {
  monst3r::CudaArgs a("align_energy_grad_cuda", stream);
  check_align_cuda(a,
                   {edges, pts_i, pts_j, w_i, w_j, log_depth, rot, trans, focal, pp, edge_rot,
                    edge_trans, edge_scale, energy, grad_log_depth, grad_frame, grad_edge},
                   {flow_ij, flow_ji, static_mask, flow_rot, flow_trans, flow_stats,
                    grad_log_depth_flow, grad_flow});
  if (a.real_is_f64())
    launch_align_cuda<double>(a, pixel_thr);
  else
    launch_align_cuda<float>(a, pixel_thr);
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

// Defined in csrc/bind_*.cpp (one file per group of ops).
void register_boundary(py::module_& m);
void register_eval(py::module_& m);
void register_geometry(py::module_& m);
void register_lm(py::module_& m);
void register_motion(py::module_& m);
void register_perpixel(py::module_& m);
void register_track(py::module_& m);

PYBIND11_MODULE(_core, m) {
  register_boundary(m);
  register_eval(m);
  register_geometry(m);
  register_lm(m);
  register_motion(m);
  register_perpixel(m);
  register_track(m);
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
        py::arg("pp"), py::arg("points"), py::arg("stream") = 0,
        "CUDA twin of depth_to_points: DLPack float32 C-contiguous arrays on one GPU (torch, "
        "CuPy) depth (N,H,W), focal (N,), pp (N,2), output points (N,H,W,3); stream: the "
        "cudaStream_t to run on (int, 0 = legacy default). Every array is checked (device, "
        "dtype, shape, layout) before the launch; host arrays are refused.");
  m.def("align_energy_grad", &align_energy_grad, py::arg("edges"), py::arg("pts_i"),
        py::arg("pts_j"), py::arg("w_i"), py::arg("w_j"), py::arg("log_depth"), py::arg("rot"),
        py::arg("trans"), py::arg("focal"), py::arg("pp"), py::arg("edge_rot"),
        py::arg("edge_trans"), py::arg("edge_scale"), py::arg("flow_ij") = py::none(),
        py::arg("flow_ji") = py::none(), py::arg("static_mask") = py::none(),
        py::arg("flow_rot") = py::none(), py::arg("flow_trans") = py::none(),
        py::arg("pixel_thr") = 50.0,
        "CPU alignment energy Σ w‖R_v c + T_v − (σ_e R_e pred + t_e)‖ over both views of every "
        "edge, and its gradients: returns (energy, grad_log_depth (N,H,W), grad_frame (N,13) = "
        "[dR(9) dT(3) df], grad_edge (E,13) = [dR_e(9) dt_e(3) dσ_e]). float32 or float64. With "
        "the flow term (flow_ij/flow_ji (E,2,H,W), static_mask (N,H,W), flow_rot (E,2,3,3), "
        "flow_trans (E,2,3)) also (flow_stats = (sum_ij, count_ij, sum_ji, count_ji), "
        "grad_log_depth_flow (2,N,H,W), grad_flow (E,2,14) = [dR_rel(9) dt_rel(3) df_src "
        "df_tgt]) of the unnormalised kept sums of each direction.");
  m.def("align_energy_grad_cuda", &align_energy_grad_cuda, py::kw_only(), py::arg("edges"),
        py::arg("pts_i"), py::arg("pts_j"), py::arg("w_i"), py::arg("w_j"), py::arg("log_depth"),
        py::arg("rot"), py::arg("trans"), py::arg("focal"), py::arg("pp"), py::arg("edge_rot"),
        py::arg("edge_trans"), py::arg("edge_scale"), py::arg("energy"),
        py::arg("grad_log_depth"), py::arg("grad_frame"), py::arg("grad_edge"),
        py::arg("flow_ij") = py::none(), py::arg("flow_ji") = py::none(),
        py::arg("static_mask") = py::none(), py::arg("flow_rot") = py::none(),
        py::arg("flow_trans") = py::none(), py::arg("flow_stats") = py::none(),
        py::arg("grad_log_depth_flow") = py::none(), py::arg("grad_flow") = py::none(),
        py::arg("pixel_thr") = 50.0, py::arg("stream") = 0,
        "CUDA twin of align_energy_grad, keyword arguments only: the inputs of align_energy_grad "
        "as DLPack arrays on one GPU (edges int64, the others all float32 or all float64), and "
        "the outputs, overwritten: energy (1,) float64, grad_log_depth (N,H,W), grad_frame "
        "(N,ALIGN_FRAME_BLOCK) float64, grad_edge (E,ALIGN_EDGE_BLOCK) float64; with the flow "
        "term (all eight flow arguments) also flow_stats (4,) float64, grad_log_depth_flow "
        "(2,N,H,W) and grad_flow (E,2,ALIGN_FLOW_BLOCK) float64 (the summed blocks are float64: "
        "they are reduced with double atomics). stream: the cudaStream_t to run on. Every array "
        "is checked before the launch; edge indices are not range-checked on the device.");
  m.attr("ALIGN_FRAME_BLOCK") = monst3r::kFrameGrad;
  m.attr("ALIGN_EDGE_BLOCK") = monst3r::kEdgeGrad;
  m.attr("ALIGN_FLOW_BLOCK") = monst3r::kFlowGrad;
  m.attr("has_cuda") = py::bool_(
#ifdef MONST3R_RT_WITH_CUDA
      true
#else
      false
#endif
  );
}
