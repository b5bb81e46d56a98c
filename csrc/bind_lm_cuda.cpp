// CUDA entry points of the LM kernels (monst3r/lm.h), all in this file: raw device pointers (the
// addresses of contiguous torch tensors) plus sizes, like align_energy_grad_cuda in bindings.cpp.
// Python (align/lm_cuda.py) checks dtypes, shapes and devices before calling.
//
// Pointer list, shared by the three functions (0 = absent):
//   [0..12]  edges (E,2) int64, pts_i, pts_j (E,H,W,3), w_i, w_j (E,H,W), log_depth (N,H,W),
//            rot (N,3,3), trans (N,3), focal (N,), pp (N,2), edge_rot (E,3,3), edge_trans (E,3),
//            edge_scale (E,)  — in the problem's dtype
//   [13..17] flow_ij, flow_ji (E,2,H,W), static_mask (N,H,W), flow_rot (E,2,3,3),
//            flow_trans (E,2,3)  (0 without the flow term)
//   [18]     frozen (N,) uint8 (0 = none)
//   [19, 20] incident CSR: offsets (N+1) int64, entries (2E) int64 = 2·edge + side
//   then the outputs of each function (see its docstring).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "monst3r/lm.h"

namespace py = pybind11;

namespace {

constexpr size_t kCommon = 21;

struct Sizes {
  int64_t n, e, h, w;
};

// Checks the pointer count and that every pointer except the optional ones (flow, frozen and
// `optional`) is set.
void check(const std::vector<std::uintptr_t>& ptrs, size_t count, const char* fn, Sizes s,
           size_t optional = 0) {
  if (ptrs.size() != count)
    throw py::value_error(std::string(fn) + " takes " + std::to_string(count) + " pointers, got " +
                          std::to_string(ptrs.size()));
  if (s.n < 2 || s.e < 1 || s.h < 1 || s.w < 1)
    throw py::value_error(std::string(fn) + ": need N >= 2 and positive E, H, W");
  for (size_t k = 0; k < count; ++k)
    if (ptrs[k] == 0 && !(k >= 13 && k <= 18) && k != optional)
      throw py::value_error(std::string(fn) + ": pointer " + std::to_string(k) + " is null");
}

#ifdef MONST3R_RT_WITH_CUDA
template <typename T>
monst3r::AlignProblem<T> problem(const std::vector<std::uintptr_t>& ptr, Sizes s, double pixel_thr) {
  monst3r::AlignProblem<T> pb;
  pb.n_frames = s.n, pb.n_edges = s.e, pb.height = s.h, pb.width = s.w;
  auto in = [&](size_t k) { return reinterpret_cast<const T*>(ptr[k]); };
  pb.edges = reinterpret_cast<const int64_t*>(ptr[0]);
  pb.pts[0] = in(1), pb.pts[1] = in(2), pb.weight[0] = in(3), pb.weight[1] = in(4);
  pb.log_depth = in(5), pb.rot = in(6), pb.trans = in(7), pb.focal = in(8), pb.pp = in(9);
  pb.edge_rot = in(10), pb.edge_trans = in(11), pb.edge_scale = in(12);
  if (ptr[13] != 0) {
    pb.flow[0] = in(13), pb.flow[1] = in(14), pb.static_mask = in(15);
    pb.flow_rot = in(16), pb.flow_trans = in(17);
    pb.pixel_thr = static_cast<T>(pixel_thr);
  }
  return pb;
}

monst3r::LmOptions options(const std::vector<std::uintptr_t>& ptr, std::array<double, 2> scale) {
  monst3r::LmOptions opt;
  if (ptr[13] != 0) opt.flow_scale[0] = scale[0], opt.flow_scale[1] = scale[1];
  opt.frozen = reinterpret_cast<const uint8_t*>(ptr[18]);
  return opt;
}

const int64_t* csr(const std::vector<std::uintptr_t>& ptr, size_t k) {
  return reinterpret_cast<const int64_t*>(ptr[k]);
}

void raise_if(const std::string& err, const char* fn) {
  if (!err.empty()) throw std::runtime_error(std::string(fn) + ": " + err);
}
#else
[[noreturn]] void no_cuda() {
  throw std::runtime_error("monst3r_rt._core was built without CUDA kernels (" MONST3R_RT_CUDA_REASON
                           "); rebuild with a CUDA compiler and MONST3R_RT_CUDA=ON");
}
#endif

template <typename T>
void accumulate(const std::vector<std::uintptr_t>& ptr, Sizes s, double eps, double pixel_thr,
                std::array<double, 2> scale, std::uintptr_t stream) {
#ifdef MONST3R_RT_WITH_CUDA
  const auto pb = problem<T>(ptr, s, pixel_thr);
  const auto opt = options(ptr, scale);
  monst3r::LmOutputs out{reinterpret_cast<double*>(ptr[21]), reinterpret_cast<double*>(ptr[22]),
                         reinterpret_cast<double*>(ptr[23]), reinterpret_cast<double*>(ptr[24])};
  if (monst3r::lm_with_flow(pb, opt) && out.flow_acc == nullptr)
    throw py::value_error("lm_accumulate_cuda: flow_acc (pointer 24) is null with the flow term");
  std::string err;
  {
    py::gil_scoped_release release;
    err = monst3r::lm_accumulate_cuda<T>(pb, opt, static_cast<T>(eps), csr(ptr, 19), csr(ptr, 20),
                                         out, reinterpret_cast<void*>(stream));
  }
  raise_if(err, "lm_accumulate_cuda");
#else
  (void)ptr, (void)s, (void)eps, (void)pixel_thr, (void)scale, (void)stream;
  no_cuda();
#endif
}

template <typename T>
void backsub(const std::vector<std::uintptr_t>& ptr, Sizes s, double eps, double pixel_thr,
             std::array<double, 2> scale, std::uintptr_t stream) {
#ifdef MONST3R_RT_WITH_CUDA
  const auto pb = problem<T>(ptr, s, pixel_thr);
  const auto opt = options(ptr, scale);
  monst3r::LmBacksub<T> bs{reinterpret_cast<const double*>(ptr[21]),
                           reinterpret_cast<const double*>(ptr[22]), reinterpret_cast<T*>(ptr[23])};
  std::string err;
  {
    py::gil_scoped_release release;
    err = monst3r::lm_backsub_cuda<T>(pb, opt, static_cast<T>(eps), csr(ptr, 19), csr(ptr, 20), bs,
                                      reinterpret_cast<void*>(stream));
  }
  raise_if(err, "lm_backsub_cuda");
#else
  (void)ptr, (void)s, (void)eps, (void)pixel_thr, (void)scale, (void)stream;
  no_cuda();
#endif
}

template <typename T>
void features(const std::vector<std::uintptr_t>& ptr, Sizes s, double eps, double pixel_thr,
              std::array<double, 2> scale, int64_t frame, int64_t p0, int64_t p1,
              int64_t n_targets, int64_t rows, std::uintptr_t stream) {
#ifdef MONST3R_RT_WITH_CUDA
  const auto pb = problem<T>(ptr, s, pixel_thr);
  const auto opt = options(ptr, scale);
  std::string err;
  {
    py::gil_scoped_release release;
    err = monst3r::lm_cross_features_cuda<T>(
        pb, opt, static_cast<T>(eps), frame, p0, p1, csr(ptr, 19), csr(ptr, 20), csr(ptr, 21),
        n_targets, reinterpret_cast<float*>(ptr[22]), rows, reinterpret_cast<void*>(stream));
  }
  raise_if(err, "lm_cross_features_cuda");
#else
  (void)ptr, (void)s, (void)eps, (void)pixel_thr, (void)scale, (void)frame, (void)p0, (void)p1;
  (void)n_targets, (void)rows, (void)stream;
  no_cuda();
#endif
}

template <typename F32, typename F64>
void by_dtype(const std::string& dtype, const char* fn, F32&& f32, F64&& f64) {
  if (dtype == "float32")
    f32();
  else if (dtype == "float64")
    f64();
  else
    throw py::value_error(std::string(fn) + ": dtype must be 'float32' or 'float64', got '" +
                          dtype + "'");
}

}  // namespace

