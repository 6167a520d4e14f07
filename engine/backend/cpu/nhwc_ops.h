// The CPU backend's own ops, for what oneDNN has no primitive for (L2 pooling, the centred
// concat padding, dlib's zero-extending residual add, per-channel affine, L2 normalisation):
// NHWC activations in float32 or bfloat16, compared against the reference backend by tests.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "engine/core/dtype.h"

namespace facenet {

// bfloat16 <-> float32: the top 16 bits, rounded to nearest even (NaN kept quiet).
inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_to_float(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// n images of c x h x w in NHWC whose pixels are `cs` elements apart (cs >= c: a channel
// slice of a wider buffer starts at data). The views an op takes share one element type.
struct NhwcView {
  void* data = nullptr;
  DType type = DType::kFloat32;
  int64_t n = 0, c = 0, h = 0, w = 0, cs = 0;
  int64_t pixels() const { return n * h * w; }
};

// sqrt of each window's sum of squares; zero padding; floor mode (y's h/w are the output).
void l2pool_nhwc(const NhwcView& x, const NhwcView& y, int kernel, int stride, int pad,
                 int threads);

// Copies x into y (same n, c and element type; y's map at least as large), centred (floor((H-h)/2)
// rows and columns before), zeroing y's border.
void copy_centred_nhwc(const NhwcView& x, const NhwcView& y, int threads);

// y = relu?(a + b); y's dims are the larger of a's and b's on each axis (same n), an element
// of the smaller input beyond its extent counts as 0 (dlib's add_prev).
void add_padded_nhwc(const NhwcView& a, const NhwcView& b, bool relu, const NhwcView& y,
                     int threads);

// y = relu?(gamma_c x + beta_c).
void affine_nhwc(const NhwcView& x, const float* gamma, const float* beta, bool relu,
                 const NhwcView& y, int threads);

// A stride-1 convolution to a single output channel, float32: y = relu?(w * x + bias), zero
// padding `pad`. `w` is packed [kernel][kernel * x.cs] (kx-major, x.cs channels each, zero past
// x.c: pack_single_conv_weights), so each window row is one dot product over contiguous
// input. oneDNN's direct convolution spends 16 lanes on the 1 output channel (dlib's MMOD
// score layer: 45 -> 1 channels, 9x9: 1.8 ms of an 11 ms forward).
void conv_single_nhwc(const NhwcView& x, const float* w, float bias, int kernel, int pad, bool relu,
                      const NhwcView& y, int threads);
// [1][c][k][k] weights -> the packing conv_single_nhwc reads, for inputs `cs` floats apart.
std::vector<float> pack_single_conv_weights(const float* w, int64_t c, int kernel, int64_t cs);

// Each image of x -> a row of y[n][c*h*w] float32 in CHW order, divided by
// sqrt(max(sum x^2, eps)). x and y may be the same float32 buffer when h = w = 1.
void l2norm_rows(const NhwcView& x, double eps, float* y, int threads);

}  // namespace facenet
