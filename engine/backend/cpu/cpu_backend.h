// The CPU backend: the lowered plan on oneDNN, float32 or bfloat16 (cpu_backend.cpp).
#pragma once

#include <memory>

#include "engine/backend/backend.h"

namespace facenet {

// options.precision: "fp32", or "bf16" where the CPU has bfloat16 instructions (else throws
// facenet::Error naming the ISA oneDNN found).
std::unique_ptr<Backend> make_cpu_backend(const Model& model, const BackendOptions& options);

// Whether oneDNN runs bfloat16 natively here (avx512_core_bf16 or newer): what bf16 needs.
bool cpu_has_bf16();

}  // namespace facenet