void register_lm_cuda(py::module_& m) {
  m.def(
      "lm_accumulate_cuda",
      [](const std::string& dtype, const std::vector<std::uintptr_t>& ptrs, int64_t n, int64_t e,
         int64_t h, int64_t w, double eps, double pixel_thr, std::array<double, 2> flow_scale,
         std::uintptr_t stream) {
        const Sizes s{n, e, h, w};
        check(ptrs, kCommon + 4, "lm_accumulate_cuda", s, kCommon + 3);
        auto f32 = [&] { accumulate<float>(ptrs, s, eps, pixel_thr, flow_scale, stream); };
        auto f64 = [&] { accumulate<double>(ptrs, s, eps, pixel_thr, flow_scale, stream); };
        by_dtype(dtype, "lm_accumulate_cuda", f32, f64);
      },
      py::arg("dtype"), py::arg("pointers"), py::arg("n"), py::arg("e"), py::arg("h"),
      py::arg("w"), py::arg("eps"), py::arg("pixel_thr") = 50.0,
      py::arg("flow_scale") = std::array<double, 2>{0.0, 0.0}, py::arg("stream") = 0,
      "CUDA twin of lm_accumulate: the 21 common pointers (see csrc/bind_lm_cuda.cpp), then "
      "energy (one float64), frame_acc (N,LM_FRAME_ACC), edge_acc (E,2,LM_EDGE_ACC), flow_acc "
      "(E,2,LM_FLOW_ACC) float64 (0 without the flow term); all overwritten.");
  m.def(
      "lm_backsub_cuda",
      [](const std::string& dtype, const std::vector<std::uintptr_t>& ptrs, int64_t n, int64_t e,
         int64_t h, int64_t w, double eps, double pixel_thr, std::array<double, 2> flow_scale,
         std::uintptr_t stream) {
        const Sizes s{n, e, h, w};
        check(ptrs, kCommon + 3, "lm_backsub_cuda", s);
        auto f32 = [&] { backsub<float>(ptrs, s, eps, pixel_thr, flow_scale, stream); };
        auto f64 = [&] { backsub<double>(ptrs, s, eps, pixel_thr, flow_scale, stream); };
        by_dtype(dtype, "lm_backsub_cuda", f32, f64);
      },
      py::arg("dtype"), py::arg("pointers"), py::arg("n"), py::arg("e"), py::arg("h"),
      py::arg("w"), py::arg("eps"), py::arg("pixel_thr") = 50.0,
      py::arg("flow_scale") = std::array<double, 2>{0.0, 0.0}, py::arg("stream") = 0,
      "CUDA twin of lm_backsub: the 21 common pointers, then dframe (N,7) float64, dedge (E,7) "
      "float64, dl (N,H,W) in the problem's dtype (written).");
  m.def(
      "lm_cross_features_cuda",
      [](const std::string& dtype, const std::vector<std::uintptr_t>& ptrs, int64_t n, int64_t e,
         int64_t h, int64_t w, double eps, int64_t frame, int64_t p0, int64_t p1,
         int64_t n_targets, int64_t rows, double pixel_thr, std::array<double, 2> flow_scale,
         std::uintptr_t stream) {
        const Sizes s{n, e, h, w};
        check(ptrs, kCommon + 2, "lm_cross_features_cuda", s, kCommon);
        if (frame < 0 || frame >= n || p0 < 0 || p0 >= p1 || p1 > h * w)
          throw py::value_error("lm_cross_features_cuda: need 0 <= frame < N, 0 <= p0 < p1 <= H*W");
        auto f32 = [&] {
          features<float>(ptrs, s, eps, pixel_thr, flow_scale, frame, p0, p1, n_targets, rows,
                          stream);
        };
        auto f64 = [&] {
          features<double>(ptrs, s, eps, pixel_thr, flow_scale, frame, p0, p1, n_targets, rows,
                           stream);
        };
        by_dtype(dtype, "lm_cross_features_cuda", f32, f64);
      },
      py::arg("dtype"), py::arg("pointers"), py::arg("n"), py::arg("e"), py::arg("h"),
      py::arg("w"), py::arg("eps"), py::arg("frame"), py::arg("p0"), py::arg("p1"),
      py::arg("n_targets"), py::arg("rows"), py::arg("pixel_thr") = 50.0,
      py::arg("flow_scale") = std::array<double, 2>{0.0, 0.0}, py::arg("stream") = 0,
      "CUDA twin of lm_cross_features: the 21 common pointers, then targets (n_targets) int64 "
      "(the frame's distinct flow targets, increasing; 0 without the flow term), x (rows, p1-p0) "
      "float32 (written), rows = 4k + 7*n_targets.");
}
