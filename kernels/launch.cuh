// Launch helpers for every kernels/ launcher, in one place: grid sizing, dtype dispatch, the
// dynamic shared-memory opt-in with its limit check, and argument checks that name the
// launcher. Launchers use them in one order: validate -> sizes -> grid -> launch -> check.
// Internal to kernels/: included by .cu files only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <utility>

#include "engine/core/cuda_util.h"
#include "engine/core/dtype.h"
#include "engine/core/error.h"

namespace facenet {

// ---- grid sizing --------------------------------------------------------------------------

// Blocks of `per_block` work items (threads, rows, queries) that cover `work` items:
// ceil(work / per_block).
inline unsigned blocks_for(int64_t work, int per_block) {
  return static_cast<unsigned>((work + per_block - 1) / per_block);
}

// ---- dtype dispatch -----------------------------------------------------------------------

// The DType of each C++ storage type.
template <typename T>
struct DTypeOf;
template <>
struct DTypeOf<float> {
  static constexpr DType value = DType::kFloat32;
};
template <>
struct DTypeOf<__half> {
  static constexpr DType value = DType::kFloat16;
};
template <>
struct DTypeOf<__nv_bfloat16> {
  static constexpr DType value = DType::kBFloat16;
};

// Calls fn(T{}) with T the C++ type of `t` among Ts (fn is a generic lambda that takes
// `using T = decltype(t)`); fails naming the launcher when `t` is none of them, so a launcher
// instantiates only the types its kernels support.
template <typename... Ts, typename Fn>
void dispatch_dtype_among(DType t, const char* launcher, Fn&& fn) {
  const bool called = ((DTypeOf<Ts>::value == t ? (fn(Ts{}), true) : false) || ...);
  if (!called) fail(launcher, ": dtype ", dtype_name(t), " is not supported");
}

// The same over every storage type: float, __half, __nv_bfloat16.
template <typename Fn>
void dispatch_dtype(DType t, const char* launcher, Fn&& fn) {
  dispatch_dtype_among<float, __half, __nv_bfloat16>(t, launcher, std::forward<Fn>(fn));
}

// ---- dynamic shared memory ----------------------------------------------------------------

// Dynamic shared memory every kernel may use without opting in.
constexpr std::size_t kDefaultDynamicSmem = 48 * 1024;

// Lets `kernel` launch with `bytes` of dynamic shared memory on the current device. Up to the
// 48 KiB default nothing is needed; above it the kernel is opted in
// (cudaFuncAttributeMaxDynamicSharedMemorySize), after checking the device's opt-in limit
// (cudaDevAttrMaxSharedMemoryPerBlockOptin, at least 48 KiB on every device). Over that limit
// it fails naming the launcher, the kernel and, when given, what sets the size.
template <typename Kernel>
void allow_dynamic_smem(Kernel kernel, std::size_t bytes, const char* launcher,
                        const char* kernel_name, const char* sized_by = nullptr) {
  if (bytes <= kDefaultDynamicSmem) return;
  int device = 0, limit = 0;
  FN_GPU_CHECK(cudaGetDevice(&device));
  FN_GPU_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  if (bytes > static_cast<std::size_t>(limit)) {
    if (sized_by)
      fail(launcher, ": ", kernel_name, " needs ", bytes, " bytes of shared memory per block (",
           sized_by, " too large); the device allows ", limit);
    fail(launcher, ": ", kernel_name, " needs ", bytes,
         " bytes of shared memory per block; the device allows ", limit);
  }
  FN_GPU_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(bytes)));
}

// ---- argument checks ----------------------------------------------------------------------
// Each throws facenet::Error "<launcher>: ..." naming the argument and what was expected.

// Fails with `message...` (streamed) unless `ok`.
template <typename... Args>
void check_arg(bool ok, const char* launcher, Args&&... message) {
  if (!ok) fail(launcher, ": ", std::forward<Args>(message)...);
}

inline void check_not_null(const void* p, const char* launcher, const char* arg) {
  if (!p) fail(launcher, ": ", arg, " is null");
}

// lo <= v <= hi.
inline void check_range(int64_t v, int64_t lo, int64_t hi, const char* launcher, const char* arg) {
  if (v < lo || v > hi) fail(launcher, ": ", arg, " = ", v, " must be in [", lo, ", ", hi, "]");
}

}  // namespace facenet
