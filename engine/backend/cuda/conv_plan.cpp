// cuDNN planning for the CUDA backend's convolutions (conv_plan.h): descriptors, the
// algorithm search on the real buffers, the fused call or its unfused fallback.
#include "engine/backend/cuda/conv_plan.h"

#include "engine/core/cuda_util.h"
#include "engine/core/error.h"

namespace facenet {
namespace {

cudnnDataType_t cudnn_type(DType t) {
  switch (t) {
    case DType::kFloat32:
      return CUDNN_DATA_FLOAT;
    case DType::kFloat16:
      return CUDNN_DATA_HALF;
    case DType::kBFloat16:
      return CUDNN_DATA_BFLOAT16;
  }
  return CUDNN_DATA_FLOAT;
}

void set_desc(cudnnTensorDescriptor_t d, const TensorView4& v) {
  FN_GPU_CHECK(cudnnSetTensor4dDescriptorEx(
      d, cudnn_type(v.dtype), static_cast<int>(v.n), static_cast<int>(v.c), static_cast<int>(v.h),
      static_cast<int>(v.w), static_cast<int>(v.sn), static_cast<int>(v.sc), static_cast<int>(v.sh),
      static_cast<int>(v.sw)));
}

}  // namespace

ConvPlanner::ConvPlanner(GpuContext& ctx, DType dtype, Layout layout)
    : ctx_(ctx), dtype_(dtype), layout_(layout), cudnn_(make_cudnn(ctx.stream())) {}

ConvPlan ConvPlanner::plan(const Step& s, int64_t n, const ConvOperands& op) {
  ConvPlan c;
  c.x = make_tensor_desc(), c.y = make_tensor_desc(), c.bias = make_tensor_desc();
  c.w = make_filter_desc(), c.conv = make_conv_desc(), c.act = make_activation_desc();
  set_desc(c.x.get(), op.x);
  set_desc(c.y.get(), op.y);
  FN_GPU_CHECK(cudnnSetTensor4dDescriptor(c.bias.get(), CUDNN_TENSOR_NCHW, cudnn_type(dtype_), 1,
                                          s.out, 1, 1));
  FN_GPU_CHECK(
      cudnnSetFilter4dDescriptor(c.w.get(), cudnn_type(dtype_),
                                 layout_ == Layout::kNchw ? CUDNN_TENSOR_NCHW : CUDNN_TENSOR_NHWC,
                                 s.out, s.in, s.kernel, s.kernel));
  FN_GPU_CHECK(cudnnSetConvolution2dDescriptor(c.conv.get(), s.pad, s.pad, s.stride, s.stride, 1, 1,
                                               CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
  // fp32 must not silently become TF32 (10-bit mantissa): FMA math only. Half types use
  // tensor cores with float accumulation.
  const cudnnMathType_t math = dtype_ == DType::kFloat32 ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH;
  FN_GPU_CHECK(cudnnSetConvolutionMathType(c.conv.get(), math));
  FN_GPU_CHECK(cudnnSetActivationDescriptor(
      c.act.get(), s.relu ? CUDNN_ACTIVATION_RELU : CUDNN_ACTIVATION_IDENTITY,
      CUDNN_NOT_PROPAGATE_NAN, 0.0));

  void* ws = ctx_.workspace(kConvWorkspaceLimit);
  constexpr int kMaxAlgos = CUDNN_CONVOLUTION_FWD_ALGO_COUNT;
  cudnnConvolutionFwdAlgoPerf_t perf[kMaxAlgos];
  int found = 0;
  FN_GPU_CHECK(cudnnFindConvolutionForwardAlgorithmEx(
      cudnn_.get(), c.x.get(), op.x.data, c.w.get(), op.w, c.conv.get(), c.y.get(), op.y.data,
      kMaxAlgos, &found, perf, ws, kConvWorkspaceLimit));
  // Fastest first. The fused call supports fewer configurations than plain convolution
  // (IDENTITY activation only with IMPLICIT_PRECOMP_GEMM; some dtype/stride combinations):
  // try it with each candidate on the real buffers and keep the first that runs; without
  // one, fall back to the fastest plain convolution, its bias (+ ReLU) then added by the
  // affine kernel (run()).
  bool chosen = false;
  int first_ok = -1;
  for (int k = 0; k < found && !chosen; ++k) {
    if (perf[k].status != CUDNN_STATUS_SUCCESS || perf[k].memory > kConvWorkspaceLimit) continue;
    if (first_ok < 0) first_ok = k;
    if (dtype_ != DType::kFloat32)
      FN_GPU_CHECK(cudnnSetConvolutionMathType(c.conv.get(), perf[k].mathType));
    c.algo = perf[k].algo;
    c.workspace = kConvWorkspaceLimit;  // reserved anyway; Find measured the plain convolution
    chosen = run_fused(c, op) == CUDNN_STATUS_SUCCESS;
  }
  if (chosen) return c;
  if (first_ok < 0)
    fail("node '", s.output, "': cuDNN found no convolution algorithm for batch ", n, " (",
         dtype_name(dtype_), ")");
  if (dtype_ != DType::kFloat32)
    FN_GPU_CHECK(cudnnSetConvolutionMathType(c.conv.get(), perf[first_ok].mathType));
  c.algo = perf[first_ok].algo;
  c.workspace = perf[first_ok].memory;
  c.fused = false;
  return c;
}

cudnnStatus_t ConvPlanner::run_fused(const ConvPlan& c, const ConvOperands& op) {
  const float one = 1.0f, zero = 0.0f;
  return cudnnConvolutionBiasActivationForward(
      cudnn_.get(), &one, c.x.get(), op.x.data, c.w.get(), op.w, c.conv.get(), c.algo,
      ctx_.workspace(c.workspace), c.workspace, &zero, c.y.get(), op.y.data, c.bias.get(), op.b,
      c.act.get(), c.y.get(), op.y.data);
}

void ConvPlanner::run(const ConvPlan& c, const ConvOperands& op) {
  if (c.fused) {
    FN_GPU_CHECK(run_fused(c, op));
    return;
  }
  const float one = 1.0f, zero = 0.0f;
  FN_GPU_CHECK(cudnnConvolutionForward(cudnn_.get(), &one, c.x.get(), op.x.data, c.w.get(), op.w,
                                       c.conv.get(), c.algo, ctx_.workspace(c.workspace),
                                       c.workspace, &zero, c.y.get(), op.y.data));
  launch_affine(op.y, op.gamma, op.beta, op.relu, op.y, ctx_.stream());  // in place
}

}  // namespace facenet
