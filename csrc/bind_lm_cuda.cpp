// CUDA entry points of the LM kernels (monst3r/lm.h), all in this file, through the checked
// DLPack boundary (monst3r/cuda_args.h): every array is passed by name in one dict and checked
// (device, dtype, every dimension, layout) before any CUDA call; errors name the array.
//
// Arrays of every call ("real" = float32 or float64, one for the whole call):
//   edges (E,2) int64; pts_i, pts_j (E,H,W,3); w_i, w_j (E,H,W); log_depth (N,H,W); rot (N,3,3);
//   trans (N,3); focal (N,); pp (N,2); edge_rot (E,3,3); edge_trans (E,3); edge_scale (E,) real;
//   optional flow group: flow_ij, flow_ji (E,2,H,W), static_mask (N,H,W), flow_rot (E,2,3,3),
//   flow_trans (E,2,3) real; optional frozen (N,) uint8; csr_offsets (N+1,), csr_entries (2E,)
//   int64 (per frame its incident (edge, side) as 2·edge + side, edges increasing).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <string>

#include "monst3r/cuda_args.h"
#include "monst3r/lm.h"

namespace py = pybind11;
using monst3r::CudaArgs;
using monst3r::DType;

namespace {

py::object get(const py::dict& arrays, const char* name) {
  return arrays.contains(name) ? py::reinterpret_borrow<py::object>(arrays[name]) : py::none();
}

// Checks the arrays shared by the three entry points, in a fixed order.
void check_common(CudaArgs& a, const py::dict& arrays) {
  const DType real = DType::real;
  a.arg("edges", get(arrays, "edges"), DType::i64, {"E", 2});
  a.arg("pts_i", get(arrays, "pts_i"), real, {"E", "H", "W", 3});
  a.arg("pts_j", get(arrays, "pts_j"), real, {"E", "H", "W", 3});
  a.arg("w_i", get(arrays, "w_i"), real, {"E", "H", "W"});
  a.arg("w_j", get(arrays, "w_j"), real, {"E", "H", "W"});
  a.arg("log_depth", get(arrays, "log_depth"), real, {"N", "H", "W"});
  a.arg("rot", get(arrays, "rot"), real, {"N", 3, 3});
  a.arg("trans", get(arrays, "trans"), real, {"N", 3});
  a.arg("focal", get(arrays, "focal"), real, {"N"});
  a.arg("pp", get(arrays, "pp"), real, {"N", 2});
  a.arg("edge_rot", get(arrays, "edge_rot"), real, {"E", 3, 3});
  a.arg("edge_trans", get(arrays, "edge_trans"), real, {"E", 3});
  a.arg("edge_scale", get(arrays, "edge_scale"), real, {"E"});
  const char* flow[] = {"flow_ij", "flow_ji", "static_mask", "flow_rot", "flow_trans"};
  const std::vector<std::vector<monst3r::Dim>> shapes = {
      {"E", 2, "H", "W"}, {"E", 2, "H", "W"}, {"N", "H", "W"}, {"E", 2, 3, 3}, {"E", 2, 3}};
  int given = 0;
  for (size_t k = 0; k < 5; ++k)
    given += a.optional(flow[k], get(arrays, flow[k]), real, shapes[k]).present ? 1 : 0;
  if (given != 0 && given != 5)
    throw py::value_error(a.entry() + ": the flow term needs all of flow_ij, flow_ji, "
                          "static_mask, flow_rot and flow_trans");
  a.optional("frozen", get(arrays, "frozen"), DType::u8, {"N"});
  a.arg("csr_offsets", get(arrays, "csr_offsets"), DType::i64, {"N1"});
  a.arg("csr_entries", get(arrays, "csr_entries"), DType::i64, {"E2"});
  if (a.dim("N1") != a.dim("N") + 1 || a.dim("E2") != 2 * a.dim("E"))
    throw py::value_error(a.entry() + ": csr_offsets must have N+1 and csr_entries 2E entries");
  if (a.dim("N") < 2) throw py::value_error(a.entry() + ": need N >= 2 frames");
}

template <typename T>
monst3r::AlignProblem<T> problem(const CudaArgs& a, double pixel_thr) {
  monst3r::AlignProblem<T> pb;
  pb.n_frames = a.dim("N"), pb.n_edges = a.dim("E"), pb.height = a.dim("H");
  pb.width = a.dim("W");
  pb.edges = a.ptr<int64_t>("edges");
  pb.pts[0] = a.ptr<T>("pts_i"), pb.pts[1] = a.ptr<T>("pts_j");
  pb.weight[0] = a.ptr<T>("w_i"), pb.weight[1] = a.ptr<T>("w_j");
  pb.log_depth = a.ptr<T>("log_depth"), pb.rot = a.ptr<T>("rot"), pb.trans = a.ptr<T>("trans");
  pb.focal = a.ptr<T>("focal"), pb.pp = a.ptr<T>("pp"), pb.edge_rot = a.ptr<T>("edge_rot");
  pb.edge_trans = a.ptr<T>("edge_trans"), pb.edge_scale = a.ptr<T>("edge_scale");
  if (a["flow_ij"].present) {
    pb.flow[0] = a.ptr<T>("flow_ij"), pb.flow[1] = a.ptr<T>("flow_ji");
    pb.static_mask = a.ptr<T>("static_mask");
    pb.flow_rot = a.ptr<T>("flow_rot"), pb.flow_trans = a.ptr<T>("flow_trans");
    pb.pixel_thr = static_cast<T>(pixel_thr);
  }
  return pb;
}

monst3r::LmOptions options(const CudaArgs& a, std::array<double, 2> flow_scale) {
  monst3r::LmOptions opt;
  if (a["flow_ij"].present) opt.flow_scale[0] = flow_scale[0], opt.flow_scale[1] = flow_scale[1];
  opt.frozen = a["frozen"].present ? a.ptr<uint8_t>("frozen") : nullptr;
  return opt;
}

// Runs f<float> or f<double> by the call's real dtype.
template <typename F>
void by_dtype(const CudaArgs& a, F&& f) {
  if (a.real_is_f64())
    f(0.0);
  else
    f(0.0f);
}

void accumulate(const py::dict& arrays, double eps, double pixel_thr,
                std::array<double, 2> flow_scale, std::uintptr_t stream) {
  CudaArgs a("lm_accumulate_cuda", stream);
  check_common(a, arrays);
  a.arg("energy", get(arrays, "energy"), DType::f64, {1});
  a.arg("frame_acc", get(arrays, "frame_acc"), DType::f64, {"N", monst3r::kLmFrameAcc});
  a.arg("edge_acc", get(arrays, "edge_acc"), DType::f64, {"E", 2, monst3r::kLmEdgeAcc});
  const auto& flow_acc =
      a.optional("flow_acc", get(arrays, "flow_acc"), DType::f64, {"E", 2, monst3r::kLmFlowAcc});
  by_dtype(a, [&](auto zero) {
    using T = decltype(zero);
    const auto pb = problem<T>(a, pixel_thr);
    const auto opt = options(a, flow_scale);
    if (monst3r::lm_with_flow(pb, opt) && !flow_acc.present)
      throw py::value_error("lm_accumulate_cuda: flow_acc is required with the flow term");
    monst3r::LmOutputs out{a.ptr<double>("energy"), a.ptr<double>("frame_acc"),
                           a.ptr<double>("edge_acc"),
                           flow_acc.present ? a.ptr<double>("flow_acc") : nullptr};
    a.launch([&](void* st) {
      return monst3r::lm_accumulate_cuda<T>(pb, opt, static_cast<T>(eps),
                                            a.ptr<int64_t>("csr_offsets"),
                                            a.ptr<int64_t>("csr_entries"), out, st);
    });
  });
}

void backsub(const py::dict& arrays, double eps, double pixel_thr,
             std::array<double, 2> flow_scale, std::uintptr_t stream) {
  CudaArgs a("lm_backsub_cuda", stream);
  check_common(a, arrays);
  a.arg("dframe", get(arrays, "dframe"), DType::f64, {"N", monst3r::kLmFrameVars});
  a.arg("dedge", get(arrays, "dedge"), DType::f64, {"E", monst3r::kLmEdgeVars});
  a.arg("dl", get(arrays, "dl"), DType::real, {"N", "H", "W"});
  by_dtype(a, [&](auto zero) {
    using T = decltype(zero);
    const auto pb = problem<T>(a, pixel_thr);
    const auto opt = options(a, flow_scale);
    monst3r::LmBacksub<T> bs{a.ptr<double>("dframe"), a.ptr<double>("dedge"), a.ptr<T>("dl")};
    a.launch([&](void* st) {
      return monst3r::lm_backsub_cuda<T>(pb, opt, static_cast<T>(eps),
                                         a.ptr<int64_t>("csr_offsets"),
                                         a.ptr<int64_t>("csr_entries"), bs, st);
    });
  });
}

void features(const py::dict& arrays, double eps, int64_t frame, int64_t p0, int64_t p1,
              int64_t incident, double pixel_thr, std::array<double, 2> flow_scale,
              std::uintptr_t stream) {
  CudaArgs a("lm_cross_features_cuda", stream);
  check_common(a, arrays);
  const auto& targets = a.optional("targets", get(arrays, "targets"), DType::i64, {"K"});
  a.arg("x", get(arrays, "x"), DType::f32, {"R", "P"});
  const int64_t n_targets = targets.present ? a.dim("K") : 0;
  if (frame < 0 || frame >= a.dim("N") || p0 < 0 || p0 >= p1 || p1 > a.dim("H") * a.dim("W"))
    throw py::value_error("lm_cross_features_cuda: need 0 <= frame < N, 0 <= p0 < p1 <= H*W");
  if (a.dim("P") != p1 - p0)
    throw py::value_error("lm_cross_features_cuda: x must have p1 - p0 = " +
                          std::to_string(p1 - p0) + " columns, got " + std::to_string(a.dim("P")));
  // The kernel writes LM_EDGE_FEATURES rows per incident (edge, side) of the frame and
  // LM_TARGET_FEATURES per flow target: x must have exactly that many rows.
  const int64_t rows = monst3r::kLmEdgeFeatures * incident + monst3r::kLmTargetFeatures * n_targets;
  if (incident < 1 || a.dim("R") != rows)
    throw py::value_error("lm_cross_features_cuda: x must have " + std::to_string(rows) +
                          " rows (" + std::to_string(monst3r::kLmEdgeFeatures) + " x incident " +
                          std::to_string(incident) + " + " +
                          std::to_string(monst3r::kLmTargetFeatures) + " x targets " +
                          std::to_string(n_targets) + "), got " + std::to_string(a.dim("R")));
  by_dtype(a, [&](auto zero) {
    using T = decltype(zero);
    const auto pb = problem<T>(a, pixel_thr);
    const auto opt = options(a, flow_scale);
    if (monst3r::lm_with_flow(pb, opt) != targets.present)
      throw py::value_error("lm_cross_features_cuda: targets must be given exactly when the flow "
                            "term is on");
    const int64_t* tg = targets.present ? a.ptr<int64_t>("targets") : nullptr;
    a.launch([&](void* st) {
      return monst3r::lm_cross_features_cuda<T>(
          pb, opt, static_cast<T>(eps), frame, p0, p1, a.ptr<int64_t>("csr_offsets"),
          a.ptr<int64_t>("csr_entries"), tg, n_targets, a.ptr<float>("x"), a.dim("R"), st);
    });
  });
}

}  // namespace

