// The CUDA backend's device memory that planning sizes: the activation arena (every value's
// slot, laid out by lifetime in the lowering), the model input and output buffers, the cuDNN
// workspace in the context, views of values where they live, and the generation that tells a
// captured CUDA graph that a buffer it recorded has moved.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/backend/lowering.h"
#include "engine/core/cuda_util.h"
#include "kernels/inception_ops.h"

namespace facenet {

class ActivationArena {
 public:
  // `g` and `ctx` must outlive the arena. Nothing is allocated before ensure_capacity().
  ActivationArena(GpuContext& ctx, const LoweredGraph& g, DType dtype, Layout layout);

  // Arena and I/O buffers for n images; growing them moves every pointer (contents zeroed:
  // planning runs cuDNN on them, and a tail plan reads images past its n), so the generation
  // changes and every captured graph is re-captured on its next use.
  void ensure_capacity(int64_t n);
  // At least `bytes` of workspace in the context; growing it moves it (a new generation).
  void reserve_workspace(std::size_t bytes);
  // Changes whenever a buffer a captured graph may have recorded moves: the growths above,
  // or the context's workspace moved by another user of the shared context (a gallery index
  // built on Backend::gpu_context() reserves its own scratch there).
  int generation();

  // The model input (compute dtype and layout), graph input shape.
  TensorView4 input(int64_t n);
  // A lowered value where it lives: its slot (maybe a concat's channel slice) or the input.
  TensorView4 value(const std::string& name, int64_t n);
  // Channels [c0, c0 + c) of arena slot `slot`, as a c x h x w map per image.
  TensorView4 slot_slice(int slot, int64_t n, int64_t c, int64_t h, int64_t w, int64_t c0);
  // The model output: n x output_per_image() float32.
  float* output() { return output_.data(); }
  // Copies the first n images' outputs to `dst` (device or host memory, per `kind`).
  void copy_output(float* dst, int64_t n, cudaMemcpyKind kind, cudaStream_t stream) const;

  int64_t input_per_image() const { return in_per_image_; }
  int64_t output_per_image() const { return out_per_image_; }
  // Device bytes: arena, input, output and the workspace reserved through reserve_workspace().
  std::size_t bytes() const;

 private:
  GpuContext& ctx_;
  const LoweredGraph& g_;
  DType dtype_;
  Layout layout_;
  int64_t in_per_image_, out_per_image_;

  int64_t capacity_ = 0;  // images the arena and I/O buffers hold
  int generation_ = 0;
  std::size_t workspace_bytes_ = 0;
  const void* workspace_ = nullptr;  // where the context's workspace was last seen
  DeviceBuffer<unsigned char> arena_, input_;
  DeviceBuffer<float> output_;
};

}  // namespace facenet
