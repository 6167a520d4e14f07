// Launchers for the ops cuDNN has nothing good for: window pooling (max/avg/L2), cross-channel
// LRN, centred copy into a concat slice (also a dtype/layout conversion), uint8 BGR -> model
// input, the fused head (global avg pool + dense + L2 normalise), and the ResNet ops a conv
// cannot absorb: per-channel affine and the zero-padding residual add.
// Tensors are strided 4-D views, so the same kernels serve NCHW, NHWC and concat slices.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "engine/backend/pool_kind.h"
#include "engine/core/dtype.h"

namespace facenet {

// A non-owning view of an N x C x H x W tensor in device memory: element (n, c, h, w) lives
// at data + n*sn + c*sc + h*sh + w*sw (strides in elements, 64-bit).
struct TensorView4 {
  void* data = nullptr;
  DType dtype = DType::kFloat32;
  int64_t n = 0, c = 0, h = 0, w = 0;
  int64_t sn = 0, sc = 0, sh = 0, sw = 0;

  int64_t count() const { return n * c * h * w; }
};

enum class Layout { kNchw, kNhwc };

// Packed view of `dtype` data at `data` in `layout`, `c_total` channels per image of which
// this view covers [c0, c0 + c) — a concat slice when c < c_total.
TensorView4 packed_view(void* data, DType dtype, Layout layout, int64_t n, int64_t c, int64_t h,
                        int64_t w, int64_t c_total, int64_t c0);

// y = pool(x) per (n, c) plane; y's h/w must equal the floor-mode pooled size of x.
// max: padded cells never win; avg: sum / kernel^2 (padding counts as zero);
// l2: sqrt(sum of squares over the window). x and y share a dtype; accumulation in float.
void launch_pool2d(const TensorView4& x, const TensorView4& y, PoolKind kind, int kernel,
                   int stride, int pad, cudaStream_t stream);

// y_c = x_c / (k + alpha/size * sum_{|j-c|<=size/2, 0<=j<C} x_j^2)^beta (Torch convention).
void launch_lrn(const TensorView4& x, const TensorView4& y, int size, float alpha, float beta,
                float k, cudaStream_t stream);

// Copies x (n, c, h, w) into y (n, c, H, W), H >= h, W >= w, centred: floor((H-h)/2) rows and
// floor((W-w)/2) columns before; the border of y is zeroed. Converts dtype/layout on the way
// (x and y may differ in both), so it also stages inputs and exports outputs.
void launch_copy_centred(const TensorView4& x, const TensorView4& y, cudaStream_t stream);

// Model input from decoded images: bgr is n x height x width x 3 uint8 (HWC, BGR order, as
// OpenCV decodes); y[n][c][h][w] = (bgr[n][h][w][rgb ? 2-c : c] - mean[c]) * scale, in fp32
// as image_io's input rule computes it (mean per model channel, in 0..255 pixel units).
// y is n x 3 x h x w.
void launch_bgr8_to_input(const uint8_t* bgr, const TensorView4& y, const float mean[3],
                          float scale, bool rgb, cudaStream_t stream);

// The head: p = mean of x over its h x w window (global average pool), then
// e = W p + b, then, when l2norm, e / sqrt(max(|e|^2, eps)). wt is W transposed, [c][out]
// float32 (coalesced reads); b [out]; y: n x out float32, contiguous.
void launch_pooled_dense_head(const TensorView4& x, const float* wt, const float* b, int out,
                              bool l2norm, float eps, float* y, cudaStream_t stream);

// y_c = gamma_c * x_c + beta_c (dlib's affine layer in CONV mode), then max(y, 0) when relu.
// x and y may be the same tensor (in place).
// x and y share dtype and shape; gamma, beta: x.c float32 values in device memory.
void launch_affine(const TensorView4& x, const float* gamma, const float* beta, bool relu,
                   const TensorView4& y, cudaStream_t stream);

// y = a + b, then max(y, 0) when relu (dlib's add_prev, as the reference's add_direct): y has the
// larger extent of a and b on every axis (same n); an element of a or b beyond its own
// extent (missing channels at the end, missing rows/columns at the bottom/right) counts as 0.
// a, b and y share a dtype; any strides (NCHW, NHWC, slices); y must not overlap a or b.
void launch_add_padded(const TensorView4& a, const TensorView4& b, bool relu, const TensorView4& y,
                       cudaStream_t stream);

}  // namespace facenet
