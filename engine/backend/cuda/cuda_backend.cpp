// CUDA backend: the lowered plan (engine/backend/lowering.h) on cuDNN and our kernels. Load:
// the shared lowering folds BatchNorm/affine into convs, fuses ReLU into cuDNN's conv epilogue
// (or into the affine / residual-add kernel), fuses global avg pool + dense + L2 norm into one
// head kernel, and lays every value out in one activation arena by lifetime (concat inputs of
// full size live in their channel slice of the concat: no copy); weights are uploaded in the
// compute dtype/layout. Per batch size (first call): cuDNN algorithms found on the real
// buffers, workspace reserved, then the forward captured in a CUDA graph and replayed. No
// allocation on the per-batch path.
// The legacy cuDNN entry points used here (cudnnConvolutionBiasActivationForward, Find) are
// marked deprecated in cuDNN 9 in favour of the graph API; they remain supported and are the
// simplest obviously-correct route, so the warnings are silenced for this file only.
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

#include "engine/backend/cuda/cuda_backend.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>

#include "engine/backend/cuda/cudnn_util.h"
#include "engine/backend/lowering.h"
#include "engine/core/error.h"
#include "engine/image/image_io.h"
#include "kernels/inception_ops.h"

namespace facenet {

void gpu_check(cudnnStatus_t status, const char* stmt, const char* file, int line) {
  if (status == CUDNN_STATUS_SUCCESS) return;
  fail("cuDNN error '", cudnnGetErrorString(status), "' in ", stmt, " at ", file, ":", line);
}

UniqueCudnn make_cudnn(cudaStream_t stream) {
  cudnnHandle_t h = nullptr;
  FN_GPU_CHECK(cudnnCreate(&h));
  UniqueCudnn owner(h);
  FN_GPU_CHECK(cudnnSetStream(h, stream));
  return owner;
}

#define FN_CUDNN_MAKER(Type, Fn, Create) \
  Type Fn() {                            \
    Type::pointer p = nullptr;           \
    FN_GPU_CHECK(Create(&p));            \
    return Type(p);                      \
  }
FN_CUDNN_MAKER(UniqueTensorDesc, make_tensor_desc, cudnnCreateTensorDescriptor)
FN_CUDNN_MAKER(UniqueFilterDesc, make_filter_desc, cudnnCreateFilterDescriptor)
FN_CUDNN_MAKER(UniqueConvDesc, make_conv_desc, cudnnCreateConvolutionDescriptor)
FN_CUDNN_MAKER(UniqueActivationDesc, make_activation_desc, cudnnCreateActivationDescriptor)
#undef FN_CUDNN_MAKER

namespace {

// Largest cuDNN workspace an algorithm may use (reserved once, shared by all convs).
constexpr std::size_t kWorkspaceLimit = std::size_t(128) << 20;
// Arena slots are aligned to this many elements per image (x n images stays aligned).
constexpr int64_t kSlotAlign = 64;

struct GraphExecDeleter {
  void operator()(cudaGraphExec_t g) const noexcept { cudaGraphExecDestroy(g); }
};
using UniqueGraphExec = std::unique_ptr<std::remove_pointer_t<cudaGraphExec_t>, GraphExecDeleter>;

DType parse_precision(const std::string& p) {
  if (p == "fp32") return DType::kFloat32;
  if (p == "fp16") return DType::kFloat16;
  if (p == "bf16") return DType::kBFloat16;
  fail("--precision '", p, "' is not one of fp32, fp16, bf16");
}

Layout parse_layout(const std::string& l, DType dtype) {
  if (l == "nchw") return Layout::kNchw;
  if (l == "nhwc") return Layout::kNhwc;
  if (l == "auto" || l.empty()) return dtype == DType::kFloat32 ? Layout::kNchw : Layout::kNhwc;
  fail("layout '", l, "' is not one of auto, nchw, nhwc");
}

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

// Host float32 values -> raw bytes of `dtype`.
std::vector<unsigned char> to_dtype(const std::vector<float>& v, DType dtype) {
  std::vector<unsigned char> out(v.size() * dtype_size(dtype));
  for (size_t i = 0; i < v.size(); ++i) {
    if (dtype == DType::kFloat32) {
      std::memcpy(out.data() + 4 * i, &v[i], 4);
    } else if (dtype == DType::kFloat16) {
      const __half h = __float2half_rn(v[i]);
      std::memcpy(out.data() + 2 * i, &h, 2);
    } else {
      const __nv_bfloat16 h = __float2bfloat16_rn(v[i]);
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
  }
  return out;
}

// On `stream`: the context's stream is non-blocking, so a copy on the legacy default stream
// would not be ordered before the kernels that read the weights.
template <typename T>
DeviceBuffer<T> upload(const std::vector<T>& host, cudaStream_t stream) {
  DeviceBuffer<T> d(host.size());
  d.upload(host.data(), host.size(), stream);
  return d;
}

// A lowered step's device data: conv weights [out][in][k][k] (or [out][k][k][in] for NHWC)
// and bias in the compute dtype; affine gamma/beta (and, for a conv cuDNN runs unfused, ones
// and the conv's bias) in float32; the head's dense weight transposed [in][out] and bias.
struct DeviceStep {
  DeviceBuffer<unsigned char> w, b;
  DeviceBuffer<float> gamma, beta;
  DeviceBuffer<float> head_wt, head_b;
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

struct Plan {
  int64_t n = 0;
  std::map<size_t, ConvPlan> convs;  // by step index
  UniqueGraphExec graph;
  int generation = -1;  // arena/workspace generation the graph was captured against
  int eager_runs = 0;
  bool graph_failed = false;
};

class CudaStaging;

class CudaBackendImpl final : public CudaBackend {
 public:
  CudaBackendImpl(const Model& m, const BackendOptions& opt)
      : graph_(m.graph),
        dtype_(parse_precision(opt.precision)),
        layout_(parse_layout(opt.layout, dtype_)),
        use_graphs_(opt.cuda_graphs),
        ctx_(0),
        cudnn_(make_cudnn(ctx_.stream())),
        g_(lower(m, cuda_fusions(), kSlotAlign)) {
    require_supported(g_, "cuda", [&](const Step& s) { return why_not(s); });
    upload_steps();
    in_per_image_ = element_count(graph_.input_shape);
    out_dim_ = g_.output_dim();
  }
  ~CudaBackendImpl() override;  // after CudaStaging, which the staging cache holds

  std::string name() const override {
    return std::string("cuda ") + dtype_name(dtype_) +
           (layout_ == Layout::kNchw ? " nchw" : " nhwc");
  }

  void forward(const float* x, int64_t n, float* y) override {
    if (n <= 0) return;
    Plan& p = plan_covering(n);
    upload_input(x, n);
    execute(p);
    download_output(y, n);
  }

  void forward_bgr8(const uint8_t* bgr, int64_t n, float* y) override {
    if (n <= 0) return;
    Plan& p = plan_covering(n);
    const Shape& s = graph_.input_shape;
    staging_u8_.resize(std::max(staging_u8_.size(), static_cast<size_t>(n * s[1] * s[2] * 3)));
    staging_u8_.upload(bgr, n * s[1] * s[2] * 3, ctx_.stream());
    convert_bgr8(staging_u8_.data(), n);
    execute(p);
    download_output(y, n);
  }

  // Hands out the cached slots when they fit (same slot count, capacity at least this), so
  // repeated encode_files calls allocate no pinned memory; otherwise allocates new ones.
  std::unique_ptr<StagedEncoder> make_staged_encoder(int slots, int64_t capacity) override;
  // A returned encoder's slots, drained: kept unless the cached set has as many slots and
  // holds more images.
  void return_staging(std::unique_ptr<CudaStaging> staging);
  // Device bytes held by live staged encoders (CudaStaging's constructor and destructor).
  void count_staging_bytes(int64_t delta) { staging_dev_bytes_ += delta; }

  // The staged path's device half (CudaStaging::submit), on the compute stream: once
  // `uploaded` has fired, dev_bgr's n images -> model input, record `consumed` (dev_bgr may
  // be refilled after it), forward, n x out_dim floats -> y (pinned host), record `done`.
  void enqueue_bgr8(const uint8_t* dev_bgr, int64_t n, cudaEvent_t uploaded, cudaEvent_t consumed,
                    float* y, cudaEvent_t done) {
    Plan& p = plan_covering(n);
    cudaStream_t st = ctx_.stream();
    FN_GPU_CHECK(cudaStreamWaitEvent(st, uploaded, 0));
    convert_bgr8(dev_bgr, n);
    FN_GPU_CHECK(cudaEventRecord(consumed, st));
    execute(p);
    output_.download(y, static_cast<size_t>(out_dim_ * n), st);
    FN_GPU_CHECK(cudaEventRecord(done, st));
  }

  int64_t bgr8_image_bytes() const { return graph_.input_shape[1] * graph_.input_shape[2] * 3; }
  int64_t embedding_dim() const { return out_dim_; }

  void prepare(int64_t n, const float* x) override {
    Plan& p = plan_for(n);
    upload_input(x, n);
    execute(p);  // eager: loads cuDNN's kernels before any capture
    execute(p);  // captures the CUDA graph (when enabled)
    ctx_.synchronize();
  }

  void forward_resident(int64_t n) override { execute(plan_for(n)); }

  cudaStream_t stream() const override { return ctx_.stream(); }

  std::vector<int64_t> planned_batches() const override {
    std::vector<int64_t> sizes;
    for (const auto& [n, plan] : plans_) sizes.push_back(n);
    return sizes;
  }

  std::size_t device_bytes() const override {
    return weight_bytes_ + arena_.bytes() + input_.bytes() + output_.bytes() +
           staging_f32_.bytes() + staging_u8_.bytes() + workspace_bytes_ +
           static_cast<std::size_t>(staging_dev_bytes_);
  }

 private:
  // ---- load: the lowered steps' weights on the device --------------------------------------
  static Fusions cuda_fusions() {
    Fusions f;
    f.global_pool_dense = true;  // launch_pooled_dense_head
    f.concat_slices = true;      // cuDNN writes strided channel slices
    return f;
  }

  std::string why_not(const Step& s) const {
    switch (s.op) {
      case StepOp::kDense: {
        if (s.output != graph_.output) return "a dense layer other than the output head";
        if (s.relu) return "ReLU after the dense head";
        const Shape& in = g_.shape(s.inputs[0]);
        if (!s.global_pool && (in[1] != 1 || in[2] != 1))
          return "a dense layer whose input is not 1x1 (after a global average pool)";
        return "";
      }
      case StepOp::kL2Norm:
        return "an l2norm not fused into the dense head";
      case StepOp::kConv:
        if (!s.residual.empty()) return "a fused residual add (not asked for)";
        return "";
      default:
        return "";
    }
  }

  // Uploads every step's parameters and drops their host copies, except the conv biases
  // that an unfused conv needs at planning (the lowering's copies are not needed again).
  void upload_steps() {
    dev_.resize(g_.steps.size());
    for (size_t i = 0; i < g_.steps.size(); ++i) {
      Step& s = g_.steps[i];
      DeviceStep& d = dev_[i];
      switch (s.op) {
        case StepOp::kConv: {
          const std::vector<float> w =
              layout_ == Layout::kNhwc ? kcrs_to_krsc(s.w, s.out, s.in, s.kernel) : s.w;
          d.w = upload(to_dtype(w, dtype_), ctx_.stream());
          d.b = upload(to_dtype(s.b, dtype_), ctx_.stream());
          weight_bytes_ += d.w.bytes() + d.b.bytes();
          break;
        }
        case StepOp::kAffine:
          d.gamma = upload(s.w, ctx_.stream());
          d.beta = upload(s.b, ctx_.stream());
          weight_bytes_ += d.gamma.bytes() + d.beta.bytes();
          break;
        case StepOp::kDense: {
          FN_ASSERT(static_cast<size_t>(s.in) * s.out == s.w.size());
          std::vector<float> wt(s.w.size());  // [out][in] -> [in][out]
          for (int o = 0; o < s.out; ++o)
            for (int c = 0; c < s.in; ++c)
              wt[static_cast<size_t>(c) * s.out + o] = s.w[static_cast<size_t>(o) * s.in + c];
          d.head_wt = upload(wt, ctx_.stream());
          d.head_b = upload(s.b, ctx_.stream());
          weight_bytes_ += d.head_wt.bytes() + d.head_b.bytes();
          break;
        }
        default:
          break;
      }
      s.w = {};
      if (s.op != StepOp::kConv) s.b = {};
    }
  }

  static std::vector<float> kcrs_to_krsc(const std::vector<float>& w, int k, int c, int r) {
    std::vector<float> out(w.size());
    for (int o = 0; o < k; ++o)
      for (int i = 0; i < c; ++i)
        for (int p = 0; p < r * r; ++p) out[(o * r * r + p) * c + i] = w[(o * c + i) * r * r + p];
    return out;
  }

  // ---- views ---------------------------------------------------------------------------------
  TensorView4 input_view(int64_t n) {
    const Shape& s = graph_.input_shape;
    return packed_view(input_.data(), dtype_, layout_, n, s[0], s[1], s[2], s[0], 0);
  }

  TensorView4 view(const std::string& value, int64_t n) {
    const Placement& p = g_.placement.at(value);
    if (p.slot < 0) return input_view(n);
    const Slot& slot = g_.slots[p.slot];
    const Shape& s = g_.shape(value);
    void* base = arena_.data() + slot.offset * n * static_cast<int64_t>(dtype_size(dtype_));
    return packed_view(base, dtype_, layout_, n, s[0], s[1], s[2], slot.c, p.c0);
  }

  TensorView4 f32_nchw(float* data, int64_t n, const Shape& s) {
    return packed_view(data, DType::kFloat32, Layout::kNchw, n, s[0], s[1], s[2], s[0], 0);
  }

  // ---- per batch size: plan ------------------------------------------------------------------
  // The plan that runs n images: every image is independent of the others, so a plan for
  // more images computes the first n exactly and the rest (stale input) is ignored. Planning
  // costs a cuDNN search per convolution and a graph capture, which a service that encodes
  // one request at a time must not pay for every new tail size: an existing plan of at most
  // 2n images is reused; otherwise a batch larger than any planned so far gets its own exact
  // plan (the full batches), a smaller one the next power of two (tails). So at most about
  // log2(batch) tail plans ever exist.
  Plan& plan_covering(int64_t n) {
    auto it = plans_.lower_bound(n);
    if (it != plans_.end() && it->first <= 2 * n) return *it->second;
    if (plans_.empty() || n > plans_.rbegin()->first) return plan_for(n);
    int64_t size = 1;
    while (size < n) size *= 2;
    return plan_for(size);
  }

  // The plan for exactly n images (built on first use).
  Plan& plan_for(int64_t n) {
    auto it = plans_.find(n);
    if (it != plans_.end()) return *it->second;
    // Queued work (a pipelined batch) may still use the buffers that planning writes or moves.
    ctx_.synchronize();
    ensure_capacity(n);
    auto plan = std::make_unique<Plan>();
    plan->n = n;
    for (size_t i = 0; i < g_.steps.size(); ++i)
      if (g_.steps[i].op == StepOp::kConv) plan->convs[i] = plan_conv(i, n);
    ctx_.synchronize();
    return *(plans_[n] = std::move(plan));
  }

  // Arena and I/O buffers for n images; growing them moves every pointer, so all captured
  // graphs are invalidated (re-captured on next use).
  void ensure_capacity(int64_t n) {
    if (n <= capacity_) return;
    const std::size_t es = dtype_size(dtype_);
    arena_.resize(static_cast<std::size_t>(g_.arena_per_image * n) * es);
    input_.resize(static_cast<std::size_t>(in_per_image_ * n) * es);
    output_.resize(static_cast<std::size_t>(out_dim_ * n));
    // Defined contents: planning runs cuDNN on them, and a tail plan reads images past n.
    FN_GPU_CHECK(cudaMemsetAsync(arena_.data(), 0, arena_.bytes(), ctx_.stream()));
    FN_GPU_CHECK(cudaMemsetAsync(input_.data(), 0, input_.bytes(), ctx_.stream()));
    capacity_ = n;
    ++generation_;
  }

  void reserve_workspace(std::size_t bytes) {
    if (bytes <= workspace_bytes_) return;
    ctx_.reserve(bytes);
    workspace_bytes_ = bytes;
    ++generation_;
  }

  static void set_desc(cudnnTensorDescriptor_t d, const TensorView4& v) {
    FN_GPU_CHECK(cudnnSetTensor4dDescriptorEx(
        d, cudnn_type(v.dtype), static_cast<int>(v.n), static_cast<int>(v.c), static_cast<int>(v.h),
        static_cast<int>(v.w), static_cast<int>(v.sn), static_cast<int>(v.sc),
        static_cast<int>(v.sh), static_cast<int>(v.sw)));
  }

  ConvPlan plan_conv(size_t step, int64_t n) {
    const Step& s = g_.steps[step];
    DeviceStep& d = dev_[step];
    ConvPlan c;
    c.x = make_tensor_desc(), c.y = make_tensor_desc(), c.bias = make_tensor_desc();
    c.w = make_filter_desc(), c.conv = make_conv_desc(), c.act = make_activation_desc();
    const TensorView4 xv = view(s.inputs[0], n), yv = view(s.output, n);
    set_desc(c.x.get(), xv);
    set_desc(c.y.get(), yv);
    FN_GPU_CHECK(cudnnSetTensor4dDescriptor(c.bias.get(), CUDNN_TENSOR_NCHW, cudnn_type(dtype_), 1,
                                            s.out, 1, 1));
    FN_GPU_CHECK(
        cudnnSetFilter4dDescriptor(c.w.get(), cudnn_type(dtype_),
                                   layout_ == Layout::kNchw ? CUDNN_TENSOR_NCHW : CUDNN_TENSOR_NHWC,
                                   s.out, s.in, s.kernel, s.kernel));
    FN_GPU_CHECK(cudnnSetConvolution2dDescriptor(c.conv.get(), s.pad, s.pad, s.stride, s.stride, 1,
                                                 1, CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    // fp32 must not silently become TF32 (10-bit mantissa): FMA math only. Half types use
    // tensor cores with float accumulation.
    const cudnnMathType_t math = dtype_ == DType::kFloat32 ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH;
    FN_GPU_CHECK(cudnnSetConvolutionMathType(c.conv.get(), math));
    FN_GPU_CHECK(cudnnSetActivationDescriptor(
        c.act.get(), s.relu ? CUDNN_ACTIVATION_RELU : CUDNN_ACTIVATION_IDENTITY,
        CUDNN_NOT_PROPAGATE_NAN, 0.0));

    reserve_workspace(kWorkspaceLimit);
    void* ws = ctx_.workspace(kWorkspaceLimit);
    constexpr int kMaxAlgos = CUDNN_CONVOLUTION_FWD_ALGO_COUNT;
    cudnnConvolutionFwdAlgoPerf_t perf[kMaxAlgos];
    int found = 0;
    FN_GPU_CHECK(cudnnFindConvolutionForwardAlgorithmEx(
        cudnn_.get(), c.x.get(), xv.data, c.w.get(), d.w.data(), c.conv.get(), c.y.get(), yv.data,
        kMaxAlgos, &found, perf, ws, kWorkspaceLimit));
    // Fastest first. The fused call supports fewer configurations than plain convolution
    // (IDENTITY activation only with IMPLICIT_PRECOMP_GEMM; some dtype/stride combinations):
    // try it with each candidate on the real buffers and keep the first that runs; without
    // one, fall back to convolution + bias add + activation as three cuDNN calls.
    const ConvPlan* chosen = nullptr;
    int first_ok = -1;
    for (int k = 0; k < found && !chosen; ++k) {
      if (perf[k].status != CUDNN_STATUS_SUCCESS || perf[k].memory > kWorkspaceLimit) continue;
      if (first_ok < 0) first_ok = k;
      if (dtype_ != DType::kFloat32)
        FN_GPU_CHECK(cudnnSetConvolutionMathType(c.conv.get(), perf[k].mathType));
      c.algo = perf[k].algo;
      c.workspace = kWorkspaceLimit;  // reserved anyway; Find measured the plain convolution
      if (run_fused(c, d, xv.data, yv.data) == CUDNN_STATUS_SUCCESS) chosen = &c;
    }
    if (!chosen) {
      if (first_ok < 0)
        fail("node '", s.output, "': cuDNN found no convolution algorithm for batch ", n, " (",
             dtype_name(dtype_), ")");
      if (dtype_ != DType::kFloat32)
        FN_GPU_CHECK(cudnnSetConvolutionMathType(c.conv.get(), perf[first_ok].mathType));
      c.algo = perf[first_ok].algo;
      c.workspace = perf[first_ok].memory;
      c.fused = false;
      // Bias (+ ReLU) by the affine kernel, which takes every dtype and strided slice; run the
      // sequence once now so that a refusal names this node at planning, not mid-batch.
      if (!d.gamma.data()) {
        d.gamma = upload(std::vector<float>(s.out, 1.0f), ctx_.stream());
        d.beta = upload(s.b, ctx_.stream());
        weight_bytes_ += d.gamma.bytes() + d.beta.bytes();
      }
      run_conv(c, step, n);
    }
    return c;
  }

  cudnnStatus_t run_fused(const ConvPlan& c, const DeviceStep& d, const void* x, void* y) {
    const float one = 1.0f, zero = 0.0f;
    return cudnnConvolutionBiasActivationForward(
        cudnn_.get(), &one, c.x.get(), x, c.w.get(), d.w.data(), c.conv.get(), c.algo,
        ctx_.workspace(c.workspace), c.workspace, &zero, c.y.get(), y, c.bias.get(), d.b.data(),
        c.act.get(), c.y.get(), y);
  }

  void run_conv(const ConvPlan& c, size_t step, int64_t n) {
    const Step& s = g_.steps[step];
    const DeviceStep& d = dev_[step];
    const void* x = view(s.inputs[0], n).data;
    void* y = view(s.output, n).data;
    if (c.fused) {
      FN_GPU_CHECK(run_fused(c, d, x, y));
      return;
    }
    const float one = 1.0f, zero = 0.0f;
    FN_GPU_CHECK(cudnnConvolutionForward(cudnn_.get(), &one, c.x.get(), x, c.w.get(), d.w.data(),
                                         c.conv.get(), c.algo, ctx_.workspace(c.workspace),
                                         c.workspace, &zero, c.y.get(), y));
    const TensorView4 yv = view(s.output, n);
    launch_affine(yv, d.gamma.data(), d.beta.data(), s.relu, yv, ctx_.stream());  // in place
  }

  // ---- per batch: run --------------------------------------------------------------------------
  void run_steps(Plan& p) {
    const int64_t n = p.n;
    cudaStream_t st = ctx_.stream();
    for (size_t i = 0; i < g_.steps.size(); ++i) {
      const Step& s = g_.steps[i];
      const DeviceStep& d = dev_[i];
      switch (s.op) {
        case StepOp::kConv:
          run_conv(p.convs.at(i), i, n);
          break;
        case StepOp::kPool:
          launch_pool2d(view(s.inputs[0], n), view(s.output, n), s.pool, s.kernel, s.stride, s.pad,
                        st);
          break;
        case StepOp::kLrn:
          launch_lrn(view(s.inputs[0], n), view(s.output, n), s.lrn_size,
                     static_cast<float>(s.lrn_alpha), static_cast<float>(s.lrn_beta),
                     static_cast<float>(s.lrn_k), st);
          break;
        case StepOp::kConcat:
          run_concat(s, n);
          break;
        case StepOp::kDense:  // why_not: the output head, over a whole map or a 1x1 one
          launch_pooled_dense_head(view(s.inputs[0], n), d.head_wt.data(), d.head_b.data(), s.out,
                                   s.l2norm, static_cast<float>(s.eps), output_.data(), st);
          break;
        case StepOp::kAffine:
          launch_affine(view(s.inputs[0], n), d.gamma.data(), d.beta.data(), s.relu,
                        view(s.output, n), st);
          break;
        case StepOp::kAdd:
          launch_add_padded(view(s.inputs[0], n), view(s.inputs[1], n), s.relu, view(s.output, n),
                            st);
          break;
        case StepOp::kL2Norm:
          FN_ASSERT(false);  // why_not rejects it at load
      }
    }
    if (g_.output_in_arena)  // a truncated graph: export the value
      launch_copy_centred(view(graph_.output, n),
                          f32_nchw(output_.data(), n, g_.shape(graph_.output)), st);
  }

  // Inputs aliased into this concat's slot are already in place; the rest (smaller maps, or
  // values already living in another concat) are copied, centred, into their slice.
  void run_concat(const Step& s, int64_t n) {
    const Placement& out = g_.placement.at(s.output);
    const Shape& os = g_.shape(s.output);
    const Slot& slot = g_.slots[out.slot];
    void* base = arena_.data() + slot.offset * n * static_cast<int64_t>(dtype_size(dtype_));
    int64_t c0 = 0;
    for (const auto& in : s.inputs) {
      const Shape& is = g_.shape(in);
      const Placement& p = g_.placement.at(in);
      if (!(p.slot == out.slot && p.c0 == c0))
        launch_copy_centred(view(in, n),
                            packed_view(base, dtype_, layout_, n, is[0], os[1], os[2], slot.c, c0),
                            ctx_.stream());
      c0 += is[0];
    }
  }

  void execute(Plan& p) {
    cudaStream_t st = ctx_.stream();
    if (p.graph && p.generation == generation_) {
      FN_GPU_CHECK(cudaGraphLaunch(p.graph.get(), st));
      return;
    }
    if (use_graphs_ && !p.graph_failed && p.eager_runs > 0 && capture(p)) {
      FN_GPU_CHECK(cudaGraphLaunch(p.graph.get(), st));
      return;
    }
    run_steps(p);
    ++p.eager_runs;
  }

  // Records run_steps into a CUDA graph. On failure (a library call that refuses capture)
  // the plan stays eager: correct, only slower — reported once on stderr.
  bool capture(Plan& p) {
    cudaStream_t st = ctx_.stream();
    cudaGraph_t g = nullptr;
    std::string why;
    FN_GPU_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    try {
      run_steps(p);
    } catch (const Error& e) {
      why = e.what();
    } catch (...) {  // not a refusal to capture: leave the stream usable, then report it
      if (cudaStreamEndCapture(st, &g) == cudaSuccess && g) cudaGraphDestroy(g);
      cudaGetLastError();
      throw;
    }
    const cudaError_t end = cudaStreamEndCapture(st, &g);
    cudaGraphExec_t exec = nullptr;
    if (why.empty() && end == cudaSuccess) {
      const cudaError_t inst = cudaGraphInstantiate(&exec, g, 0);
      if (inst != cudaSuccess) why = cudaGetErrorString(inst);
    } else if (why.empty()) {
      why = cudaGetErrorString(end);
    }
    if (g) cudaGraphDestroy(g);
    if (!why.empty()) {
      cudaGetLastError();
      p.graph_failed = true;
      std::fprintf(stderr,
                   "facenet: CUDA graph capture failed for batch %lld, running eagerly: %s\n",
                   static_cast<long long>(p.n), why.c_str());
      return false;
    }
    p.graph.reset(exec);
    p.generation = generation_;
    return true;
  }

  // ---- I/O -------------------------------------------------------------------------------------
  // n decoded images (n x H x W x 3 uint8 BGR, device) -> the model input, on the stream.
  void convert_bgr8(const uint8_t* dev_bgr, int64_t n) {
    const InputSpec spec = input_spec(graph_);  // the host path's rule: (v - mean_c) * scale
    launch_bgr8_to_input(dev_bgr, input_view(n), spec.mean.data(), spec.scale, spec.rgb,
                         ctx_.stream());
  }

  void upload_input(const float* x, int64_t n) {
    const int64_t count = in_per_image_ * n;
    if (dtype_ == DType::kFloat32 && layout_ == Layout::kNchw) {
      FN_GPU_CHECK(cudaMemcpyAsync(input_.data(), x, count * sizeof(float), cudaMemcpyHostToDevice,
                                   ctx_.stream()));
      return;
    }
    staging_f32_.resize(std::max(staging_f32_.size(), static_cast<size_t>(count)));
    staging_f32_.upload(x, count, ctx_.stream());
    launch_copy_centred(f32_nchw(staging_f32_.data(), n, graph_.input_shape), input_view(n),
                        ctx_.stream());
  }

  void download_output(float* y, int64_t n) {
    output_.download(y, static_cast<size_t>(out_dim_ * n), ctx_.stream());
    ctx_.synchronize();
  }

  Graph graph_;
  DType dtype_;
  Layout layout_;
  bool use_graphs_;
  GpuContext ctx_;
  UniqueCudnn cudnn_;
  LoweredGraph g_;
  std::vector<DeviceStep> dev_;  // per step of g_
  int64_t in_per_image_ = 0, out_dim_ = 0;
  std::size_t weight_bytes_ = 0, workspace_bytes_ = 0;

  int64_t capacity_ = 0;  // images the arena and I/O buffers hold
  int generation_ = 0;    // bumped whenever a buffer a graph captured may have moved
  DeviceBuffer<unsigned char> arena_, input_;
  DeviceBuffer<float> output_, staging_f32_;
  DeviceBuffer<uint8_t> staging_u8_;
  std::map<int64_t, std::unique_ptr<Plan>> plans_;
  int64_t staging_dev_bytes_ = 0;
  // Last: destroyed first, while the streams it synchronises still exist.
  std::unique_ptr<CudaStaging> staging_cache_;
};

// The staged 8-bit path. Per slot: pinned host input and output, a device copy of the input,
// three events. Uploads run on their own stream so that one slot's upload overlaps the
// forward of the batch before it; conversion, forward and download run on the backend's
// compute stream, which serialises every use of its one input/arena/output set:
//   copy stream:     wait consumed[s] -> H2D in[s] -> dev[s] -> record uploaded[s]
//   compute stream:  wait uploaded[s] -> convert dev[s] -> record consumed[s] -> forward
//                    -> D2H -> out[s] -> record done[s]
// wait(s) synchronises done[s], which follows the slot's upload and download: in[s] and
// out[s] are then the host's again. An event not yet recorded is complete, so a fresh slot
// neither waits nor blocks.
class CudaStaging final : public StagedEncoder {
 public:
  CudaStaging(CudaBackendImpl& backend, int slots, int64_t capacity)
      : backend_(backend),
        capacity_(capacity),
        image_bytes_(backend.bgr8_image_bytes()),
        copy_stream_(make_stream()) {
    if (slots < 1 || capacity < 1)
      fail("staged encoder: needs >= 1 slot of >= 1 image (got ", slots, " x ", capacity, ")");
    const auto images = static_cast<std::size_t>(capacity);
    slots_.reserve(slots);
    for (int i = 0; i < slots; ++i) {
      Slot s;
      s.in = PinnedBuffer<uint8_t>(images * image_bytes_);
      s.out = PinnedBuffer<float>(images * backend.embedding_dim());
      s.dev.resize(images * image_bytes_);
      s.uploaded = make_event(cudaEventDisableTiming);
      s.consumed = make_event(cudaEventDisableTiming);
      s.done = make_event(cudaEventDisableTiming);
      slots_.push_back(std::move(s));
    }
    for (const Slot& s : slots_) backend_.count_staging_bytes(static_cast<int64_t>(s.dev.bytes()));
  }

  // Nothing may still read or write a slot's buffers when they are freed (an exception can
  // leave work queued on either stream).
  ~CudaStaging() override {
    drain();
    for (const Slot& s : slots_) backend_.count_staging_bytes(-static_cast<int64_t>(s.dev.bytes()));
  }

  // Waits for everything queued on either stream (errors included: this also runs while an
  // exception unwinds, so it reports nothing).
  void drain() {
    cudaStreamSynchronize(copy_stream_.get());
    cudaStreamSynchronize(backend_.stream());
  }

  int slots() const override { return static_cast<int>(slots_.size()); }
  int64_t capacity() const override { return capacity_; }
  uint8_t* input(int slot) override { return slots_.at(slot).in.data(); }
  const float* output(int slot) const override { return slots_.at(slot).out.data(); }

  void submit(int slot, int64_t n) override {
    FN_ASSERT(n >= 1 && n <= capacity_);
    Slot& s = slots_.at(slot);
    cudaStream_t copy = copy_stream_.get();
    FN_GPU_CHECK(cudaStreamWaitEvent(copy, s.consumed.get(), 0));
    FN_GPU_CHECK(
        cudaMemcpyAsync(s.dev.data(), s.in.data(), n * image_bytes_, cudaMemcpyHostToDevice, copy));
    FN_GPU_CHECK(cudaEventRecord(s.uploaded.get(), copy));
    backend_.enqueue_bgr8(s.dev.data(), n, s.uploaded.get(), s.consumed.get(), s.out.data(),
                          s.done.get());
  }

  void wait(int slot) override { FN_GPU_CHECK(cudaEventSynchronize(slots_.at(slot).done.get())); }

 private:
  struct Slot {
    PinnedBuffer<uint8_t> in;
    PinnedBuffer<float> out;
    DeviceBuffer<uint8_t> dev;
    UniqueEvent uploaded, consumed, done;
  };

  CudaBackendImpl& backend_;
  const int64_t capacity_, image_bytes_;
  UniqueStream copy_stream_;
  std::vector<Slot> slots_;
};

// What make_staged_encoder returns: a CudaStaging on loan, given back to the backend's cache
// when the caller is done. Reports the capacity asked for, whatever the slots hold.
class StagingLease final : public StagedEncoder {
 public:
  StagingLease(CudaBackendImpl& backend, std::unique_ptr<CudaStaging> staging, int64_t capacity)
      : backend_(backend), staging_(std::move(staging)), capacity_(capacity) {}
  ~StagingLease() override { backend_.return_staging(std::move(staging_)); }

  int slots() const override { return staging_->slots(); }
  int64_t capacity() const override { return capacity_; }
  uint8_t* input(int slot) override { return staging_->input(slot); }
  const float* output(int slot) const override { return staging_->output(slot); }
  void submit(int slot, int64_t n) override {
    FN_ASSERT(n >= 1 && n <= capacity_);
    staging_->submit(slot, n);
  }
  void wait(int slot) override { staging_->wait(slot); }

 private:
  CudaBackendImpl& backend_;
  std::unique_ptr<CudaStaging> staging_;
  const int64_t capacity_;
};

std::unique_ptr<StagedEncoder> CudaBackendImpl::make_staged_encoder(int slots, int64_t capacity) {
  if (slots < 1 || capacity < 1)
    fail("staged encoder: needs >= 1 slot of >= 1 image (got ", slots, " x ", capacity, ")");
  std::unique_ptr<CudaStaging> staging;
  if (staging_cache_ && staging_cache_->slots() == slots && staging_cache_->capacity() >= capacity)
    staging = std::move(staging_cache_);
  else
    staging = std::make_unique<CudaStaging>(*this, slots, capacity);
  return std::make_unique<StagingLease>(*this, std::move(staging), capacity);
}

void CudaBackendImpl::return_staging(std::unique_ptr<CudaStaging> staging) {
  // The next user writes the pinned inputs straight away: nothing may still read them.
  staging->drain();
  if (!staging_cache_ || staging_cache_->slots() != staging->slots() ||
      staging_cache_->capacity() < staging->capacity())
    staging_cache_ = std::move(staging);
}

CudaBackendImpl::~CudaBackendImpl() {
  // forward_resident and the staged path return with work queued; nothing it uses may be
  // freed under it. Errors are not reported from a destructor.
  cudaStreamSynchronize(ctx_.stream());
  staging_cache_.reset();
}

}  // namespace

std::unique_ptr<CudaBackend> make_cuda_backend(const Model& model, const BackendOptions& options) {
  return std::make_unique<CudaBackendImpl>(model, options);
}

}  // namespace facenet
