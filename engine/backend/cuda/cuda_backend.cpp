// CUDA backend: the lowered plan (engine/backend/lowering.h) on cuDNN and our kernels, and the
// one switch that runs its steps. Load: the shared lowering folds BatchNorm/affine into convs,
// fuses ReLU into cuDNN's conv epilogue (or into the affine / residual-add kernel), fuses
// global avg pool + dense + L2 norm into one head kernel, and lays every value out in one
// activation arena by lifetime (concat inputs of full size live in their channel slice of the
// concat: no copy); weights are uploaded in the compute dtype/layout. Per batch size (first
// call): cuDNN algorithms found on the real buffers, workspace reserved, then the forward
// captured in a CUDA graph and replayed. No allocation on the per-batch path.
// The parts, one job a file: arena.h (device memory and views), conv_plan.h (cuDNN planning),
// graph_capture.h (CUDA graphs), staging.h (the staged 8-bit path).
#include "engine/backend/cuda/cuda_backend.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstring>
#include <map>

#include "engine/backend/cuda/arena.h"
#include "engine/backend/cuda/conv_plan.h"
#include "engine/backend/cuda/graph_capture.h"
#include "engine/backend/cuda/staging.h"
#include "engine/backend/lowering.h"
#include "engine/core/error.h"
#include "engine/image/image_io.h"
#include "kernels/inception_ops.h"

namespace facenet {
namespace {

// Arena slots are aligned to this many elements per image (x n images stays aligned).
constexpr int64_t kSlotAlign = 64;

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

std::vector<float> kcrs_to_krsc(const std::vector<float>& w, int k, int c, int r) {
  std::vector<float> out(w.size());
  for (int o = 0; o < k; ++o)
    for (int i = 0; i < c; ++i)
      for (int p = 0; p < r * r; ++p) out[(o * r * r + p) * c + i] = w[(o * c + i) * r * r + p];
  return out;
}

TensorView4 f32_nchw(float* data, int64_t n, const Shape& s) {
  return packed_view(data, DType::kFloat32, Layout::kNchw, n, s[0], s[1], s[2], s[0], 0);
}

// A lowered step's device data: conv weights [out][in][k][k] (or [out][k][k][in] for NHWC)
// and bias in the compute dtype; affine gamma/beta (and, for a conv cuDNN runs unfused, ones
// and the conv's bias) in float32; the head's dense weight transposed [in][out] and bias.
struct DeviceStep {
  DeviceBuffer<unsigned char> w, b;
  DeviceBuffer<float> gamma, beta;
  DeviceBuffer<float> head_wt, head_b;
};

// Everything planned for one batch size.
struct Plan {
  Plan(int64_t batch, bool use_graphs) : n(batch), forward(batch, use_graphs) {}
  int64_t n;
  std::map<size_t, ConvPlan> convs;  // by step index
  CapturedForward forward;
};

class CudaBackendImpl final : public CudaBackend, private StagingDevice {
 public:
  CudaBackendImpl(const Model& m, const BackendOptions& opt)
      : graph_(m.graph),
        dtype_(parse_precision(opt.precision)),
        layout_(parse_layout(opt.layout, dtype_)),
        use_graphs_(opt.cuda_graphs),
        ctx_(0),
        convs_(ctx_, dtype_, layout_),
        g_(lower(m, cuda_fusions(), kSlotAlign)),
        arena_(ctx_, g_, dtype_, layout_),
        staging_(*this) {
    require_supported(g_, "cuda", [&](const Step& s) { return why_not(s); });
    upload_steps();
  }

  ~CudaBackendImpl() override {
    // forward_resident and the staged path return with work queued; nothing it uses may be
    // freed under it. Errors are not reported from a destructor.
    cudaStreamSynchronize(ctx_.stream());
    staging_.clear();
  }

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
    const int64_t bytes = n * bgr8_image_bytes();
    staging_u8_.resize(std::max(staging_u8_.size(), static_cast<size_t>(bytes)));
    staging_u8_.upload(bgr, bytes, ctx_.stream());
    convert_bgr8(staging_u8_.data(), n);
    execute(p);
    download_output(y, n);
  }

  void forward_device_input(int64_t n, int64_t per_image,
                            const std::function<void(float* x, cudaStream_t stream)>& fill,
                            float* y) override {
    if (n <= 0) return;
    if (per_image != element_count(graph_.input_shape))
      fail("forward_device_input: the input holds ", per_image, " values per image; the model's ",
           shape_string(graph_.input_shape), " holds ", element_count(graph_.input_shape));
    Plan& p = plan_covering(n);
    fill(input_target(n), ctx_.stream());
    finish_input(n);
    execute(p);
    download_output(y, n);
  }

