// CUDA entry points of the LM kernels (monst3r/lm.h), kept in one place: raw device pointers in,
// like align_energy_grad_cuda in bindings.cpp.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void register_lm_cuda(py::module_& m) { (void)m; }
