// cuDNN planning for the CUDA backend's convolutions: one conv's descriptors at one batch
// size, the algorithm chosen on the real buffers (the fused conv + bias + activation call
// where cuDNN accepts it), and the call that runs the plan.
#pragma once

#include <cstddef>
#include <cstdint>

#include "engine/backend/cuda/cudnn_util.h"
#include "engine/backend/lowering.h"
#include "kernels/inception_ops.h"

namespace facenet {

// Largest cuDNN workspace an algorithm may use (reserved once, shared by all convs).
constexpr std::size_t kConvWorkspaceLimit = std::size_t(128) << 20;

// One convolution's device operands at one batch size.
struct ConvOperands {
  TensorView4 x, y;         // input and output (arena views, maybe concat slices)
  const void* w = nullptr;  // filter in the compute dtype: [out][in][k][k] (NCHW), [out][k][k][in]
  const void* b = nullptr;  // bias [out] in the compute dtype
  // An unfused plan's epilogue, by the affine kernel: ones and the bias, [out] float32.
  const float* gamma = nullptr;
  const float* beta = nullptr;
  bool relu = false;
};

struct ConvPlan {
  UniqueTensorDesc x, y, bias;
  UniqueFilterDesc w;
  UniqueConvDesc conv;
  UniqueActivationDesc act;
  cudnnConvolutionFwdAlgo_t algo = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM;
  std::size_t workspace = 0;
  bool fused = true;  // cudnnConvolutionBiasActivationForward accepted this configuration
};

// Plans and runs convolutions on one cuDNN handle bound to the context's stream, using the
// context's workspace (reserve kConvWorkspaceLimit before planning).
class ConvPlanner {
 public:
  ConvPlanner(GpuContext& ctx, DType dtype, Layout layout);

  // The plan for conv step `s` at batch n, chosen by running cuDNN on `op`'s buffers (they
  // must hold defined data; y is overwritten). Throws facenet::Error naming the node when no
  // algorithm fits. An unfused plan (fused == false) needs op.gamma/beta to run.
  ConvPlan plan(const Step& s, int64_t n, const ConvOperands& op);

  // y = relu?(conv(x, w) + b), on the context's stream.
  void run(const ConvPlan& c, const ConvOperands& op);

 private:
  cudnnStatus_t run_fused(const ConvPlan& c, const ConvOperands& op);

  GpuContext& ctx_;
  DType dtype_;
  Layout layout_;
  UniqueCudnn cudnn_;
};

}  // namespace facenet
