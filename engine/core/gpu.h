// GPU presence queries that compile with or without the CUDA backend.
#pragma once

#include <string>

namespace facenet {

// True when the engine was built with CUDA and a usable device answers.
bool gpu_available();

// Human-readable reason why no GPU can be used ("built without CUDA", "CUDA driver version
// is insufficient for CUDA runtime version", ...), or the device name when one is usable.
std::string gpu_status();

// Throws facenet::Error naming `what` (e.g. "--device cuda") when no GPU can be used.
void require_gpu(const std::string& what);

}  // namespace facenet
