// pybind11 bindings of the second-order (Levenberg–Marquardt) alignment kernels (monst3r/lm.h).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <sstream>
#include <type_traits>
#include <string>
#include <vector>

#include "monst3r/host_args.h"
#include "monst3r/lm.h"

namespace py = pybind11;

namespace {

// The data of a C-contiguous T array of exactly `shape`, else a ValueError naming it.
using monst3r::host::typed;

// Geometry arguments shared by the kernels, in the order of align_energy_grad.
struct GeoArgs {
  py::array edges, pts_i, pts_j, w_i, w_j, log_depth, rot, trans, focal, pp, edge_rot, edge_trans,
      edge_scale;
};

// The optional flow term and frozen frames (keyword arguments of every kernel).
struct Extras {
  py::object flow_ij, flow_ji, static_mask, flow_rot, flow_trans;
  double pixel_thr;
  std::array<double, 2> flow_scale;
  py::object frozen;
};

template <typename T>
monst3r::AlignProblem<T> make_problem(const GeoArgs& g) {
  if (g.pts_i.ndim() != 4 || g.log_depth.ndim() != 3)
    throw py::value_error("pts_i must be (E,H,W,3) and log_depth (N,H,W), got pts_i " +
                          monst3r::host::shape_of(g.pts_i) + ", log_depth " +
                          monst3r::host::shape_of(g.log_depth));
  const int64_t e = g.pts_i.shape(0), h = g.pts_i.shape(1), w = g.pts_i.shape(2);
  const int64_t n = g.log_depth.shape(0);
  monst3r::AlignProblem<T> pb;
  pb.n_frames = n;
  pb.n_edges = e;
  pb.height = h;
  pb.width = w;
  pb.edges = typed<int64_t>(g.edges, "edges", {e, 2});
  for (int64_t k = 0; k < 2 * e; ++k)
    if (pb.edges[k] < 0 || pb.edges[k] >= n)
      throw py::value_error("edges: index " + std::to_string(pb.edges[k]) + " outside 0.." +
                            std::to_string(n - 1));
  pb.pts[0] = typed<T>(g.pts_i, "pts_i", {e, h, w, 3});
  pb.pts[1] = typed<T>(g.pts_j, "pts_j", {e, h, w, 3});
  pb.weight[0] = typed<T>(g.w_i, "w_i", {e, h, w});
  pb.weight[1] = typed<T>(g.w_j, "w_j", {e, h, w});
  pb.log_depth = typed<T>(g.log_depth, "log_depth", {n, h, w});
  pb.rot = typed<T>(g.rot, "rot", {n, 3, 3});
  pb.trans = typed<T>(g.trans, "trans", {n, 3});
  pb.focal = typed<T>(g.focal, "focal", {n});
  pb.pp = typed<T>(g.pp, "pp", {n, 2});
  pb.edge_rot = typed<T>(g.edge_rot, "edge_rot", {e, 3, 3});
  pb.edge_trans = typed<T>(g.edge_trans, "edge_trans", {e, 3});
  pb.edge_scale = typed<T>(g.edge_scale, "edge_scale", {e});
  return pb;
}

// The caller's NumPy array itself (borrowed, so its data outlives the kernel call), never a
// converted temporary whose buffer would be freed at the end of the statement.
py::array ndarray(const py::object& o, const char* name) {
  if (!py::isinstance<py::array>(o))
    throw py::value_error(std::string(name) + " must be a numpy array, got " +
                          std::string(py::str(py::type::of(o).attr("__name__"))));
  return py::reinterpret_borrow<py::array>(o);
}

// Fills the flow arrays of pb and the options; the arrays must outlive the kernel call (they are
// the caller's Python objects).
template <typename T>
monst3r::LmOptions apply_extras(monst3r::AlignProblem<T>& pb, const Extras& x) {
  monst3r::LmOptions opt;
  const int64_t n = pb.n_frames, e = pb.n_edges, h = pb.height, w = pb.width;
  const bool any = !x.flow_ij.is_none() || !x.flow_ji.is_none() || !x.static_mask.is_none() ||
                   !x.flow_rot.is_none() || !x.flow_trans.is_none();
  if (any) {
    for (const auto* o : {&x.flow_ij, &x.flow_ji, &x.static_mask, &x.flow_rot, &x.flow_trans})
      if (o->is_none())
        throw py::value_error(
            "the flow term needs all of flow_ij, flow_ji, static_mask, flow_rot, flow_trans");
    pb.flow[0] = typed<T>(ndarray(x.flow_ij, "flow_ij"), "flow_ij", {e, 2, h, w});
    pb.flow[1] = typed<T>(ndarray(x.flow_ji, "flow_ji"), "flow_ji", {e, 2, h, w});
    pb.static_mask = typed<T>(ndarray(x.static_mask, "static_mask"), "static_mask", {n, h, w});
    pb.flow_rot = typed<T>(ndarray(x.flow_rot, "flow_rot"), "flow_rot", {e, 2, 3, 3});
    pb.flow_trans = typed<T>(ndarray(x.flow_trans, "flow_trans"), "flow_trans", {e, 2, 3});
    pb.pixel_thr = static_cast<T>(x.pixel_thr);
    opt.flow_scale[0] = x.flow_scale[0];
    opt.flow_scale[1] = x.flow_scale[1];
  }
  if (!x.frozen.is_none())
    opt.frozen = typed<uint8_t>(ndarray(x.frozen, "frozen"), "frozen", {n});
  return opt;
}

template <typename T>
py::tuple accumulate_impl(const GeoArgs& g, const Extras& x, double eps) {
  auto pb = make_problem<T>(g);
  const auto opt = apply_extras(pb, x);
  const int64_t n = pb.n_frames, e = pb.n_edges;
  const bool flow = monst3r::lm_with_flow(pb, opt);
  py::array_t<double> frame_acc({n, int64_t{monst3r::kLmFrameAcc}}),
      edge_acc({e, int64_t{2}, int64_t{monst3r::kLmEdgeAcc}}),
      flow_acc(std::vector<int64_t>{flow ? e : 0, 2, monst3r::kLmFlowAcc});
  double energy = 0.0;
  monst3r::LmOutputs out{&energy, frame_acc.mutable_data(), edge_acc.mutable_data(),
                         flow ? flow_acc.mutable_data() : nullptr};
  {
    py::gil_scoped_release release;
    monst3r::lm_accumulate_cpu<T>(pb, opt, static_cast<T>(eps), out);
  }
  return py::make_tuple(energy, frame_acc, edge_acc, flow_acc);
}

template <typename T>
py::array_t<T> backsub_impl(const GeoArgs& g, const Extras& x, double eps, const py::array& dframe,
                            const py::array& dedge) {
  auto pb = make_problem<T>(g);
  const auto opt = apply_extras(pb, x);
  const int64_t n = pb.n_frames, e = pb.n_edges, h = pb.height, w = pb.width;
  py::array_t<T> dl({n, h, w});
  monst3r::LmBacksub<T> bs{typed<double>(dframe, "dframe", {n, monst3r::kLmFrameVars}),
                           typed<double>(dedge, "dedge", {e, monst3r::kLmEdgeVars}),
                           dl.mutable_data()};
  {
    py::gil_scoped_release release;
    monst3r::lm_backsub_cpu<T>(pb, opt, static_cast<T>(eps), bs);
  }
  return dl;
}

template <typename T>
py::array_t<float> cross_features_impl(const GeoArgs& g, const Extras& x, double eps,
                                       int64_t frame, int64_t p0, int64_t p1) {
  auto pb = make_problem<T>(g);
  const auto opt = apply_extras(pb, x);
  const int64_t hw = pb.height * pb.width;
  if (frame < 0 || frame >= pb.n_frames)
    throw py::value_error("frame " + std::to_string(frame) + " outside 0.." +
                          std::to_string(pb.n_frames - 1));
  if (p1 < 0) p1 = hw;
  if (p0 < 0 || p0 >= p1 || p1 > hw) throw py::value_error("need 0 <= p0 < p1 <= H*W");
  int64_t k = 0;
  for (int64_t e = 0; e < pb.n_edges; ++e)
    k += (pb.edges[2 * e] == frame) + (pb.edges[2 * e + 1] == frame);
  const int64_t nt =
      monst3r::lm_with_flow(pb, opt)
          ? static_cast<int64_t>(monst3r::lm_flow_targets(pb.edges, pb.n_edges, frame).size())
          : 0;
  py::array_t<float> out({monst3r::kLmEdgeFeatures * k + monst3r::kLmTargetFeatures * nt, p1 - p0});
  float* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    monst3r::lm_cross_features_cpu<T>(pb, opt, static_cast<T>(eps), frame, p0, p1, dst);
  }
  return out;
}

