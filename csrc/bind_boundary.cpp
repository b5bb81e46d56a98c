// The checks of the CUDA boundary (monst3r/cuda_args.h) exposed on their own: what every CUDA
// entry point runs before its launch, without any CUDA call, so that they can be tested (and
// used to validate arrays) on machines without a GPU.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <deque>
#include <string>
#include <vector>

#include "monst3r/cuda_args.h"

namespace py = pybind11;

namespace {

monst3r::DType parse_dtype(const std::string& s) {
  if (s == "float32") return monst3r::DType::f32;
  if (s == "float64") return monst3r::DType::f64;
  if (s == "int64") return monst3r::DType::i64;
  if (s == "uint8") return monst3r::DType::u8;
  if (s == "real") return monst3r::DType::real;
  throw py::value_error("dtype must be 'float32', 'float64', 'int64', 'uint8' or 'real', got '" + s + "'");
}

py::dict check_cuda_arrays(const py::list& specs) {
  monst3r::CudaArgs a = monst3r::CudaArgs::check_only("check_cuda_arrays");
  std::deque<std::string> symbols;  // stable storage for the symbols the Dims point at
  for (const auto& item : specs) {
    const auto spec = item.cast<py::tuple>();
    if (spec.size() != 4 && spec.size() != 5)
      throw py::value_error("each spec is (name, array, dtype, shape[, optional])");
    std::vector<monst3r::Dim> shape;
    for (const auto& d : spec[3]) {
      if (py::isinstance<py::str>(d)) {
        symbols.push_back(d.cast<std::string>());
        shape.emplace_back(symbols.back().c_str());
      } else {
        shape.emplace_back(d.cast<int64_t>());
      }
    }
    const auto name = spec[0].cast<std::string>();
    const auto dtype = parse_dtype(spec[2].cast<std::string>());
    if (spec.size() == 5 && spec[4].cast<bool>())
      a.optional(name, spec[1], dtype, shape);
    else
      a.arg(name, spec[1], dtype, shape);
  }
  return a.summary();
}

}  // namespace

void register_boundary(py::module_& m) {
  m.def("check_cuda_arrays", &check_cuda_arrays, py::arg("specs"),
        "Run the CUDA boundary's checks without launching anything. specs: a list of (name, "
        "array, dtype, shape[, optional]) with dtype 'float32' | 'float64' | 'int64' | 'uint8' | 'real' "
        "(float32 or float64, one for all 'real' arrays) and shape a sequence of ints and "
        "symbols ('N': bound by the first array that has it). Arrays are DLPack objects (torch, "
        "CuPy, NumPy); each must be C-contiguous on the same CUDA device. Raises ValueError "
        "naming the first wrong array with expected vs actual (TypeError for a non-array); "
        "returns {'device': id, 'dtype': the real dtype or None, 'dims': {symbol: size}}.");
}
