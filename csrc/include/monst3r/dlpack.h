// The DLPack C ABI (legacy, unversioned form: capsule name "dltensor"), declared from the public
// specification (https://dmlc.github.io/dlpack/latest/c_api.html) so that the core needs no
// third-party header. Only what a consumer reads is declared. Producers (torch, CuPy, NumPy)
// return this form from ``__dlpack__`` when the caller passes no ``max_version``.
#pragma once

#include <cstdint>

namespace monst3r {
namespace dlpack {

// DLDeviceType values used by the core (the spec lists more; any other value is reported by
// number).
enum DeviceType : int32_t {
  kDLCPU = 1,
  kDLCUDA = 2,
  kDLCUDAHost = 3,  // page-locked host memory
  kDLROCM = 10,
  kDLCUDAManaged = 13,
};

// DLDataTypeCode values.
enum TypeCode : uint8_t {
  kDLInt = 0,
  kDLUInt = 1,
  kDLFloat = 2,
  kDLOpaqueHandle = 3,
  kDLBfloat = 4,
  kDLComplex = 5,
  kDLBool = 6,
};

struct DLDevice {
  int32_t device_type;  // a DeviceType
  int32_t device_id;
};

struct DLDataType {
  uint8_t code;   // a TypeCode
  uint8_t bits;   // bits of one lane
  uint16_t lanes; // 1 for scalars
};

struct DLTensor {
  void* data;            // base pointer; the first element is at (char*)data + byte_offset
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;        // ndim entries
  int64_t* strides;      // ndim entries, in elements; NULL = compact row-major
  uint64_t byte_offset;
};

struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  // Called by whoever owns the tensor when done; the producer's capsule destructor calls it
  // unless a consumer renamed the capsule "used_dltensor" (took ownership). May be NULL.
  void (*deleter)(DLManagedTensor* self);
};

// Capsule names of the protocol.
constexpr const char* kCapsuleName = "dltensor";
constexpr const char* kUsedCapsuleName = "used_dltensor";
constexpr const char* kVersionedCapsuleName = "dltensor_versioned";

// Stream values a consumer passes to __dlpack__(stream=...) for CUDA (array API standard):
// 1 = legacy default stream, 2 = per-thread default stream, > 2 = a cudaStream_t, -1 = "do not
// synchronise". 0 is not allowed (ambiguous).
constexpr int64_t kLegacyDefaultStream = 1;
constexpr int64_t kNoSync = -1;

}  // namespace dlpack
}  // namespace monst3r
