// Backend factory.
#include "engine/backend/backend.h"

#include "engine/backend/cpu/cpu_backend.h"
#include "engine/backend/reference/cpu_reference.h"
#include "engine/core/error.h"
#include "engine/core/gpu.h"
#ifdef FACENET_HAS_CUDA
#include "engine/backend/cuda/cuda_backend.h"
#endif

namespace facenet {

Device parse_device(const std::string& s) {
  if (s == "cpu") return Device::kCpu;
  if (s == "cpu-reference") return Device::kCpuReference;
  if (s == "cuda") return Device::kCuda;
  fail("unknown device '", s, "' (expected cpu, cpu-reference or cuda)");
}

const char* device_name(Device d) {
  switch (d) {
    case Device::kCpu:
      return "cpu";
    case Device::kCpuReference:
      return "cpu-reference";
    case Device::kCuda:
      return "cuda";
  }
  return "?";
}

std::unique_ptr<Backend> make_backend(const Model& model, const BackendOptions& options) {
  if (options.precision != "fp32" && options.device == Device::kCpuReference)
    fail("--precision ", options.precision, ": the cpu-reference backend computes in fp32 only");
  switch (options.device) {
    case Device::kCpu:
      return make_cpu_backend(model, options);
    case Device::kCpuReference:
      return make_reference_backend(model);
    case Device::kCuda:
      require_gpu("--device cuda");
#ifdef FACENET_HAS_CUDA
      return make_cuda_backend(model, options);
#else
      fail("--device cuda: this build has no CUDA backend");  // require_gpu threw already
#endif
  }
  fail("unknown device");
}

}  // namespace facenet
