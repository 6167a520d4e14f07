// Internal to engine/face: the CNN detector's CUDA path, where the pyramid is built on the GPU
// from the uploaded 8-bit photos (kernels/mmod_pyramid.h) and the network runs on it.
#pragma once

#include <cstdint>

#include "engine/backend/backend.h"
#include "engine/face/cnn_detector.h"

namespace facenet::detail {

// n RGB photos of rows x cols (uint8, packed) -> their score maps in y (host), on `backend`
// (a CUDA backend built for the layout's size). Throws facenet::Error in a build without CUDA.
void forward_pyramid_cuda(Backend& backend, const MmodSettings& s, const PyramidLayout& layout,
                          const unsigned char* rgb, int64_t n, long rows, long cols, float* y);

}  // namespace facenet::detail