bool is_f64(const py::array& a) { return py::isinstance<py::array_t<double>>(a); }

const char* kExtrasDoc =
    " Optional keywords: the flow term (flow_ij, flow_ji (E,2,H,W), static_mask (N,H,W), "
    "flow_rot (E,2,3,3), flow_trans (E,2,3) in the problem's dtype, pixel_thr, flow_scale = "
    "per-direction weight w_flow/(count*norm); off when both are 0) and frozen (N,) uint8 "
    "(1 = the frame's depth is fixed: not eliminated, step 0).";

// Registers one kernel taking the geometry arrays, then `extra` positional arguments, then the
// common keywords.
#define LM_GEO_ARGS                                                                        \
  py::arg("edges"), py::arg("pts_i"), py::arg("pts_j"), py::arg("w_i"), py::arg("w_j"),    \
      py::arg("log_depth"), py::arg("rot"), py::arg("trans"), py::arg("focal"), py::arg("pp"), \
      py::arg("edge_rot"), py::arg("edge_trans"), py::arg("edge_scale")
#define LM_EXTRA_ARGS                                                                      \
  py::kw_only(), py::arg("flow_ij") = py::none(), py::arg("flow_ji") = py::none(),          \
      py::arg("static_mask") = py::none(), py::arg("flow_rot") = py::none(),               \
      py::arg("flow_trans") = py::none(), py::arg("pixel_thr") = 50.0,                     \
      py::arg("flow_scale") = std::array<double, 2>{0.0, 0.0}, py::arg("frozen") = py::none()

}  // namespace

