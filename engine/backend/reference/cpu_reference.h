// The CPU reference: every op as straightforward loops over NCHW tensors with double
// accumulation, BatchNorm applied as its own op. Obviously right, slow: the test oracle.
#pragma once

#include <memory>

#include "engine/backend/backend.h"
#include "engine/core/tensor.h"

namespace facenet {

// x: [N, C, H, W]; w: [O, C, k, k]; b: [O]. Zero padding.
HostTensor conv2d_direct(const HostTensor& x, const HostTensor& w, const HostTensor& b, int stride,
                         int pad);
HostTensor batchnorm_direct(const HostTensor& x, const HostTensor& gamma, const HostTensor& beta,
                            const HostTensor& mean, const HostTensor& var, double eps);
HostTensor relu_direct(const HostTensor& x);
// Per-channel y = gamma_c * x + beta_c.
HostTensor affine_direct(const HostTensor& x, const HostTensor& gamma, const HostTensor& beta);
// y = a + b with output dims max(a, b) per axis; a missing element of the smaller input is 0
// (dlib's add_prev: the smaller tensor sits at the start of every axis).
HostTensor add_direct(const HostTensor& a, const HostTensor& b);
// Max pooling: padded cells never win. Average pooling divides by kernel^2 (padding counts
// as zeros). L2 pooling: sqrt of the window's sum of squares.
HostTensor maxpool_direct(const HostTensor& x, int kernel, int stride, int pad);
HostTensor avgpool_direct(const HostTensor& x, int kernel, int stride, int pad);
HostTensor l2pool_direct(const HostTensor& x, int kernel, int stride, int pad);
// Cross-channel LRN: y_c = x_c / (k + alpha/size * sum_{j=c-size/2..c+size/2} x_j^2)^beta.
HostTensor lrn_direct(const HostTensor& x, int size, double alpha, double beta, double k);
// Channel concatenation; smaller maps are zero-padded, centred (floor((H-h)/2) before).
HostTensor concat_direct(const std::vector<const HostTensor*>& xs);
// Flattens each image (C*H*W, CHW order) and applies y = W x + b; result [N, O, 1, 1].
HostTensor dense_direct(const HostTensor& x, const HostTensor& w, const HostTensor& b);
// y = x / sqrt(max(sum x^2, eps)) per image.
HostTensor l2norm_direct(const HostTensor& x, double eps);

std::unique_ptr<Backend> make_reference_backend(const Model& model);

}  // namespace facenet
