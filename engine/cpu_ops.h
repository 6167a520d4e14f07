// The fast CPU path's ops. Activations use the planar-batch layout "CNHW": channel-major,
// then image, row, column — so a channel slice of a batch is contiguous (concat branches
// write straight into their slice) and a 1x1 convolution of a whole batch is one GEMM.
#pragma once

#include <cstdint>
#include <vector>

namespace facenet {

struct PlanarDims {
  int64_t c, n, h, w;
  int64_t plane() const { return h * w; }
  int64_t size() const { return c * n * h * w; }
};

enum class PoolKind { max, avg, l2 };

// y[O][n*Ho*Wo] = W[O][C*k*k] * im2col(x) + bias, optionally ReLU'd. `col` is scratch
// (resized as needed; untouched for 1x1 stride-1 unpadded convs, which need no im2col).
void conv_gemm(const float* x, const PlanarDims& d, const float* w, const float* bias, int out,
               int kernel, int stride, int pad, bool relu, float* y, std::vector<float>& col);

// Winograd F(2x2, 3x3) for 3x3 stride-1 pad-1 convolutions: 2.25x fewer multiplications than
// im2col + GEMM (16 GEMMs of Cout x Cin x tiles instead of one of Cout x 9Cin x pixels).
// winograd_weights turns w [O][C][3][3] into U = G w G^T, laid out [16][O][C], once at load.
std::vector<float> winograd_weights(const float* w, int out, int in);
// Same contract as conv_gemm for kernel 3 / stride 1 / pad 1, with U from winograd_weights.
void conv_winograd_3x3(const float* x, const PlanarDims& d, const float* u, const float* bias,
                       int out, bool relu, float* y, std::vector<float>& scratch);

// Pools each of `planes` independent h x w planes (layout-agnostic). Max: padded cells never
// win; avg: divides by kernel^2; l2: sqrt of the window's sum of squares.
void pool_planes(const float* x, int64_t planes, int64_t h, int64_t w, int kernel, int stride,
                 int pad, PoolKind kind, float* y);

// Cross-channel LRN over CNHW data: channel c's values are the `per_channel` floats at
// x + c * per_channel. y_c = x_c / (k + alpha/size * sum_{|j-c|<=size/2} x_j^2)^beta.
void lrn_channels(const float* x, int64_t channels, int64_t per_channel, int size, float alpha,
                  float beta, float k, float* y);

// Copies `planes` h x w planes into H x W planes, centred (floor((H-h)/2) rows before), and
// zeroes the border.
void copy_centred(const float* x, int64_t planes, int64_t h, int64_t w, float* y, int64_t H,
                  int64_t W);

// y[out][n] = W[out][in] * x[in][n] + b.
void dense_gemm(const float* x, int64_t in, int64_t n, const float* w, const float* b, int64_t out,
                float* y);

// Columns of x[d][n] L2-normalised (x / sqrt(max(sum x^2, eps))), written as rows y[n][d].
void l2norm_columns(const float* x, int64_t d, int64_t n, double eps, float* y);

// y = a + b over CNHW data, optionally ReLU'd. y has dims max(a, b) per axis (same n); an
// element of the smaller input outside its extent counts as 0 (dlib's add_prev rule).
void add_padded(const float* a, const PlanarDims& da, const float* b, const PlanarDims& db,
                bool relu, float* y);

// Per-channel y = gamma_c * x + beta_c over CNHW data (`per_channel` floats per channel).
void affine_channels(const float* x, int64_t channels, int64_t per_channel, const float* gamma,
                     const float* beta, float* y);

// NCHW <-> CNHW for `n` images of c x h x w.
void nchw_to_cnhw(const float* x, int64_t n, int64_t c, int64_t hw, float* y);
void cnhw_to_nchw(const float* x, int64_t n, int64_t c, int64_t hw, float* y);

// Folds inference BatchNorm into the preceding conv/dense: w'[o] = w[o] * g/sqrt(v+eps),
// b'[o] = (b[o] - m) * g/sqrt(v+eps) + beta. `w` holds `out` rows of `per_out` weights.
void fold_batchnorm(std::vector<float>& w, std::vector<float>& b, int64_t per_out,
                    const float* gamma, const float* beta, const float* mean, const float* var,
                    double eps);

// Folds a per-channel affine (y = gamma * x + beta) into the preceding conv/dense:
// w'[o] = w[o] * gamma[o], b'[o] = b[o] * gamma[o] + beta[o].
void fold_affine(std::vector<float>& w, std::vector<float>& b, int64_t per_out, const float* gamma,
                 const float* beta);

}  // namespace facenet
