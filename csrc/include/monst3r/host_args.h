// Checks of host (NumPy) arrays for the pybind11 CPU entry points, written once: errors name the
// array, what it must be and what it is. Binding-only (includes pybind11); the CUDA entry points
// use monst3r/cuda_args.h instead.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

namespace monst3r::host {

namespace py = pybind11;

// "(2,3)", "(5,)" like NumPy.
inline std::string shape_text(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << "(";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? "," : "") << shape[i];
  s << (shape.size() == 1 ? ",)" : ")");
  return s.str();
}

inline std::string shape_of(const py::array& a) {
  return shape_text(std::vector<int64_t>(a.shape(), a.shape() + a.ndim()));
}

// NumPy's name of the element type T.
template <typename T>
constexpr const char* dtype_name() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double> ||
                    std::is_same_v<T, int64_t> || std::is_same_v<T, uint8_t>,
                "dtype_name: float, double, int64_t or uint8_t");
  if constexpr (std::is_same_v<T, float>) return "float32";
  if constexpr (std::is_same_v<T, double>) return "float64";
  if constexpr (std::is_same_v<T, int64_t>) return "int64";
  return "uint8";
}

// The data of `a` when it is a C-contiguous T array of exactly `shape`, else a ValueError
//   "<name> must be a C-contiguous float32 array of shape (4,5,3), got float64 (4,5,3)"
// (" non-contiguous" appended to what it is when that is what is wrong).
template <typename T>
const T* typed(const py::array& a, const char* name, const std::vector<int64_t>& shape) {
  const bool contiguous = (a.flags() & py::array::c_style) != 0;
  bool ok = py::isinstance<py::array_t<T>>(a) && contiguous &&
            a.ndim() == static_cast<py::ssize_t>(shape.size());
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = a.shape(i) == shape[i];
  if (!ok)
    throw py::value_error(std::string(name) + " must be a C-contiguous " + dtype_name<T>() +
                          " array of shape " + shape_text(shape) + ", got " +
                          std::string(py::str(a.dtype())) + " " + shape_of(a) +
                          (contiguous ? "" : " non-contiguous"));
  return static_cast<const T*>(a.data());
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
