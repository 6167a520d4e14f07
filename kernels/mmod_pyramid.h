// Launchers that build dlib's MMOD detector input (the tiled pyramid_down<6> image pyramid,
// engine/face/cnn_detector.h) on the GPU from uploaded 8-bit RGB photos, resizing each level
// with mmod_bilinear (mmod_pyramid_rule.h).
//
// x is n x 3 x X_rows x X_cols float32 (NCHW). All pointers are device pointers; launchers
// enqueue on `stream` and return without synchronising.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/mmod_pyramid_rule.h"

namespace facenet {

// Zeroes x and writes level 0 at `l0`: (rgb - mean_c) * scale, rgb n x rows x cols x 3 uint8.
void launch_mmod_level0(const uint8_t* rgb, int64_t n, long rows, long cols, PyramidRect l0,
                        const float mean[3], double scale, float* x, long x_rows, long x_cols,
                        cudaStream_t stream);

// Each channel plane of level `to` resized from level `from` (mmod_bilinear).
void launch_mmod_resize(float* x, int64_t n, long x_rows, long x_cols, PyramidRect from,
                        PyramidRect to, cudaStream_t stream);

}  // namespace facenet
