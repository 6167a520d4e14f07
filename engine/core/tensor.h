// Host tensors: an owning float32 tensor with a shape, used for weights and CPU activations.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace facenet {

using Shape = std::vector<int64_t>;

inline int64_t element_count(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_string(const Shape& shape);  // "[64, 3, 7, 7]"

// Owning, contiguous, row-major float32 tensor.
struct HostTensor {
  Shape shape;
  std::vector<float> data;

  HostTensor() = default;
  explicit HostTensor(Shape s) : shape(std::move(s)), data(element_count(shape), 0.0f) {}
  HostTensor(Shape s, std::vector<float> values) : shape(std::move(s)), data(std::move(values)) {}
  int64_t size() const { return static_cast<int64_t>(data.size()); }
};

}  // namespace facenet
