// pybind11 bindings of the second-order (Levenberg–Marquardt) alignment kernels.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "monst3r/lm.h"

namespace py = pybind11;

namespace {

template <typename T>
const T* lm_checked(const py::array& a, const char* name, const std::vector<int64_t>& shape) {
  bool ok = py::isinstance<py::array_t<T>>(a) && (a.flags() & py::array::c_style) &&
            a.ndim() == static_cast<py::ssize_t>(shape.size());
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = a.shape(i) == shape[i];
  if (!ok)
    throw py::value_error(std::string(name) + ": expected a C-contiguous " +
                          (sizeof(T) == 4 ? "float32" : "float64") + " array of the problem's shape");
  return static_cast<const T*>(a.data());
}

// Geometry arguments shared by both kernels, in the order of align_energy_grad.
struct GeoArgs {
  py::array edges, pts_i, pts_j, w_i, w_j, log_depth, rot, trans, focal, pp, edge_rot, edge_trans,
      edge_scale;
};

template <typename T>
monst3r::AlignProblem<T> make_problem(const GeoArgs& g) {
  if (g.pts_i.ndim() != 4 || g.log_depth.ndim() != 3)
    throw py::value_error("pts_i must be (E,H,W,3) and log_depth (N,H,W)");
  const int64_t e = g.pts_i.shape(0), h = g.pts_i.shape(1), w = g.pts_i.shape(2);
  const int64_t n = g.log_depth.shape(0);
  monst3r::AlignProblem<T> pb;
  pb.n_frames = n;
  pb.n_edges = e;
  pb.height = h;
  pb.width = w;
  if (!py::isinstance<py::array_t<int64_t>>(g.edges) || !(g.edges.flags() & py::array::c_style) ||
      g.edges.ndim() != 2 || g.edges.shape(0) != e || g.edges.shape(1) != 2)
    throw py::value_error("edges must be a C-contiguous (E,2) int64 array");
  pb.edges = static_cast<const int64_t*>(g.edges.data());
  for (int64_t k = 0; k < 2 * e; ++k)
    if (pb.edges[k] < 0 || pb.edges[k] >= n) throw py::value_error("edge index out of range");
  pb.pts[0] = lm_checked<T>(g.pts_i, "pts_i", {e, h, w, 3});
  pb.pts[1] = lm_checked<T>(g.pts_j, "pts_j", {e, h, w, 3});
  pb.weight[0] = lm_checked<T>(g.w_i, "w_i", {e, h, w});
  pb.weight[1] = lm_checked<T>(g.w_j, "w_j", {e, h, w});
  pb.log_depth = lm_checked<T>(g.log_depth, "log_depth", {n, h, w});
  pb.rot = lm_checked<T>(g.rot, "rot", {n, 3, 3});
  pb.trans = lm_checked<T>(g.trans, "trans", {n, 3});
  pb.focal = lm_checked<T>(g.focal, "focal", {n});
  pb.pp = lm_checked<T>(g.pp, "pp", {n, 2});
  pb.edge_rot = lm_checked<T>(g.edge_rot, "edge_rot", {e, 3, 3});
  pb.edge_trans = lm_checked<T>(g.edge_trans, "edge_trans", {e, 3});
  pb.edge_scale = lm_checked<T>(g.edge_scale, "edge_scale", {e});
  return pb;
}

template <typename T>
py::tuple accumulate_impl(const GeoArgs& g, double eps) {
  const auto pb = make_problem<T>(g);
  const int64_t n = pb.n_frames, e = pb.n_edges;
  py::array_t<double> frame_acc({n, int64_t{monst3r::kLmFrameAcc}}),
      edge_acc({e, int64_t{2}, int64_t{monst3r::kLmEdgeAcc}});
  double energy = 0.0;
  monst3r::LmOutputs out{&energy, frame_acc.mutable_data(), edge_acc.mutable_data()};
  {
    py::gil_scoped_release release;
    monst3r::lm_accumulate_cpu<T>(pb, static_cast<T>(eps), out);
  }
  return py::make_tuple(energy, frame_acc, edge_acc);
}

template <typename T>
py::array_t<T> backsub_impl(const GeoArgs& g, double eps, const py::array& dframe,
                            const py::array& dedge) {
  const auto pb = make_problem<T>(g);
  const int64_t n = pb.n_frames, e = pb.n_edges, h = pb.height, w = pb.width;
  py::array_t<T> dl({n, h, w});
  monst3r::LmBacksub<T> bs{lm_checked<double>(dframe, "dframe", {n, 7}),
                           lm_checked<double>(dedge, "dedge", {e, 7}), dl.mutable_data()};
  {
    py::gil_scoped_release release;
    monst3r::lm_backsub_cpu<T>(pb, static_cast<T>(eps), bs);
  }
  return dl;
}

template <typename T>
py::array_t<float> cross_features_impl(const GeoArgs& g, double eps, int64_t frame, int64_t p0,
                                       int64_t p1) {
  const auto pb = make_problem<T>(g);
  const int64_t hw = pb.height * pb.width;
  if (frame < 0 || frame >= pb.n_frames) throw py::value_error("frame out of range");
  if (p1 < 0) p1 = hw;
  if (p0 < 0 || p0 >= p1 || p1 > hw) throw py::value_error("need 0 <= p0 < p1 <= H*W");
  int64_t k = 0;
  for (int64_t i = 0; i < 2 * pb.n_edges; ++i) k += pb.edges[i] == frame;
  py::array_t<float> x({4 * k, p1 - p0});
  float* out = x.mutable_data();
  {
    py::gil_scoped_release release;
    monst3r::lm_cross_features_cpu<T>(pb, static_cast<T>(eps), frame, p0, p1, out);
  }
  return x;
}

bool is_f64(const py::array& a) { return py::isinstance<py::array_t<double>>(a); }

}  // namespace

