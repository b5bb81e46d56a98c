// The checked CUDA boundary of the pybind11 entry points (header-only; include it in a
// csrc/bind_*.cpp). Arrays arrive as Python objects that implement DLPack (torch tensors, CuPy
// arrays, anything with __dlpack__ / __dlpack_device__). CudaArgs borrows each one for the
// duration of the call (it keeps the producer's capsule, never renames it, so the producer's
// capsule destructor releases it), checks it against a declaration, and hands typed device
// pointers to the launcher; launch() runs the launcher with the GIL released and the arrays'
// device made current (DeviceGuard), then restores the caller's device.
//
// Checks, in argument order, each array at once:
//   device  kDLCUDA, and the device id of the first array (all must agree);
//   dtype   DType::f32 / f64 / i64 / u8, or DType::real = float32 or float64, the same for every
//           `real` array of the call (bound by the first one);
//   shape   every dimension: a fixed size or a symbol ("N"); a symbol takes its value from the
//           first array that has it and every later array must match;
//   layout  C-contiguous (strides of size-1 dimensions are ignored; NULL strides = compact).
// A failure raises ValueError naming the array with expected vs actual, e.g.
//   focal: expected float32 on cuda:0 with shape (8,), got float64 on cpu with shape (8,)
// Host arrays are refused, never copied. Objects without DLPack raise TypeError.
//
// Stream: the entry point takes the cudaStream_t its kernel runs on (an integer; 0 = legacy
// default stream) and passes it to every CUDA array's __dlpack__(stream=...) as the protocol
// asks (0 is sent as 1, the protocol's legacy default stream), so a producer with pending work
// on another stream orders it before the kernel (torch: an event the stream waits on).
//
// A whole entry point (see csrc/bindings.cpp depth_to_points_cuda):
//
//   void scale_cuda(const py::object& x, const py::object& s, const py::object& out,
//                   std::uintptr_t stream) {
//     monst3r::CudaArgs a("scale_cuda", stream);
//     const auto& xa = a.arg("x", x, monst3r::DType::f32, {"N", "H", "W"});
//     const auto& sa = a.arg("s", s, monst3r::DType::f32, {"N"});
//     const auto& oa = a.arg("out", out, monst3r::DType::f32, {"N", "H", "W"});
//     a.launch([&](void* st) {
//       return monst3r::scale_cuda(xa.as<float>(), sa.as<float>(), oa.as<float>(),
//                                  a.dim("N"), a.dim("H"), a.dim("W"), st);
//     });
//   }
//
// CudaArgs::check_only(entry) runs the same checks without any CUDA call (exports with
// stream=-1, "no synchronisation"); _core.check_cuda_arrays exposes it to the tests.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <deque>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "monst3r/dlpack.h"
#include "monst3r/kernels.h"

namespace monst3r {

namespace py = pybind11;

// Element type an array must have; `real` = float32 or float64, one for the whole call.
enum class DType { f32, f64, i64, u8, real };

// One dimension of a declared shape: a fixed size or a symbol such as "N".
struct Dim {
  Dim(int n) : size(n) {}          // NOLINT: implicit, so that {"N", 3} reads naturally
  Dim(int64_t n) : size(n) {}      // NOLINT
  Dim(const char* s) : symbol(s) {}  // NOLINT
  int64_t size = -1;
  const char* symbol = nullptr;
};

// One checked array, borrowed from its producer for the lifetime of its CudaArgs.
struct DeviceArray {
  std::string name;
  bool present = false;  // false: an optional argument given as None
  void* data = nullptr;  // first element (byte_offset applied)
  dlpack::DLDataType dtype{};
  std::vector<int64_t> shape;
  py::object owner;    // the Python array
  py::object capsule;  // its DLPack capsule, alive while the pointer is used

  // Typed device pointer (nullptr when absent); T must match the checked dtype.
  template <typename T>
  T* as() const {
    if (!present) return nullptr;
    if (!is<T>(dtype))
      throw std::logic_error(name + ": read with a C++ type that does not match its dtype");
    return static_cast<T*>(data);
  }

