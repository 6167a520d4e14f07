// The CPU backend: the lowered plan on oneDNN, float32 or bfloat16 (cpu_backend.cpp).
#pragma once

#include <memory>
#include <string>

#include "engine/backend.h"

namespace facenet {

// options.precision: "fp32", or "bf16" where the CPU has bfloat16 instructions (else throws
// facenet::Error naming the ISA oneDNN found).
std::unique_ptr<Backend> make_cpu_backend(const Model& model, const BackendOptions& options);

// The instruction set oneDNN dispatches to on this CPU, e.g. "avx512_core_bf16".
std::string cpu_isa_description();

}  // namespace facenet
