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
  if (s == "cpu") return Device::cpu;
  if (s == "cpu-reference") return Device::cpu_reference;
  if (s == "cuda") return Device::cuda;
  fail("unknown device '", s, "' (expected cpu, cpu-reference or cuda)");
}

const char* device_name(Device d) {
  switch (d) {
    case Device::cpu:
      return "cpu";
    case Device::cpu_reference:
      return "cpu-reference";
    case Device::cuda:
      return "cuda";
  }
  return "?";
}

std::unique_ptr<Backend> make_backend(const Model& model, const BackendOptions& options) {
  if (options.precision != "fp32" && options.device == Device::cpu_reference)
    fail("--precision ", options.precision, ": the cpu-reference backend computes in fp32 only");
  switch (options.device) {
    case Device::cpu:
      return make_cpu_backend(model, options);
    case Device::cpu_reference:
      return make_reference_backend(model);
    case Device::cuda:
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