  template <typename T>
  static bool is(dlpack::DLDataType t) {
    const bool one = t.lanes == 1 && t.bits == 8 * sizeof(T);
    if constexpr (std::is_floating_point_v<T>) return one && t.code == dlpack::kDLFloat;
    if constexpr (std::is_signed_v<T>) return one && t.code == dlpack::kDLInt;
    return one && t.code == dlpack::kDLUInt;
  }
};

namespace detail {

inline std::string dtype_name(dlpack::DLDataType t) {
  std::string base;
  switch (t.code) {
    case dlpack::kDLInt: base = "int"; break;
    case dlpack::kDLUInt: base = "uint"; break;
    case dlpack::kDLFloat: base = "float"; break;
    case dlpack::kDLBfloat: base = "bfloat"; break;
    case dlpack::kDLComplex: base = "complex"; break;
    case dlpack::kDLBool: return "bool";
    default: base = "type" + std::to_string(t.code) + "_"; break;
  }
  base += std::to_string(t.bits);
  if (t.lanes != 1) base += "x" + std::to_string(t.lanes);
  return base;
}

inline std::string dtype_name(DType d) {
  switch (d) {
    case DType::f32: return "float32";
    case DType::f64: return "float64";
    case DType::i64: return "int64";
    case DType::u8: return "uint8";
    default: return "float32 or float64";
  }
}

inline bool dtype_matches(DType d, dlpack::DLDataType t) {
  switch (d) {
    case DType::f32: return DeviceArray::is<float>(t);
    case DType::f64: return DeviceArray::is<double>(t);
    case DType::i64: return DeviceArray::is<int64_t>(t);
    case DType::u8: return DeviceArray::is<uint8_t>(t);
    default: return DeviceArray::is<float>(t) || DeviceArray::is<double>(t);
  }
}

inline std::string device_name(int32_t type, int32_t id) {
  switch (type) {
    case dlpack::kDLCPU: return "cpu";
    case dlpack::kDLCUDA: return "cuda:" + std::to_string(id);
    case dlpack::kDLCUDAHost: return "cuda_host (pinned host memory)";
    case dlpack::kDLCUDAManaged: return "cuda_managed:" + std::to_string(id);
    case dlpack::kDLROCM: return "rocm:" + std::to_string(id);
    default: return "device type " + std::to_string(type) + ":" + std::to_string(id);
  }
}

inline std::string tuple_text(const std::vector<std::string>& parts) {
  std::string s = "(";
  for (size_t i = 0; i < parts.size(); ++i) s += (i ? "," : "") + parts[i];
  return s + (parts.size() == 1 ? ",)" : ")");
}

inline std::string tuple_text(const int64_t* v, int32_t n) {
  std::vector<std::string> parts;
  for (int32_t i = 0; i < n; ++i) parts.push_back(std::to_string(v[i]));
  return tuple_text(parts);
}

// C-contiguous: NULL strides, or strides of a compact row-major layout wherever a dimension has
// more than one element (a dimension of size 1 may carry any stride; an empty array is
// contiguous).
inline bool c_contiguous(const dlpack::DLTensor& t) {
  if (t.strides == nullptr) return true;
  for (int32_t i = 0; i < t.ndim; ++i)
    if (t.shape[i] == 0) return true;
  int64_t expected = 1;
  for (int32_t i = t.ndim - 1; i >= 0; --i) {
    if (t.shape[i] != 1 && t.strides[i] != expected) return false;
    expected *= t.shape[i];
  }
  return true;
}

// dtype and shape of an array that cannot be exported (e.g. a read-only NumPy array), from its
// attributes, for an error message.
inline std::string describe_by_attributes(py::handle obj) {
  try {
    std::string dt = py::str(obj.attr("dtype"));
    if (dt.rfind("torch.", 0) == 0) dt = dt.substr(6);
    std::vector<std::string> dims;
    for (auto d : obj.attr("shape")) dims.push_back(py::str(d));
    return dt + " on cpu with shape " + tuple_text(dims);
  } catch (const py::error_already_set&) {
    return std::string(py::str(py::type::of(obj).attr("__name__"))) + " on cpu";
  }
}

}  // namespace detail

#ifdef MONST3R_RT_WITH_CUDA
// Makes `device` the calling thread's current CUDA device; restores the previous one on exit.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) : device_(device) {
    std::string err = cuda_get_device(&previous_);
    if (err.empty() && previous_ != device_) err = cuda_set_device(device_);
    if (!err.empty())
      throw std::runtime_error("cannot make cuda:" + std::to_string(device_) + " current: " + err);
  }
  ~DeviceGuard() {
    if (previous_ >= 0 && previous_ != device_) cuda_set_device(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int device_;
  int previous_ = -1;
};
#endif

class CudaArgs {
 public:
  // entry: the entry point's name (prefixes launch errors); stream: the cudaStream_t the kernel
  // will run on, as an integer (0 = legacy default stream).
  CudaArgs(std::string entry, std::uintptr_t stream)
      : entry_(std::move(entry)),
        stream_(reinterpret_cast<void*>(stream)),
        protocol_stream_(stream == 0 ? dlpack::kLegacyDefaultStream
                                     : static_cast<int64_t>(stream)) {}

  // The same checks with no CUDA call at all: arrays are exported with stream=-1 and launch()
  // refuses. For validation without a GPU.
  static CudaArgs check_only(std::string entry) {
    CudaArgs a(std::move(entry), 0);
    a.protocol_stream_ = dlpack::kNoSync;
    a.check_only_ = true;
    return a;
  }

  // A required array (None is an error).
  const DeviceArray& arg(const std::string& name, py::handle obj, DType dtype,
                         const std::vector<Dim>& shape) {
    return take(name, obj, dtype, shape, false);
  }

  // An optional array: None gives an absent entry (as<T>() == nullptr, present == false).
  const DeviceArray& optional(const std::string& name, py::handle obj, DType dtype,
                              const std::vector<Dim>& shape) {
    return take(name, obj, dtype, shape, true);
  }

  // Value of a shape symbol bound by an earlier array.
  int64_t dim(const std::string& symbol) const {
    auto it = dims_.find(symbol);
    if (it == dims_.end()) throw std::logic_error(entry_ + ": shape symbol " + symbol + " unbound");
    return it->second.first;
  }

  // An array checked earlier, by name.
  const DeviceArray& operator[](const std::string& name) const {
    for (const auto& a : arrays_)
      if (a.name == name) return a;
    throw std::logic_error(entry_ + ": no argument named " + name);
  }

  template <typename T>
  T* ptr(const std::string& name) const {
    return (*this)[name].template as<T>();
  }

  // The `real` dtype of the call is float64 (false: float32 or no real array yet).
  bool real_is_f64() const { return real_ == DType::f64; }
  int device() const { return device_; }
  void* stream() const { return stream_; }
  const std::string& entry() const { return entry_; }

  // What the checks bound: device, real dtype, shape symbols (for _core.check_cuda_arrays).
  py::dict summary() const {
    py::dict d, dims;
    for (const auto& [k, v] : dims_) dims[py::str(k)] = v.first;
    d["device"] = device_;
    d["dtype"] = real_ == DType::real ? py::object(py::none()) : py::str(detail::dtype_name(real_));
    d["dims"] = dims;
    return d;
  }

  // Runs kernel(stream) -> "" or a CUDA error text, with the GIL released and the arrays' device
  // current; a non-empty result raises RuntimeError "<entry>: <error>".
  template <typename F>
  void launch(F&& kernel) const {
    if (check_only_) throw std::logic_error(entry_ + ": launch() on a check_only CudaArgs");
#ifdef MONST3R_RT_WITH_CUDA
    std::string err;
    {
      py::gil_scoped_release release;
      try {
        DeviceGuard guard(device_ < 0 ? 0 : device_);
        err = kernel(stream_);
      } catch (const std::runtime_error& e) {  // the guard's error, raised with the GIL held
        err = e.what();
      }
    }
    if (!err.empty()) throw std::runtime_error(entry_ + ": " + err);
#else
    (void)kernel;
    throw std::runtime_error(entry_ + ": monst3r_rt._core was built without CUDA kernels (" +
                             std::string(MONST3R_RT_CUDA_REASON) +
                             "); rebuild with a CUDA compiler and MONST3R_RT_CUDA=ON");
#endif
  }

 private:
  const DeviceArray& take(const std::string& name, py::handle obj, DType dtype,
                          const std::vector<Dim>& shape, bool optional) {
    DeviceArray a;
    a.name = name;
    if (obj.is_none() && optional) {
      arrays_.push_back(std::move(a));
      return arrays_.back();
    }
    const std::string expected = expected_text(dtype, shape);
    if (obj.is_none() || !py::hasattr(obj, "__dlpack__") || !py::hasattr(obj, "__dlpack_device__")) {
      const std::string type = py::str(py::type::of(obj).attr("__name__"));
      throw py::type_error(name + ": expected " + expected + ", got " +
                           (obj.is_none() ? std::string("None") : "a " + type) +
                           " (not a DLPack array: pass a torch tensor or CuPy array on the GPU)");
    }
    a.owner = py::reinterpret_borrow<py::object>(obj);
    export_array(a, expected);
    const auto& t = static_cast<dlpack::DLManagedTensor*>(
                        PyCapsule_GetPointer(a.capsule.ptr(), dlpack::kCapsuleName))
                        ->dl_tensor;
    check(a, t, dtype, shape, expected);
    a.present = true;
    a.dtype = t.dtype;
    a.shape.assign(t.shape, t.shape + t.ndim);
    a.data = static_cast<char*>(t.data) + t.byte_offset;
    arrays_.push_back(std::move(a));
    return arrays_.back();
  }

  // Fills a.capsule (a "dltensor" capsule) or raises with what the object is.
  void export_array(DeviceArray& a, const std::string& expected) {
    int32_t type = 0;
    try {
      type = a.owner.attr("__dlpack_device__")().cast<std::pair<int32_t, int32_t>>().first;
      if (type == dlpack::kDLCUDA || type == dlpack::kDLCUDAManaged)
        a.capsule = a.owner.attr("__dlpack__")(py::arg("stream") = protocol_stream_);
      else
        a.capsule = a.owner.attr("__dlpack__")();
    } catch (py::error_already_set& e) {
      if (type != dlpack::kDLCUDA && type != dlpack::kDLCUDAManaged)  // e.g. read-only NumPy
        throw py::value_error(a.name + ": expected " + expected + ", got " +
                              detail::describe_by_attributes(a.owner));
      throw py::value_error(a.name + ": expected " + expected + "; exporting it through DLPack " +
                            "failed: " + e.what());
    }
    if (!PyCapsule_IsValid(a.capsule.ptr(), dlpack::kCapsuleName))
      throw py::value_error(a.name + ": __dlpack__ did not return a '" +
                            std::string(dlpack::kCapsuleName) + "' capsule");
  }

  void check(const DeviceArray& a, const dlpack::DLTensor& t, DType dtype,
             const std::vector<Dim>& shape, const std::string& expected) {
    const bool on_cuda = t.device.device_type == dlpack::kDLCUDA;
    const bool device_ok = on_cuda && (device_ < 0 || t.device.device_id == device_);
    const DType want = dtype == DType::real && real_ != DType::real ? real_ : dtype;
    const bool dtype_ok = detail::dtype_matches(want, t.dtype);
    std::map<std::string, int64_t> local;  // symbols this array binds
    std::vector<std::string> from_others;  // "N=8 from depth" for symbols bound earlier
    bool shape_ok = t.ndim == static_cast<int32_t>(shape.size());
    for (size_t i = 0; i < shape.size(); ++i) {
      const Dim& d = shape[i];
      const int64_t got = shape_ok ? t.shape[i] : -1;
      if (d.symbol == nullptr) {
        shape_ok = shape_ok && got == d.size;
        continue;
      }
      auto bound = dims_.find(d.symbol);
      if (bound != dims_.end()) {
        from_others.push_back(std::string(d.symbol) + "=" + std::to_string(bound->second.first) +
                              " from " + bound->second.second);
        shape_ok = shape_ok && got == bound->second.first;
      } else if (auto l = local.find(d.symbol); l != local.end()) {
        shape_ok = shape_ok && got == l->second;
      } else if (shape_ok) {
        local[d.symbol] = got;
      }
    }
    const bool layout_ok = detail::c_contiguous(t);
    if (device_ok && dtype_ok && shape_ok && layout_ok) {
      if (device_ < 0) device_ = t.device.device_id, device_from_ = a.name;
      if (dtype == DType::real && real_ == DType::real) {
        real_ = DeviceArray::is<double>(t.dtype) ? DType::f64 : DType::f32;
        dtype_from_ = detail::dtype_name(real_) + " from " + a.name;
      }
      for (const auto& [k, v] : local) dims_[k] = {v, a.name};
      return;
    }
    std::string msg = a.name + ": expected " + expected + ", got " +
                      detail::dtype_name(t.dtype) + " on " +
                      detail::device_name(t.device.device_type, t.device.device_id) +
                      " with shape " + detail::tuple_text(t.shape, t.ndim);
    std::vector<std::string> notes;
    if (!layout_ok) {
      msg += " and strides " + detail::tuple_text(t.strides, t.ndim);
      notes.push_back("not C-contiguous: pass a contiguous copy");
    }
    const int32_t type = t.device.device_type;
    if (type == dlpack::kDLCPU || type == dlpack::kDLCUDAHost)
      notes.push_back("host arrays are not copied to the GPU: move it there first");
    if (on_cuda && !device_ok) notes.push_back("cuda:" + std::to_string(device_) + " from " + device_from_);
    if (!dtype_ok && want != dtype) notes.push_back(dtype_from_);
    if (!shape_ok) notes.insert(notes.end(), from_others.begin(), from_others.end());
    for (size_t i = 0; i < notes.size(); ++i) msg += (i ? "; " : " (") + notes[i];
    if (!notes.empty()) msg += ")";
    throw py::value_error(msg);
  }

  // "float32 on cuda:0 with shape (8,3)": what the next array must be, given the bindings so far.
  std::string expected_text(DType dtype, const std::vector<Dim>& shape) const {
    const DType want = dtype == DType::real && real_ != DType::real ? real_ : dtype;
    std::vector<std::string> dims;
    for (const Dim& d : shape) {
      if (d.symbol == nullptr) {
        dims.push_back(std::to_string(d.size));
      } else {
        auto it = dims_.find(d.symbol);
        dims.push_back(it == dims_.end() ? std::string(d.symbol) : std::to_string(it->second.first));
      }
    }
    const std::string dev = device_ < 0 ? "cuda" : "cuda:" + std::to_string(device_);
    return detail::dtype_name(want) + " on " + dev + " with shape " + detail::tuple_text(dims);
  }

  std::string entry_;
  void* stream_;
  int64_t protocol_stream_;
  bool check_only_ = false;
  int device_ = -1;
  std::string device_from_;
  DType real_ = DType::real;  // `real` until bound to f32 / f64
  std::string dtype_from_;  // "float32 from pts_i"
  std::map<std::string, std::pair<int64_t, std::string>> dims_;  // symbol -> (value, array)
  std::deque<DeviceArray> arrays_;  // deque: references handed out stay valid
};

}  // namespace monst3r
