// The CUDA backend's activation arena, I/O buffers and workspace generation (arena.h).
#include "engine/backend/cuda/arena.h"

namespace facenet {

ActivationArena::ActivationArena(GpuContext& ctx, const LoweredGraph& g, DType dtype, Layout layout)
    : ctx_(ctx),
      g_(g),
      dtype_(dtype),
      layout_(layout),
      in_per_image_(element_count(g.input_shape)),
      out_per_image_(g.output_dim()) {}

void ActivationArena::ensure_capacity(int64_t n) {
  if (n <= capacity_) return;
  const std::size_t es = dtype_size(dtype_);
  arena_.resize(static_cast<std::size_t>(g_.arena_per_image * n) * es);
  input_.resize(static_cast<std::size_t>(in_per_image_ * n) * es);
  output_.resize(static_cast<std::size_t>(out_per_image_ * n));
  FN_GPU_CHECK(cudaMemsetAsync(arena_.data(), 0, arena_.bytes(), ctx_.stream()));
  FN_GPU_CHECK(cudaMemsetAsync(input_.data(), 0, input_.bytes(), ctx_.stream()));
  capacity_ = n;
  ++generation_;
}

void ActivationArena::reserve_workspace(std::size_t bytes) {
  if (bytes <= workspace_bytes_) return;
  ctx_.reserve(bytes);
  workspace_bytes_ = bytes;
  workspace_ = ctx_.workspace(bytes);
  ++generation_;
}

int ActivationArena::generation() {
  // The context's workspace only grows, so workspace_bytes_ of it always exist.
  const void* now = workspace_bytes_ > 0 ? ctx_.workspace(workspace_bytes_) : nullptr;
  if (now != workspace_) {
    workspace_ = now;
    ++generation_;
  }
  return generation_;
}

TensorView4 ActivationArena::input(int64_t n) {
  const Shape& s = g_.input_shape;
  return packed_view(input_.data(), dtype_, layout_, n, s[0], s[1], s[2], s[0], 0);
}

TensorView4 ActivationArena::value(const std::string& name, int64_t n) {
  const Placement& p = g_.placement.at(name);
  if (p.slot < 0) return input(n);
  const Shape& s = g_.shape(name);
  return slot_slice(p.slot, n, s[0], s[1], s[2], p.c0);
}

TensorView4 ActivationArena::slot_slice(int slot, int64_t n, int64_t c, int64_t h, int64_t w,
                                        int64_t c0) {
  const Slot& sl = g_.slots[slot];
  void* base = arena_.data() + sl.offset * n * static_cast<int64_t>(dtype_size(dtype_));
  return packed_view(base, dtype_, layout_, n, c, h, w, sl.c, c0);
}

void ActivationArena::copy_output(float* dst, int64_t n, cudaMemcpyKind kind,
                                  cudaStream_t stream) const {
  FN_ASSERT(n <= capacity_);
  const std::size_t bytes = static_cast<std::size_t>(out_per_image_ * n) * sizeof(float);
  FN_GPU_CHECK(cudaMemcpyAsync(dst, output_.data(), bytes, kind, stream));
}

std::size_t ActivationArena::bytes() const {
  return arena_.bytes() + input_.bytes() + output_.bytes() + workspace_bytes_;
}

}  // namespace facenet
