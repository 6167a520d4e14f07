// The fast CPU backend: the graph compiled into a plan of fused steps over CNHW buffers.
#pragma once

#include <memory>

#include "engine/backend.h"

namespace facenet {

std::unique_ptr<Backend> make_cpu_backend(const Model& model, const BackendOptions& options);

}  // namespace facenet