void register_lm(py::module_& m) {
  m.def(
      "lm_accumulate",
      [](py::array edges, py::array pts_i, py::array pts_j, py::array w_i, py::array w_j,
         py::array log_depth, py::array rot, py::array trans, py::array focal, py::array pp,
         py::array edge_rot, py::array edge_trans, py::array edge_scale, double eps) {
        GeoArgs g{edges, pts_i, pts_j, w_i, w_j, log_depth, rot, trans, focal, pp, edge_rot,
                  edge_trans, edge_scale};
        return is_f64(pts_i) ? accumulate_impl<double>(g, eps) : accumulate_impl<float>(g, eps);
      },
      py::arg("edges"), py::arg("pts_i"), py::arg("pts_j"), py::arg("w_i"), py::arg("w_j"),
      py::arg("log_depth"), py::arg("rot"), py::arg("trans"), py::arg("focal"), py::arg("pp"),
      py::arg("edge_rot"), py::arg("edge_trans"), py::arg("edge_scale"), py::arg("eps"),
      "CPU: one pass of the IRLS Gauss-Newton accumulation with the per-pixel depth eliminated "
      "(see monst3r/lm.h). Returns (energy, frame_acc (N,35), edge_acc (E,2,129)); all sums "
      "unnormalised. Nothing per pixel is kept: lm_backsub and lm_cross_features recompute it.");
  m.def(
      "lm_backsub",
      [](py::array edges, py::array pts_i, py::array pts_j, py::array w_i, py::array w_j,
         py::array log_depth, py::array rot, py::array trans, py::array focal, py::array pp,
         py::array edge_rot, py::array edge_trans, py::array edge_scale, py::array dframe,
         py::array dedge, double eps) {
        GeoArgs g{edges, pts_i, pts_j, w_i, w_j, log_depth, rot, trans, focal, pp, edge_rot,
                  edge_trans, edge_scale};
        return is_f64(pts_i) ? py::array(backsub_impl<double>(g, eps, dframe, dedge))
                             : py::array(backsub_impl<float>(g, eps, dframe, dedge));
      },
      py::arg("edges"), py::arg("pts_i"), py::arg("pts_j"), py::arg("w_i"), py::arg("w_j"),
      py::arg("log_depth"), py::arg("rot"), py::arg("trans"), py::arg("focal"), py::arg("pp"),
      py::arg("edge_rot"), py::arg("edge_trans"), py::arg("edge_scale"), py::arg("dframe"),
      py::arg("dedge"), py::arg("eps"),
      "CPU: depth back-substitution dl = -(gd + sum_j W_j a.(J_f df + J_e de_j)) / hdd, "
      "dframe (N,7) float64 [theta, T, log f], dedge (E,7) float64 [phi, t, s]; W, hdd and gd "
      "are recomputed from the geometry with the eps given to lm_accumulate.");
  m.def(
      "lm_cross_features",
      [](py::array edges, py::array pts_i, py::array pts_j, py::array w_i, py::array w_j,
         py::array log_depth, py::array rot, py::array trans, py::array focal, py::array pp,
         py::array edge_rot, py::array edge_trans, py::array edge_scale, double eps,
         int64_t frame, int64_t p0, int64_t p1) {
        GeoArgs g{edges, pts_i, pts_j, w_i, w_j, log_depth, rot, trans, focal, pp, edge_rot,
                  edge_trans, edge_scale};
        return is_f64(pts_i) ? cross_features_impl<double>(g, eps, frame, p0, p1)
                             : cross_features_impl<float>(g, eps, frame, p0, p1);
      },
      py::arg("edges"), py::arg("pts_i"), py::arg("pts_j"), py::arg("w_i"), py::arg("w_j"),
      py::arg("log_depth"), py::arg("rot"), py::arg("trans"), py::arg("focal"), py::arg("pp"),
      py::arg("edge_rot"), py::arg("edge_trans"), py::arg("edge_scale"), py::arg("eps"),
      py::arg("frame"), py::arg("p0") = 0, py::arg("p1") = -1,
      "CPU: float32 (4k, p1-p0) features of the cross-edge coupling of one frame over pixels "
      "[p0, p1) (p1=-1: to the end): row 4j+c is W_j phi_c / sqrt(hdd), phi = (a, |a|^2), for "
      "the j-th (edge, side) incident to the frame (edges in increasing order).");
}
