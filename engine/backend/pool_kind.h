// The window pools' vocabulary, shared by the lowering and the CUDA kernels (kept apart so the
// kernels' headers need nothing else of the engine).
#pragma once

namespace facenet {

enum class PoolKind { kMax, kAvg, kL2 };

}  // namespace facenet
