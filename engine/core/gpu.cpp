// GPU presence queries and the CUDA plumbing declared in cuda_util.h.
#include "engine/core/gpu.h"

#include "engine/core/error.h"

#ifdef FACENET_HAS_CUDA
#include "engine/core/cuda_util.h"
#endif

namespace facenet {

#ifdef FACENET_HAS_CUDA

std::string gpu_status() {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so later calls report their own
    return cudaGetErrorString(err);
  }
  if (count == 0) return "no CUDA device found";
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return "device 0 does not answer";
  return prop.name;
}

bool gpu_available() {
  int count = 0;
  bool ok = cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
  if (!ok) cudaGetLastError();
  return ok;
}

void gpu_check(cudaError_t status, const char* stmt, const char* file, int line) {
  if (status == cudaSuccess) return;
  cudaGetLastError();
  fail("CUDA error '", cudaGetErrorString(status), "' in ", stmt, " at ", file, ":", line);
}

void gpu_check(cublasStatus_t status, const char* stmt, const char* file, int line) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  fail("cuBLAS error '", cublasGetStatusString(status), "' in ", stmt, " at ", file, ":", line);
}

void launch_check(const char* kernel, const char* file, int line) {
  gpu_check(cudaGetLastError(), kernel, file, line);
#ifdef FACENET_SYNC_LAUNCH
  gpu_check(cudaDeviceSynchronize(), kernel, file, line);
#endif
}

UniqueStream make_stream() {
  cudaStream_t s = nullptr;
  FN_GPU_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  return UniqueStream(s);
}

UniqueEvent make_event(unsigned flags) {
  cudaEvent_t e = nullptr;
  FN_GPU_CHECK(cudaEventCreateWithFlags(&e, flags));
  return UniqueEvent(e);
}

GpuContext::GpuContext(int device) : device_(device) {
  require_gpu("GpuContext");
  FN_GPU_CHECK(cudaSetDevice(device));
  stream_ = make_stream();
  cublasHandle_t h = nullptr;
  FN_GPU_CHECK(cublasCreate(&h));
  cublas_.reset(h);
  FN_GPU_CHECK(cublasSetStream(h, stream_.get()));
}

void GpuContext::synchronize() const {
  FN_GPU_CHECK(cudaStreamSynchronize(stream_.get()));
}

#else  // built without CUDA

std::string gpu_status() {
  return "facenet was built without CUDA (FACENET_CUDA=OFF)";
}
bool gpu_available() {
  return false;
}

#endif

void require_gpu(const std::string& what) {
  if (!gpu_available()) fail(what, ": no usable CUDA GPU (", gpu_status(), ")");
}

}  // namespace facenet
