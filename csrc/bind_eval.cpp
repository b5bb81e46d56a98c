// pybind11 bindings of the evaluation's reductions: the per-pixel sums of the official LAD depth
// alignment (monst3r/lad.h). CPU only (host NumPy arrays); GIL released during the loops.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>

#include "monst3r/host_args.h"
#include "monst3r/lad.h"

namespace py = pybind11;

namespace {

using monst3r::host::shape_of;
using monst3r::host::typed;

// p, g: 1-D, same length and dtype (float32 or float64), C-contiguous; calls f(T{}).
template <typename F>
py::tuple with_values(const py::array& p, const py::array& g, const char* fn, F f) {
  if (p.ndim() != 1)
    throw py::value_error(std::string(fn) + ": p must be 1-D (M,), got " + shape_of(p));
  if (py::isinstance<py::array_t<double>>(p)) return f(double{});
  if (py::isinstance<py::array_t<float>>(p)) return f(float{});
  throw py::value_error(std::string(fn) + ": p must be float32 or float64, got " +
                        std::string(py::str(p.dtype())) + " " + shape_of(p) +
                        " (g: " + std::string(py::str(g.dtype())) + " " + shape_of(g) + ")");
}

void check_finite(const char* fn, const char* name, double v) {
  if (!std::isfinite(v))
    throw py::value_error(std::string(fn) + ": " + name + " must be finite, got " +
                          std::to_string(v));
}

py::tuple lad_sums(const py::array& p, const py::array& g, double s, double t, int threads) {
  check_finite("lad_sums", "s", s);
  check_finite("lad_sums", "t", t);
  return with_values(p, g, "lad_sums", [&](auto zero) {
    using T = decltype(zero);
    const int64_t m = p.shape(0);
    const T* pp = typed<T>(p, "p", {m});
    const T* gp = typed<T>(g, "g", {m});
    double out[monst3r::kLadSums];
    {
      py::gil_scoped_release release;
      monst3r::lad_sums_cpu<T>(pp, gp, m, s, t, out, threads);
    }
    return py::tuple(py::make_tuple(out[0], out[1], out[2]));
  });
}

py::tuple lad_partition(const py::array& p, const py::array& g, double s, double t, double rho,
                        int threads) {
  check_finite("lad_partition", "s", s);
  check_finite("lad_partition", "t", t);
  if (!(rho >= 0.0) || !std::isfinite(rho))
    throw py::value_error("lad_partition: rho must be finite and >= 0, got " +
                          std::to_string(rho));
  return with_values(p, g, "lad_partition", [&](auto zero) {
    using T = decltype(zero);
    const int64_t m = p.shape(0);
    const T* pp = typed<T>(p, "p", {m});
    const T* gp = typed<T>(g, "g", {m});
    double fixed[3];
    py::array_t<T> ap, ag;
    auto alloc = [&](int64_t n, T** a, T** b) {
      py::gil_scoped_acquire acquire;
      ap = py::array_t<T>(n);
      ag = py::array_t<T>(n);
      *a = ap.mutable_data();
      *b = ag.mutable_data();
    };
    {
      py::gil_scoped_release release;
      monst3r::lad_partition_cpu<T>(pp, gp, m, s, t, rho, fixed, alloc, threads);
    }
    return py::tuple(py::make_tuple(py::make_tuple(fixed[0], fixed[1], fixed[2]), ap, ag));
  });
}

}  // namespace

void register_eval(py::module_& m) {
  m.def("lad_sums", &lad_sums, py::arg("p"), py::arg("g"), py::arg("s"), py::arg("t"),
        py::arg("threads") = 0,
        "LAD alignment sums over M pixels: p, g (M,) both float32 or both float64 -> (Σσ·p, Σσ, "
        "Σ|r|) as floats (float64 sums), r = s·p + t − g, σ = sign(r) (0 at r == 0). GIL "
        "released; threads = OpenMP threads (0: default); the result does not depend on it.");
  m.def("lad_partition", &lad_partition, py::arg("p"), py::arg("g"), py::arg("s"), py::arg("t"),
        py::arg("rho"), py::arg("threads") = 0,
        "LAD partition pass around (s, t): pixels with |r| > rho·(|p| + 1) are fixed (their sign "
        "holds while max(|Δs|, |Δt|) ≤ rho). p, g (M,) both float32 or both float64 -> ((Σσ·p, "
        "Σσ, Σσ·g) over the fixed pixels, active_p, active_g): the other pixels' values in input "
        "order, in the input dtype. GIL released; the result does not depend on threads.");
}
