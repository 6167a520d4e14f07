// The executor interface every backend implements, and the factory that picks one.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "engine/model.h"

namespace facenet {

enum class Device {
  cpu,            // fast CPU path: GEMM convolution through BLAS, batched, all cores
  cpu_reference,  // straightforward loops, BatchNorm unfolded: the oracle for tests
  cuda,           // cuDNN + hand-written kernels
};

Device parse_device(const std::string& s);  // "cpu" | "cpu-reference" | "cuda"
const char* device_name(Device d);

struct BackendOptions {
  Device device = Device::cpu;
  int threads = 0;      // CPU threads; 0 = every core
  int micro_batch = 0;  // CPU: images per internal pass; 0 = automatic
  std::string precision = "fp32";
  std::string layout = "auto";  // cuda: nchw | nhwc | auto (nchw for fp32, nhwc for fp16/bf16)
  bool cuda_graphs = true;      // cuda: capture each batch size's forward in a CUDA graph
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  // x: n images, each the graph's input shape (C x H x W), contiguous float32 NCHW.
  // y: n x embedding_dim float32. Thread-compatible, not thread-safe.
  virtual void forward(const float* x, int64_t n, float* y) = 0;
};

// Throws facenet::Error when the device is unusable (e.g. cuda without a GPU).
std::unique_ptr<Backend> make_backend(const Model& model, const BackendOptions& options);

}  // namespace facenet
