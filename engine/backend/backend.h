// The executor interface every backend implements, and the factory that picks one.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "engine/model/model.h"

namespace facenet {

enum class Device {
  kCpu,           // fast CPU path: GEMM convolution through BLAS, batched, all cores
  kCpuReference,  // straightforward loops, BatchNorm unfolded: the oracle for tests
  kCuda,          // cuDNN + hand-written kernels
};

Device parse_device(const std::string& s);  // "cpu" | "cpu-reference" | "cuda"
const char* device_name(Device d);

struct BackendOptions {
  Device device = Device::kCpu;
  int threads = 0;      // CPU threads; 0 = every core
  int micro_batch = 0;  // CPU: images per internal pass; 0 = automatic
  std::string precision = "fp32";
  std::string layout = "auto";  // cuda: nchw | nhwc | auto (nchw for fp32, nhwc for fp16/bf16)
  bool cuda_graphs = true;      // cuda: capture each batch size's forward in a CUDA graph
};

// A backend's asynchronous path for decoded 8-bit images, for pipelines that keep a device
// busy (engine/encode.h). It owns slots() staging slots, each holding up to capacity() images
// of the model's input size (H x W x 3 uint8, BGR as OpenCV decodes) and their embeddings
// (n x embedding_dim float32). A slot cycles: fill input(slot) -> submit(slot, n) ->
// wait(slot) -> read output(slot). Between submit and wait the host must touch neither
// buffer of that slot; the other slots stay usable, so decoding into one overlaps the device
// working on another. Must not outlive the backend that made it.
class StagedEncoder {
 public:
  virtual ~StagedEncoder() = default;
  virtual int slots() const = 0;
  virtual int64_t capacity() const = 0;
  virtual uint8_t* input(int slot) = 0;
  virtual const float* output(int slot) const = 0;
  // Queues the first n images of input(slot) and returns at once; 1 <= n <= capacity().
  virtual void submit(int slot, int64_t n) = 0;
  // Blocks until the slot's last submit is done (returns at once for an idle slot).
  virtual void wait(int slot) = 0;
  // The slot's embeddings in device memory (n x embedding_dim float32), valid once the slot's
  // submit is queued and until its next one; work queued after submit on the backend's stream
  // (Backend::gpu_context()) sees them without a wait, so a gallery search can read them
  // where they are. Null for an encoder without device memory.
  virtual const float* device_output(int /*slot*/) const { return nullptr; }
};

class GpuContext;

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  // x: n images, each the graph's input shape (C x H x W), contiguous float32 NCHW.
  // y: n x embedding_dim float32. Thread-compatible, not thread-safe.
  virtual void forward(const float* x, int64_t n, float* y) = 0;
  // The staged 8-bit path with `slots` slots of `capacity` images; null when the backend has
  // none (the CPU backends take forward()'s float input). The CUDA backend keeps a returned
  // encoder's slots and lends them again to the next request they fit. Must not outlive
  // the backend.
  virtual std::unique_ptr<StagedEncoder> make_staged_encoder(int /*slots*/, int64_t /*capacity*/) {
    return nullptr;
  }
  // The GPU context (device, stream, handles) the backend runs on; null on the CPU. A gallery
  // index built on it shares the stream, so a search queued after an encode needs no sync.
  virtual GpuContext* gpu_context() { return nullptr; }
};

// Throws facenet::Error when the device is unusable (e.g. cuda without a GPU).
std::unique_ptr<Backend> make_backend(const Model& model, const BackendOptions& options);

}  // namespace facenet
