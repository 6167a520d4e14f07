// The one element-type vocabulary of the engine: activations, k-NN storage, GEMM inputs.
#pragma once

#include <cstddef>

namespace facenet {

enum class DType { kFloat32, kFloat16, kBFloat16 };

constexpr std::size_t dtype_size(DType t) {
  return t == DType::kFloat32 ? 4 : 2;
}

constexpr const char* dtype_name(DType t) {
  return t == DType::kFloat32 ? "fp32" : t == DType::kFloat16 ? "fp16" : "bf16";
}

}  // namespace facenet
