// The geometry and resize rule of dlib's MMOD detector pyramid, without CUDA headers: the
// GPU launchers (mmod_pyramid.h) and the host (engine/face/cnn_detector.h, its tests) share it,
// so a CPU test checks the GPU's per-pixel rule against dlib's own resize.
#pragma once

#include <math.h>

#if defined(__CUDACC__)
#define FN_MMOD_HD __host__ __device__
#else
#define FN_MMOD_HD
#endif

namespace facenet {

// One level's place in the pyramid image (inclusive corners, as dlib's rectangles).
struct PyramidRect {
  long left = 0, top = 0, right = -1, bottom = -1;
  FN_MMOD_HD long width() const { return right - left + 1; }
  FN_MMOD_HD long height() const { return bottom - top + 1; }
};

// dst(r, c) of a bilinear resize from a sh x sw plane (row stride `stride`) to dh x dw, in
// dlib's CUDA resize_bilinear formula: y = r * (sh - 1) / max(dh - 1, 1), the 4 neighbours clamped
// at the last row/column, weights in float.
FN_MMOD_HD inline float mmod_bilinear(const float* s, long stride, long sh, long sw, long dh,
                                      long dw, long r, long c) {
  const float y_scale = (sh - 1) / static_cast<float>(dh - 1 > 1 ? dh - 1 : 1);
  const float x_scale = (sw - 1) / static_cast<float>(dw - 1 > 1 ? dw - 1 : 1);
  const float y = r * y_scale;
  const long top = static_cast<long>(floorf(y));
  const long bottom = top + 1 < sh - 1 ? top + 1 : sh - 1;
  const float tb = y - top;
  const float x = c * x_scale;
  const long left = static_cast<long>(floorf(x));
  const long right = left + 1 < sw - 1 ? left + 1 : sw - 1;
  const float lr = x - left;
  const float tl = s[top * stride + left], tr = s[top * stride + right];
  const float bl = s[bottom * stride + left], br = s[bottom * stride + right];
  return (1 - tb) * ((1 - lr) * tl + lr * tr) + tb * ((1 - lr) * bl + lr * br);
}

}  // namespace facenet