void register_lm_cuda(py::module_& m) {
  const std::array<double, 2> no_flow{0.0, 0.0};
  m.def("lm_accumulate_cuda", &accumulate, py::arg("arrays"), py::kw_only(), py::arg("eps"),
        py::arg("pixel_thr") = 50.0, py::arg("flow_scale") = no_flow, py::arg("stream") = 0,
        "CUDA twin of lm_accumulate: `arrays` maps the names of csrc/bind_lm_cuda.cpp to DLPack "
        "arrays, plus the outputs energy (1,), frame_acc (N,LM_FRAME_ACC), edge_acc "
        "(E,2,LM_EDGE_ACC) and, with the flow term, flow_acc (E,2,LM_FLOW_ACC), float64, "
        "overwritten.");
  m.def("lm_backsub_cuda", &backsub, py::arg("arrays"), py::kw_only(), py::arg("eps"),
        py::arg("pixel_thr") = 50.0, py::arg("flow_scale") = no_flow, py::arg("stream") = 0,
        "CUDA twin of lm_backsub: the common arrays plus dframe (N,7) and dedge (E,7) float64 "
        "and the output dl (N,H,W) in the problem's dtype.");
  m.def("lm_cross_features_cuda", &features, py::arg("arrays"), py::kw_only(), py::arg("eps"),
        py::arg("frame"), py::arg("p0"), py::arg("p1"), py::arg("incident"),
        py::arg("pixel_thr") = 50.0,
        py::arg("flow_scale") = no_flow, py::arg("stream") = 0,
        "CUDA twin of lm_cross_features: the common arrays plus targets (K,) int64 (the frame's "
        "distinct flow targets, increasing; absent without the flow term) and the output x "
        "(R, p1-p0) float32, R = LM_EDGE_FEATURES·incident + LM_TARGET_FEATURES·K (incident: the "
        "frame's (edge, side) count in the CSR).");
}