  std::unique_ptr<StagedEncoder> make_staged_encoder(int slots, int64_t capacity) override {
    return staging_.lend(slots, capacity);
  }

  GpuContext* gpu_context() override { return &ctx_; }

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
    return weight_bytes_ + arena_.bytes() + staging_f32_.bytes() + staging_u8_.bytes() +
           staging_.device_bytes();
  }

 private:
  // ---- StagingDevice: the staged path's device half --------------------------------------
  int64_t bgr8_image_bytes() const override {
    return graph_.input_shape[1] * graph_.input_shape[2] * 3;
  }
  int64_t embedding_dim() const override { return arena_.output_per_image(); }
  cudaStream_t compute_stream() const override { return ctx_.stream(); }

  void enqueue_bgr8(const uint8_t* dev_bgr, int64_t n, cudaEvent_t uploaded, cudaEvent_t consumed,
                    float* dev_y, float* y, cudaEvent_t done) override {
    Plan& p = plan_covering(n);
    cudaStream_t st = ctx_.stream();
    FN_GPU_CHECK(cudaStreamWaitEvent(st, uploaded, 0));
    convert_bgr8(dev_bgr, n);
    FN_GPU_CHECK(cudaEventRecord(consumed, st));
    execute(p);
    // The slot keeps its own device copy: the next batch's forward overwrites the output.
    arena_.copy_output(dev_y, n, cudaMemcpyDeviceToDevice, st);
    FN_GPU_CHECK(cudaMemcpyAsync(y, dev_y, static_cast<size_t>(embedding_dim() * n) * sizeof(float),
                                 cudaMemcpyDeviceToHost, st));
    FN_GPU_CHECK(cudaEventRecord(done, st));
  }

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
    arena_.ensure_capacity(n);
    auto plan = std::make_unique<Plan>(n, use_graphs_);
    for (size_t i = 0; i < g_.steps.size(); ++i)
      if (g_.steps[i].op == StepOp::kConv) plan->convs[i] = plan_conv(i, n);
    ctx_.synchronize();
    return *(plans_[n] = std::move(plan));
  }

  ConvPlan plan_conv(size_t step, int64_t n) {
    const Step& s = g_.steps[step];
    arena_.reserve_workspace(kConvWorkspaceLimit);
    ConvPlan c = convs_.plan(s, n, conv_operands(step, n));
    if (!c.fused) {
      // Bias (+ ReLU) by the affine kernel, which takes every dtype and strided slice; run the
      // sequence once now so that a refusal names this node at planning, not mid-batch.
      DeviceStep& d = dev_[step];
      if (!d.gamma.data()) {
        d.gamma = upload(std::vector<float>(s.out, 1.0f), ctx_.stream());
        d.beta = upload(s.b, ctx_.stream());
        weight_bytes_ += d.gamma.bytes() + d.beta.bytes();
      }
      convs_.run(c, conv_operands(step, n));
    }
    return c;
  }

  ConvOperands conv_operands(size_t step, int64_t n) {
    const Step& s = g_.steps[step];
    const DeviceStep& d = dev_[step];
    ConvOperands op;
    op.x = arena_.value(s.inputs[0], n);
    op.y = arena_.value(s.output, n);
    op.w = d.w.data();
    op.b = d.b.data();
    op.gamma = d.gamma.data();
    op.beta = d.beta.data();
    op.relu = s.relu;
    return op;
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
          convs_.run(p.convs.at(i), conv_operands(i, n));
          break;
        case StepOp::kPool:
          launch_pool2d(arena_.value(s.inputs[0], n), arena_.value(s.output, n), s.pool, s.kernel,
                        s.stride, s.pad, st);
          break;
        case StepOp::kLrn:
          launch_lrn(arena_.value(s.inputs[0], n), arena_.value(s.output, n), s.lrn_size,
                     static_cast<float>(s.lrn_alpha), static_cast<float>(s.lrn_beta),
                     static_cast<float>(s.lrn_k), st);
          break;
        case StepOp::kConcat:
          run_concat(s, n);
          break;
        case StepOp::kDense:  // why_not: the output head, over a whole map or a 1x1 one
          launch_pooled_dense_head(arena_.value(s.inputs[0], n), d.head_wt.data(), d.head_b.data(),
                                   s.out, s.l2norm, static_cast<float>(s.eps), arena_.output(), st);
          break;
        case StepOp::kAffine:
          launch_affine(arena_.value(s.inputs[0], n), d.gamma.data(), d.beta.data(), s.relu,
                        arena_.value(s.output, n), st);
          break;
        case StepOp::kAdd:
          launch_add_padded(arena_.value(s.inputs[0], n), arena_.value(s.inputs[1], n), s.relu,
                            arena_.value(s.output, n), st);
          break;
        case StepOp::kL2Norm:
          FN_ASSERT(false);  // why_not rejects it at load
      }
    }
    if (g_.output_in_arena)  // a truncated graph: export the value
      launch_copy_centred(arena_.value(graph_.output, n),
                          f32_nchw(arena_.output(), n, g_.shape(graph_.output)), st);
  }

  // Inputs aliased into this concat's slot are already in place; the rest (smaller maps, or
  // values already living in another concat) are copied, centred, into their slice.
  void run_concat(const Step& s, int64_t n) {
    const Placement& out = g_.placement.at(s.output);
    const Shape& os = g_.shape(s.output);
    int64_t c0 = 0;
    for (const auto& in : s.inputs) {
      const Shape& is = g_.shape(in);
      const Placement& p = g_.placement.at(in);
      if (!(p.slot == out.slot && p.c0 == c0))
        launch_copy_centred(arena_.value(in, n),
                            arena_.slot_slice(out.slot, n, is[0], os[1], os[2], c0), ctx_.stream());
      c0 += is[0];
    }
  }

  void execute(Plan& p) {
    p.forward.run(ctx_.stream(), arena_.generation(), [this, &p] { run_steps(p); });
  }

  // ---- I/O -------------------------------------------------------------------------------------
  // n decoded images (n x H x W x 3 uint8 BGR, device) -> the model input, on the stream.
  void convert_bgr8(const uint8_t* dev_bgr, int64_t n) {
    const InputSpec spec = input_spec(graph_);  // the host path's rule: (v - mean_c) * scale
    launch_bgr8_to_input(dev_bgr, arena_.input(n), spec.mean.data(), spec.scale, spec.rgb,
                         ctx_.stream());
  }

  // Where a float32 NCHW input of n images goes: the arena's input itself when that is its
  // layout, else a staging buffer finish_input() converts from.
  float* input_target(int64_t n) {
    if (dtype_ == DType::kFloat32 && layout_ == Layout::kNchw)
      return static_cast<float*>(arena_.input(n).data);
    const int64_t count = arena_.input_per_image() * n;
    staging_f32_.resize(std::max(staging_f32_.size(), static_cast<size_t>(count)));
    return staging_f32_.data();
  }

  void finish_input(int64_t n) {
    if (dtype_ == DType::kFloat32 && layout_ == Layout::kNchw) return;
    launch_copy_centred(f32_nchw(staging_f32_.data(), n, graph_.input_shape), arena_.input(n),
                        ctx_.stream());
  }

  void upload_input(const float* x, int64_t n) {
    const int64_t count = arena_.input_per_image() * n;
    FN_GPU_CHECK(cudaMemcpyAsync(input_target(n), x, count * sizeof(float), cudaMemcpyHostToDevice,
                                 ctx_.stream()));
    finish_input(n);
  }

  void download_output(float* y, int64_t n) {
    arena_.copy_output(y, n, cudaMemcpyDeviceToHost, ctx_.stream());
    ctx_.synchronize();
  }

  Graph graph_;
  DType dtype_;
  Layout layout_;
  bool use_graphs_;
  GpuContext ctx_;
  ConvPlanner convs_;  // its cuDNN handle is bound to ctx_'s stream
  LoweredGraph g_;
  std::vector<DeviceStep> dev_;  // per step of g_
  std::size_t weight_bytes_ = 0;
  ActivationArena arena_;
  DeviceBuffer<float> staging_f32_;
  DeviceBuffer<uint8_t> staging_u8_;
  std::map<int64_t, std::unique_ptr<Plan>> plans_;
  // Last: destroyed first, while the streams its sets synchronise still exist.
  StagingCache staging_;
};

}  // namespace

std::unique_ptr<CudaBackend> make_cuda_backend(const Model& model, const BackendOptions& options) {
  return std::make_unique<CudaBackendImpl>(model, options);
}

}  // namespace facenet