void register_lm_cuda(py::module_& m);  // csrc/bind_lm_cuda.cpp

void register_lm(py::module_& m) {
  m.attr("LM_FRAME_ACC") = monst3r::kLmFrameAcc;
  m.attr("LM_EDGE_ACC") = monst3r::kLmEdgeAcc;
  m.attr("LM_FLOW_ACC") = monst3r::kLmFlowAcc;
  m.attr("LM_FRAME_VARS") = monst3r::kLmFrameVars;
  m.attr("LM_EDGE_VARS") = monst3r::kLmEdgeVars;
  m.attr("LM_EDGE_FEATURES") = monst3r::kLmEdgeFeatures;
  m.attr("LM_TARGET_FEATURES") = monst3r::kLmTargetFeatures;
  m.def(
      "lm_accumulate",
      [](py::array edges, py::array pts_i, py::array pts_j, py::array w_i, py::array w_j,
         py::array log_depth, py::array rot, py::array trans, py::array focal, py::array pp,
         py::array edge_rot, py::array edge_trans, py::array edge_scale, double eps,
         py::object flow_ij, py::object flow_ji, py::object static_mask, py::object flow_rot,
         py::object flow_trans, double pixel_thr, std::array<double, 2> flow_scale,
         py::object frozen) {
        GeoArgs g{edges, pts_i, pts_j, w_i, w_j, log_depth, rot, trans, focal, pp, edge_rot,
                  edge_trans, edge_scale};
        Extras x{flow_ij, flow_ji, static_mask, flow_rot, flow_trans, pixel_thr, flow_scale, frozen};
        return is_f64(pts_i) ? accumulate_impl<double>(g, x, eps) : accumulate_impl<float>(g, x, eps);
      },
      LM_GEO_ARGS, py::arg("eps"), LM_EXTRA_ARGS,
      (std::string("CPU: one pass of the IRLS Gauss-Newton accumulation with the per-pixel depth "
                   "eliminated (see monst3r/lm.h). Returns (energy, frame_acc (N,LM_FRAME_ACC), "
                   "edge_acc (E,2,LM_EDGE_ACC), flow_acc (E,2,LM_FLOW_ACC) or (0,2,LM_FLOW_ACC) "
                   "without the flow term); sums unnormalised (alignment units). Nothing per "
                   "pixel is kept: lm_backsub and lm_cross_features recompute it.") +
       kExtrasDoc)
          .c_str());
  m.def(
      "lm_backsub",
      [](py::array edges, py::array pts_i, py::array pts_j, py::array w_i, py::array w_j,
         py::array log_depth, py::array rot, py::array trans, py::array focal, py::array pp,
         py::array edge_rot, py::array edge_trans, py::array edge_scale, py::array dframe,
         py::array dedge, double eps, py::object flow_ij, py::object flow_ji,
         py::object static_mask, py::object flow_rot, py::object flow_trans, double pixel_thr,
         std::array<double, 2> flow_scale, py::object frozen) {
        GeoArgs g{edges, pts_i, pts_j, w_i, w_j, log_depth, rot, trans, focal, pp, edge_rot,
                  edge_trans, edge_scale};
        Extras x{flow_ij, flow_ji, static_mask, flow_rot, flow_trans, pixel_thr, flow_scale, frozen};
        return is_f64(pts_i) ? py::array(backsub_impl<double>(g, x, eps, dframe, dedge))
                             : py::array(backsub_impl<float>(g, x, eps, dframe, dedge));
      },
      LM_GEO_ARGS, py::arg("dframe"), py::arg("dedge"), py::arg("eps"), LM_EXTRA_ARGS,
      (std::string("CPU: depth back-substitution dl = -(g + b_f.df + sum_j b_e.de_j + sum_j "
                   "b_t.df_t) / H, dframe (N,7) float64 [theta, T, log f], dedge (E,7) float64 "
                   "[phi, t, s]; W, H and g are recomputed from the geometry with the eps given "
                   "to lm_accumulate; 0 for frozen frames.") +
       kExtrasDoc)
          .c_str());
  m.def(
      "lm_cross_features",
      [](py::array edges, py::array pts_i, py::array pts_j, py::array w_i, py::array w_j,
         py::array log_depth, py::array rot, py::array trans, py::array focal, py::array pp,
         py::array edge_rot, py::array edge_trans, py::array edge_scale, double eps,
         int64_t frame, int64_t p0, int64_t p1, py::object flow_ij, py::object flow_ji,
         py::object static_mask, py::object flow_rot, py::object flow_trans, double pixel_thr,
         std::array<double, 2> flow_scale, py::object frozen) {
        GeoArgs g{edges, pts_i, pts_j, w_i, w_j, log_depth, rot, trans, focal, pp, edge_rot,
                  edge_trans, edge_scale};
        Extras x{flow_ij, flow_ji, static_mask, flow_rot, flow_trans, pixel_thr, flow_scale, frozen};
        return is_f64(pts_i) ? cross_features_impl<double>(g, x, eps, frame, p0, p1)
                             : cross_features_impl<float>(g, x, eps, frame, p0, p1);
      },
      LM_GEO_ARGS, py::arg("eps"), py::arg("frame"), py::arg("p0") = 0, py::arg("p1") = -1,
      LM_EXTRA_ARGS,
      (std::string("CPU: float32 features of the depth couplings of one frame over pixels "
                   "[p0, p1) (p1=-1: to the end): rows 4j+c = W_j phi_c / sqrt(H), phi = (a, "
                   "|a|^2), for the j-th (edge, side) incident to the frame (edges in increasing "
                   "order); with the flow term then rows 4k+7u+c = b_t,c / sqrt(H) of its u-th "
                   "target frame (distinct other frames of its edges, increasing).") +
       kExtrasDoc)
          .c_str());
  register_lm_cuda(m);
}
