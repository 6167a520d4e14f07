// CUDA plumbing shared by kernels/ and the engine's CUDA code: the one return-code check,
// launch checks, RAII device memory, streams/events, and the explicit GPU context.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <memory>
#include <utility>

#include "engine/core/error.h"

namespace facenet {

// One overload per library status type; all throw facenet::Error with statement, file, line.
void gpu_check(cudaError_t status, const char* stmt, const char* file, int line);
void gpu_check(cublasStatus_t status, const char* stmt, const char* file, int line);

// Called after every launch: picks up launch errors, and with FACENET_SYNC_LAUNCH also
// synchronises so that an asynchronous fault is blamed on the kernel that caused it.
void launch_check(const char* kernel, const char* file, int line);

}  // namespace facenet

// The one check macro for CUDA runtime and library return codes (cuDNN's overload lives with
// the cuDNN code so that only it pulls in cudnn.h).
#define FN_GPU_CHECK(stmt) ::facenet::gpu_check((stmt), #stmt, __FILE__, __LINE__)
#define FN_LAUNCH_CHECK(kernel) ::facenet::launch_check(kernel, __FILE__, __LINE__)

namespace facenet {

// Move-only owner of `count` elements of T in device memory. Sizes are in elements; the
// destructor never throws. Copies are explicit (clone()).
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t count) { resize(count); }
  ~DeviceBuffer() { release(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : ptr_(std::exchange(o.ptr_, nullptr)), count_(std::exchange(o.count_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      ptr_ = std::exchange(o.ptr_, nullptr);
      count_ = std::exchange(o.count_, 0);
    }
    return *this;
  }

  // Reallocates (contents lost) unless the size is unchanged.
  void resize(std::size_t count) {
    if (count == count_) return;
    release();
    if (count > 0) FN_GPU_CHECK(cudaMalloc(reinterpret_cast<void**>(&ptr_), count * sizeof(T)));
    count_ = count;
  }
  DeviceBuffer clone(cudaStream_t stream = nullptr) const {
    DeviceBuffer copy(count_);
    if (count_ > 0)
      FN_GPU_CHECK(cudaMemcpyAsync(copy.ptr_, ptr_, bytes(), cudaMemcpyDeviceToDevice, stream));
    return copy;
  }
  void upload(const T* host, std::size_t count, cudaStream_t stream = nullptr) {
    FN_ASSERT(count <= count_);
    FN_GPU_CHECK(cudaMemcpyAsync(ptr_, host, count * sizeof(T), cudaMemcpyHostToDevice, stream));
  }
  void download(T* host, std::size_t count, cudaStream_t stream = nullptr) const {
    FN_ASSERT(count <= count_);
    FN_GPU_CHECK(cudaMemcpyAsync(host, ptr_, count * sizeof(T), cudaMemcpyDeviceToHost, stream));
  }

  T* data() { return ptr_; }
  const T* data() const { return ptr_; }
  std::size_t size() const { return count_; }
  std::size_t bytes() const { return count_ * sizeof(T); }

 private:
  void release() noexcept {
    if (ptr_) cudaFree(ptr_);  // destructor path: errors here cannot be reported usefully
    ptr_ = nullptr;
    count_ = 0;
  }
  T* ptr_ = nullptr;
  std::size_t count_ = 0;
};

struct StreamDeleter {
  void operator()(cudaStream_t s) const noexcept { cudaStreamDestroy(s); }
};
struct EventDeleter {
  void operator()(cudaEvent_t e) const noexcept { cudaEventDestroy(e); }
};
struct CublasDeleter {
  void operator()(cublasHandle_t h) const noexcept { cublasDestroy(h); }
};
using UniqueStream = std::unique_ptr<std::remove_pointer_t<cudaStream_t>, StreamDeleter>;
using UniqueEvent = std::unique_ptr<std::remove_pointer_t<cudaEvent_t>, EventDeleter>;
using UniqueCublas = std::unique_ptr<std::remove_pointer_t<cublasHandle_t>, CublasDeleter>;

UniqueStream make_stream();
// cudaEventDisableTiming for events that only order work (cheaper to record and wait on).
UniqueEvent make_event(unsigned flags = cudaEventDefault);

// Move-only owner of `count` elements of T in page-locked host memory (cudaMallocHost):
// what asynchronous copies need to overlap with kernels. Freed without throwing.
template <typename T>
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  explicit PinnedBuffer(std::size_t count) : count_(count) {
    void* p = nullptr;
    if (count > 0) FN_GPU_CHECK(cudaMallocHost(&p, count * sizeof(T)));
    ptr_.reset(static_cast<T*>(p));
  }
  T* data() { return ptr_.get(); }
  const T* data() const { return ptr_.get(); }
  std::size_t size() const { return count_; }

 private:
  struct Deleter {
    void operator()(T* p) const noexcept { cudaFreeHost(p); }
  };
  std::unique_ptr<T, Deleter> ptr_;
  std::size_t count_ = 0;
};

// The explicit GPU context passed to launchers: device, stream, cuBLAS handle and a
// workspace arena that grows on demand outside the per-batch path (call reserve() when a
// plan is built, then take slices with workspace()).
class GpuContext {
 public:
  explicit GpuContext(int device = 0);
  int device() const { return device_; }
  cudaStream_t stream() const { return stream_.get(); }
  cublasHandle_t cublas() const { return cublas_.get(); }
  void reserve(std::size_t bytes) { workspace_.resize(std::max(bytes, workspace_.size())); }
  // Scratch memory of at least `bytes` (reserve()d beforehand); valid until the next reserve.
  void* workspace(std::size_t bytes) {
    FN_ASSERT(bytes <= workspace_.size());
    return workspace_.data();
  }
  void synchronize() const;

 private:
  int device_;
  UniqueStream stream_;
  UniqueCublas cublas_;
  DeviceBuffer<unsigned char> workspace_;
};

}  // namespace facenet
