// The CUDA backend: the graph compiled once per model into fused steps (cuDNN conv + bias +
// ReLU with BN folded, hand-written Inception kernels, in-place concat), planned once per
// batch size (algorithms, workspace, activation arena, CUDA graph) and replayed.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "engine/backend/backend.h"

namespace facenet {

// make_staged_encoder() gives the asynchronous form of forward_bgr8 that the pipeline
// pipelines: pinned host slots, uploads on their own stream overlapping the previous batch's
// forward, one event per slot to wait on.
class CudaBackend : public Backend {
 public:
  // From decoded images: n x H x W x 3 uint8 BGR (HWC, OpenCV's order) in host memory; the
  // conversion to the model input (RGB, scale, layout, dtype) runs on the GPU. Synchronous.
  virtual void forward_bgr8(const uint8_t* bgr, int64_t n, float* y) = 0;

  // From an input the caller builds on the GPU: `fill` gets a device buffer of n images of the
  // input shape (float32 NCHW, `per_image` values each: checked against the model's input) and
  // the backend's stream and queues its writes there (the CNN detector builds its pyramid this
  // way from the uploaded 8-bit photo). Synchronous.
  virtual void forward_device_input(int64_t n, int64_t per_image,
                                    const std::function<void(float* x, cudaStream_t stream)>& fill,
                                    float* y) = 0;

  // Model-only path for benchmarks: prepare() builds the plan for n (algorithms, arena, CUDA
  // graph) and fills the device-resident input with `x` (n images, float32 NCHW);
  // forward_resident(n) then runs the network on it, asynchronously on stream().
  virtual void prepare(int64_t n, const float* x) = 0;
  virtual void forward_resident(int64_t n) = 0;
  virtual cudaStream_t stream() const = 0;

  // Device memory held by the backend: weights, activation arena, I/O buffers, workspace,
  // staging slots.
  virtual std::size_t device_bytes() const = 0;

  // The batch sizes planned so far, ascending. forward() and the staged path run n images
  // on an existing plan of at most 2n images; otherwise they plan n exactly when it exceeds
  // every planned size (full batches), else the next power of two (tails).
  virtual std::vector<int64_t> planned_batches() const = 0;
};

// precision: "fp32" (NCHW, no TF32) | "fp16" | "bf16" (NHWC, tensor cores; float accumulation
// in our kernels). Throws facenet::Error on an unknown precision or an unsupported graph.
std::unique_ptr<CudaBackend> make_cuda_backend(const Model& model, const BackendOptions& options);

}  // namespace facenet
