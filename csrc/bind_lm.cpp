// pybind11 bindings of the second-order (Levenberg–Marquardt) alignment kernels.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void register_lm(py::module_& m) { (void)m; }
