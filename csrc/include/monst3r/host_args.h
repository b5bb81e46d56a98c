// Shape checks of host (NumPy) arrays for the pybind11 CPU entry points, written once: errors name
// the array, the expected shape and the actual one. Binding-only (includes pybind11); the CUDA
// entry points use monst3r/cuda_args.h instead.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

namespace monst3r::host {

namespace py = pybind11;

// "(2,3)", "(5,)" like NumPy.
inline std::string shape_of(const py::array& a) {
  std::ostringstream s;
  s << "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s << (i ? "," : "") << a.shape(i);
  s << (a.ndim() == 1 ? ",)" : ")");
  return s.str();
}

// ValueError "<name> must have shape <text>, got (...)" unless `a` has len(expected) dimensions
// and every expected size >= 0 matches (-1 = any).
inline void check_shape(const py::array& a, const char* name, const std::vector<int64_t>& expected,
                        const char* text) {
  bool ok = a.ndim() == static_cast<py::ssize_t>(expected.size());
  for (size_t i = 0; ok && i < expected.size(); ++i)
    ok = expected[i] < 0 || a.shape(i) == expected[i];
  if (!ok)
    throw py::value_error(std::string(name) + " must have shape " + text + ", got " +
                          shape_of(a));
}

}  // namespace monst3r::host
