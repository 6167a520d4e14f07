// The CPU backend: the lowered plan (engine/backend/lowering.h) on oneDNN. Activations are
// NHWC float32 or bfloat16 in one arena laid out by the lowering; convolutions (bias, ReLU and
// the residual sum as post-ops), max/avg pools, LRN and inner products are oneDNN primitives,
// built once per micro-batch size with their weights reordered into the layout each one
// chooses; the rest are nhwc_ops.h. Reorders only at the input (NCHW float32 -> NHWC) and, for
// a graph whose output is not a dense layer, at the output. No allocation per batch once a
// batch size has been planned.
#include "engine/backend/cpu/cpu_backend.h"

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <oneapi/dnnl/dnnl.hpp>
#include <optional>
#include <unordered_map>
#include <vector>

#include "engine/backend/cpu/nhwc_ops.h"
#include "engine/backend/lowering.h"
#include "engine/core/blas.h"
#include "engine/core/error.h"

namespace facenet {

namespace {

using dnnl::memory;
using Tag = memory::format_tag;
using Dt = memory::data_type;

// Zeroed bytes whose start is 64-byte aligned (a cache line, an AVX-512 vector); the address
// never changes after assign(), which memory objects rely on.
class AlignedBytes {
 public:
  void assign(size_t bytes) {
    raw_.assign(bytes + 64, 0);
    size_ = bytes;
  }
  char* data() { return raw_.data() + (64 - reinterpret_cast<uintptr_t>(raw_.data()) % 64) % 64; }
  size_t size() const { return size_; }

 private:
  std::vector<char> raw_;
  size_t size_ = 0;
};

// One step's primitive and its arguments for one batch size.
struct Exec {
  dnnl::primitive prim;
  std::unordered_map<int, memory> args;
};

struct BatchPlan {
  int64_t n = 0;
  std::vector<std::vector<Exec>> steps;  // per step, run in order; empty for our own ops
  Exec input;                            // user NCHW f32 -> input value
  std::optional<Exec> output;            // output value -> user NCHW f32 (arena outputs)
};

class CpuBackend final : public Backend {
 public:
  CpuBackend(const Model& m, const BackendOptions& opt)
      : g_(lower(m, cpu_fusions(), kAlign)), eng_(dnnl::engine::kind::cpu, 0), stream_(eng_) {
    if (opt.precision == "fp32") {
      act_ = DType::kFloat32;
    } else if (opt.precision == "bf16") {
      if (!cpu_has_bf16())
        fail("--precision bf16: this CPU has no bfloat16 instructions (oneDNN reports ISA ",
             onednn_isa_name(), "; needs avx512_core_bf16 or newer)");
      act_ = DType::kBFloat16;
    } else {
      fail("--precision ", opt.precision, ": the cpu backend runs fp32 or bf16");
    }
    require_supported(g_, "cpu", [&](const Step& s) { return why_not(s); });
    threads_ = opt.threads > 0 ? opt.threads : omp_get_num_procs();
    micro_batch_ = opt.micro_batch > 0 ? opt.micro_batch : kDefaultMicroBatch;
    const int64_t es = static_cast<int64_t>(dtype_size(act_));
    arena_.assign(static_cast<size_t>(g_.arena_per_image * micro_batch_ * es));
    input_.assign(static_cast<size_t>(element_count(g_.input_shape) * micro_batch_ * es));
    weights_.resize(g_.steps.size());
    single_w_.resize(g_.steps.size());
    size_winograd_buffers(micro_batch_);
  }

  std::string name() const override { return act_ == DType::kFloat32 ? "cpu" : "cpu bf16"; }

  void forward(const float* x, int64_t n, float* y) override {
    struct OmpThreadsGuard {  // oneDNN's OpenMP runtime uses the caller's thread count
      int saved = omp_get_max_threads();
      ~OmpThreadsGuard() { omp_set_num_threads(saved); }
    } guard;
    omp_set_num_threads(threads_);
    const int64_t in_dim = element_count(g_.input_shape), out_dim = g_.output_dim();
    for (int64_t i0 = 0; i0 < n; i0 += micro_batch_) {
      const int64_t nb = std::min<int64_t>(micro_batch_, n - i0);
      run(plan_for(nb), x + i0 * in_dim, y + i0 * out_dim);
    }
  }

 private:
  static constexpr int64_t kAlign = 16;  // 64 bytes of float32 per slot and image
  // Measured at batch 64 on a 2-core AVX-512 machine: 16 images per pass keep a layer's
  // activations in L2/L3 (see the README's speed section).
  static constexpr int64_t kDefaultMicroBatch = 16;
  static constexpr int64_t kWinogradMinMap = 8, kWinogradMinImages = 4, kWinogradMinMapFew = 17;

  static Fusions cpu_fusions() {
    Fusions f;
    f.residual_add = true;  // oneDNN's sum post-op
    return f;
  }

  std::string why_not(const Step& s) const {
    switch (s.op) {
      case StepOp::kLrn:
        if (s.lrn_size % 2 == 0) return "an LRN window of even size (oneDNN's is symmetric)";
        return "";
      case StepOp::kL2Norm:
        if (s.output != g_.output) return "l2norm other than as the graph's output";
        return "";
      case StepOp::kDense:
        if (s.l2norm && s.output != g_.output)
          return "an l2-normalised dense layer not at the output";
        return "";
      default:
        return "";
    }
  }

  Dt dt() const { return act_ == DType::kFloat32 ? Dt::f32 : Dt::bf16; }

  // ---- values ------------------------------------------------------------------------------
  void* value_ptr(const std::string& v, int64_t n) {
    const Placement& p = g_.placement.at(v);
    const int64_t es = static_cast<int64_t>(dtype_size(act_));
    if (p.slot < 0) return input_.data();
    return arena_.data() + (g_.slots[p.slot].offset * n + p.c0) * es;
  }

  NhwcView view(const std::string& v, int64_t n) {
    const Placement& p = g_.placement.at(v);
    const Shape& s = g_.shape(v);
    const int64_t cs = p.slot < 0 ? s[0] : g_.slots[p.slot].c;
    return {value_ptr(v, n), act_, n, s[0], s[1], s[2], cs};
  }

  memory::desc value_desc(const std::string& v, int64_t n) {
    const NhwcView w = view(v, n);
    return memory::desc({n, w.c, w.h, w.w}, dt(), {w.h * w.w * w.cs, 1, w.w * w.cs, w.cs});
  }

  memory value_mem(const std::string& v, int64_t n) {
    return memory(value_desc(v, n), eng_, value_ptr(v, n));
  }

  dnnl::primitive_attr attr(const dnnl::post_ops& po = dnnl::post_ops()) const {
    dnnl::primitive_attr a;
    a.set_post_ops(po);
    a.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    return a;
  }

  // The step's weights in the layout its primitive chose, reordered once per layout.
  memory weights_for(size_t step, const memory::desc& want, const memory::desc& user) {
    for (auto& [desc, mem] : weights_[step])
      if (desc == want) return mem;
    const Step& s = g_.steps[step];
    memory src(user, eng_, const_cast<float*>(s.w.data()));
    memory dst(want, eng_);
    dnnl::reorder(src, dst).execute(stream_, src, dst);
    stream_.wait();
    weights_[step].push_back({want, dst});
    return dst;
  }

  memory bias_mem(const Step& s) {
    return memory({{static_cast<int64_t>(s.b.size())}, Dt::f32, Tag::a}, eng_,
                  const_cast<float*>(s.b.data()));
  }

  template <typename PrimitiveDesc>
  void add_scratchpad(const PrimitiveDesc& pd, Exec& e) {
    const size_t bytes = pd.scratchpad_desc().get_size();
    if (bytes > scratch_.size()) scratch_.resize(bytes);
    e.args[DNNL_ARG_SCRATCHPAD] = memory(pd.scratchpad_desc(), eng_, nullptr);
  }

  // ---- per batch size: plan ----------------------------------------------------------------
  BatchPlan& plan_for(int64_t n) {
    auto it = plans_.find(n);
    if (it != plans_.end()) return it->second;
    BatchPlan p;
    p.n = n;
    const Shape& in = g_.input_shape;
    {
      memory::desc user({n, in[0], in[1], in[2]}, Dt::f32, Tag::nchw);
      memory src(user, eng_, nullptr), dst = value_mem(g_.input, n);
      p.input = {dnnl::reorder(src, dst), {{DNNL_ARG_FROM, src}, {DNNL_ARG_TO, dst}}};
    }
    for (size_t i = 0; i < g_.steps.size(); ++i) p.steps.push_back(plan_step(i, n));
    if (g_.output_in_arena) {
      const Shape& os = g_.shape(g_.output);
      memory src = value_mem(g_.output, n);
      memory dst({{n, os[0], os[1], os[2]}, Dt::f32, Tag::nchw}, eng_, nullptr);
      p.output = Exec{dnnl::reorder(src, dst), {{DNNL_ARG_FROM, src}, {DNNL_ARG_TO, dst}}};
    }
    return plans_.emplace(n, std::move(p)).first->second;
  }

  std::vector<Exec> plan_step(size_t i, int64_t n) {
    const Step& s = g_.steps[i];
    switch (s.op) {
      case StepOp::kConv:
        return plan_conv(i, n);
      case StepOp::kDense:
        return {plan_dense(i, n)};
      case StepOp::kPool:
        if (s.pool == PoolKind::kL2) return {};
        return {plan_pool(s, n)};
      case StepOp::kLrn:
        return {plan_lrn(s, n)};
      case StepOp::kConcat:
      case StepOp::kAffine:
      case StepOp::kAdd:
      case StepOp::kL2Norm:
        return {};  // nhwc_ops.h
    }
    return {};
  }

  // Winograd F(4x4, 3x3) (oneDNN's jit_wino_4x3) for 3x3 stride-1 fp32 convolutions: about
  // half the time of the direct convolution, even with reorders to and from its blocked layout
  // (it takes no NHWC), on maps of at least kWinogradMinMap in passes of kWinogradMinImages
  // and more; for fewer images only on maps of kWinogradMinMapFew and up, where its tiles are
  // enough work (batch 1, 20 runs each, min: dlib's ResNet 712 -> 801 img/s with its 35x35 and
  // 17x17 maps on Winograd, 609 with the 8x8 ones too; nn4.small2 714-763 -> 731-962). oneDNN
  // has no bf16 Winograd.
  bool use_winograd(const Step& s, int64_t n) const {
    const Shape& out = g_.shape(s.output);
    const int64_t min_map = n >= kWinogradMinImages ? kWinogradMinMap : kWinogradMinMapFew;
    return act_ == DType::kFloat32 && s.kernel == 3 && s.stride == 1 && out[1] >= min_map &&
           out[2] >= min_map;
  }

  // A stride-1 float32 convolution to one channel runs as nhwc_ops' conv_single_nhwc, when its
  // input is a whole slot without padding channels (conv_single_nhwc reads each pixel's
  // channels as one contiguous run).
  bool single_output(const Step& s, int64_t n) {
    if (act_ != DType::kFloat32 || s.out != 1 || s.stride != 1 || !s.residual.empty()) return false;
    const NhwcView x = view(s.inputs[0], n);
    return g_.placement.at(s.inputs[0]).c0 == 0 && x.cs == x.c;
  }

  std::vector<Exec> plan_conv(size_t i, int64_t n) {
    const Step& s = g_.steps[i];
    if (single_output(s, n)) {
      if (single_w_[i].empty())
        single_w_[i] =
            pack_single_conv_weights(s.w.data(), s.in, s.kernel, view(s.inputs[0], n).cs);
      return {};
    }
    dnnl::post_ops po;
    if (!s.residual.empty()) po.append_sum(1.0f);  // dst = conv + dst (the residual's slot)
    if (s.relu) po.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
    if (use_winograd(s, n)) {
      std::vector<Exec> seq = plan_winograd(i, n, po);
      if (!seq.empty()) return seq;
    }
    const auto pd = conv_pd(s, value_desc(s.inputs[0], n), value_desc(s.output, n), po,
                            dnnl::algorithm::convolution_direct);
    return {conv_exec(i, pd, value_mem(s.inputs[0], n), value_mem(s.output, n))};
  }

  dnnl::convolution_forward::primitive_desc conv_pd(const Step& s, const memory::desc& src,
                                                    const memory::desc& dst,
                                                    const dnnl::post_ops& po, dnnl::algorithm alg) {
    const memory::desc wany({s.out, s.in, s.kernel, s.kernel}, dt(), Tag::any);
    const memory::desc bias({s.out}, Dt::f32, Tag::a);
    dnnl::convolution_forward::desc d(dnnl::prop_kind::forward_inference, alg, src, wany, bias, dst,
                                      {s.stride, s.stride}, {s.pad, s.pad}, {s.pad, s.pad});
    return dnnl::convolution_forward::primitive_desc(d, attr(po), eng_);
  }

  Exec conv_exec(size_t i, const dnnl::convolution_forward::primitive_desc& pd, const memory& src,
                 const memory& dst) {
    const Step& s = g_.steps[i];
    Exec e{dnnl::convolution_forward(pd), {}};
    e.args[DNNL_ARG_SRC] = src;
    e.args[DNNL_ARG_WEIGHTS] =
        weights_for(i, pd.weights_desc(), {{s.out, s.in, s.kernel, s.kernel}, Dt::f32, Tag::oihw});
    e.args[DNNL_ARG_BIAS] = bias_mem(s);
    e.args[DNNL_ARG_DST] = dst;
    add_scratchpad(pd, e);
    return e;
  }

  static Exec reorder(const memory& from, const memory& to) {
    return {dnnl::reorder(from, to), {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}}};
  }

  // NHWC -> the Winograd layout, the convolution (its dst first loaded with the residual when
  // the sum is fused: the output lives where the residual does), back to NHWC. Empty when
  // oneDNN offers no Winograd for this shape. The two blocked buffers are shared by every
  // Winograd step and sized at construction for the largest micro-batch.
  std::vector<Exec> plan_winograd(size_t i, int64_t n, const dnnl::post_ops& po) {
    const Step& s = g_.steps[i];
    const Shape &is = g_.shape(s.inputs[0]), &os = g_.shape(s.output);
    std::optional<dnnl::convolution_forward::primitive_desc> pd;
    try {
      pd = conv_pd(s, memory::desc({n, is[0], is[1], is[2]}, Dt::f32, Tag::any),
                   memory::desc({n, os[0], os[1], os[2]}, Dt::f32, Tag::any), po,
                   dnnl::algorithm::convolution_winograd);
    } catch (const dnnl::error&) {
      return {};
    }
    FN_ASSERT(pd->src_desc().get_size() <= wino_src_.size());
    FN_ASSERT(pd->dst_desc().get_size() <= wino_dst_.size());
    memory src(pd->src_desc(), eng_, wino_src_.data());
    memory dst(pd->dst_desc(), eng_, wino_dst_.data());
    const memory out = value_mem(s.output, n);
    std::vector<Exec> seq{reorder(value_mem(s.inputs[0], n), src)};
    if (!s.residual.empty()) seq.push_back(reorder(out, dst));
    seq.push_back(conv_exec(i, *pd, src, dst));
    seq.push_back(reorder(dst, out));
    return seq;
  }

  // Bytes of the largest Winograd input and output for `n` images, channels padded to the
  // 16-channel blocks of its layout.
  void size_winograd_buffers(int64_t n) {
    size_t src = 0, dst = 0;
    auto blocked = [&](const Shape& sh) {
      return static_cast<size_t>(n * ((sh[0] + 15) / 16 * 16) * sh[1] * sh[2] * 4);
    };
    for (const Step& s : g_.steps)
      if (s.op == StepOp::kConv && use_winograd(s, n)) {
        src = std::max(src, blocked(g_.shape(s.inputs[0])));
        dst = std::max(dst, blocked(g_.shape(s.output)));
      }
    wino_src_.assign(src);
    wino_dst_.assign(dst);
  }

  // Inner product over the flattened input (oneDNN flattens the logical C, H, W: our weights'
  // [out][C*H*W] order whatever the memory layout). The graph's output is float32 in the
  // caller's buffer (handle set per call); another dense value goes to its slot.
  Exec plan_dense(size_t i, int64_t n) {
    const Step& s = g_.steps[i];
    const Shape& is = g_.shape(s.inputs[0]);
    const memory::desc src = value_desc(s.inputs[0], n);
    const bool to_output = s.output == g_.output;
    const memory::desc dst = to_output ? memory::desc({n, s.out}, Dt::f32, Tag::nc)
                                       : memory::desc({n, s.out}, dt(), Tag::nc);
    const memory::desc wany({s.out, is[0], is[1], is[2]}, dt(), Tag::any);
    const memory::desc bias({s.out}, Dt::f32, Tag::a);
    dnnl::post_ops po;
    if (s.relu) po.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
    dnnl::inner_product_forward::desc d(dnnl::prop_kind::forward_inference, src, wany, bias, dst);
    dnnl::inner_product_forward::primitive_desc pd(d, attr(po), eng_);
    Exec e{dnnl::inner_product_forward(pd), {}};
    e.args[DNNL_ARG_SRC] = value_mem(s.inputs[0], n);
    e.args[DNNL_ARG_WEIGHTS] =
        weights_for(i, pd.weights_desc(), {{s.out, is[0], is[1], is[2]}, Dt::f32, Tag::oihw});
    e.args[DNNL_ARG_BIAS] = bias_mem(s);
    e.args[DNNL_ARG_DST] =
        to_output ? memory(dst, eng_, nullptr) : memory(dst, eng_, value_ptr(s.output, n));
    add_scratchpad(pd, e);
    return e;
  }

  // Floor mode: with right padding = left padding, oneDNN's (in + 2p - k) / s + 1 is ours.
  // Average pooling includes the padding and divides by kernel^2, as the reference does.
  Exec plan_pool(const Step& s, int64_t n) {
    const auto alg = s.pool == PoolKind::kMax ? dnnl::algorithm::pooling_max
                                              : dnnl::algorithm::pooling_avg_include_padding;
    dnnl::pooling_forward::desc d(dnnl::prop_kind::forward_inference, alg,
                                  value_desc(s.inputs[0], n), value_desc(s.output, n),
                                  {s.stride, s.stride}, {s.kernel, s.kernel}, {s.pad, s.pad},
                                  {s.pad, s.pad});
    dnnl::pooling_forward::primitive_desc pd(d, attr(), eng_);
    Exec e{dnnl::pooling_forward(pd), {}};
    e.args[DNNL_ARG_SRC] = value_mem(s.inputs[0], n);
    e.args[DNNL_ARG_DST] = value_mem(s.output, n);
    add_scratchpad(pd, e);
    return e;
  }

  // oneDNN's across-channel LRN: x / (k + alpha / size * sum over `size` channels)^beta.
  Exec plan_lrn(const Step& s, int64_t n) {
    dnnl::lrn_forward::desc d(dnnl::prop_kind::forward_inference,
                              dnnl::algorithm::lrn_across_channels, value_desc(s.inputs[0], n),
                              s.lrn_size, static_cast<float>(s.lrn_alpha),
                              static_cast<float>(s.lrn_beta), static_cast<float>(s.lrn_k));
    dnnl::lrn_forward::primitive_desc pd(d, attr(), eng_);
    if (pd.dst_desc() != value_desc(s.output, n))
      fail("step '", s.output, "': oneDNN's LRN chose another layout for its output");
    Exec e{dnnl::lrn_forward(pd), {}};
    e.args[DNNL_ARG_SRC] = value_mem(s.inputs[0], n);
    e.args[DNNL_ARG_DST] = value_mem(s.output, n);
    add_scratchpad(pd, e);
    return e;
  }

  // ---- per batch: run ------------------------------------------------------------------------
  void execute(Exec& e) {
    auto sp = e.args.find(DNNL_ARG_SCRATCHPAD);
    if (sp != e.args.end()) sp->second.set_data_handle(scratch_.data());
    e.prim.execute(stream_, e.args);
  }

  void execute_all(std::vector<Exec>& seq) {
    for (Exec& e : seq) execute(e);
  }

  void run(BatchPlan& p, const float* x, float* y) {
    const int64_t n = p.n;
    p.input.args.at(DNNL_ARG_FROM).set_data_handle(const_cast<float*>(x));
    execute(p.input);
    for (size_t i = 0; i < g_.steps.size(); ++i) {
      const Step& s = g_.steps[i];
      switch (s.op) {
        case StepOp::kConv:
          if (!single_w_[i].empty())
            conv_single_nhwc(view(s.inputs[0], n), single_w_[i].data(), s.b[0], s.kernel, s.pad,
                             s.relu, view(s.output, n), threads_);
          else
            execute_all(p.steps[i]);
          break;
        case StepOp::kLrn:
          execute_all(p.steps[i]);
          break;
        case StepOp::kPool:
          if (s.pool == PoolKind::kL2)
            l2pool_nhwc(view(s.inputs[0], n), view(s.output, n), s.kernel, s.stride, s.pad,
                        threads_);
          else
            execute_all(p.steps[i]);
          break;
        case StepOp::kDense:
          if (s.output == g_.output) p.steps[i].back().args.at(DNNL_ARG_DST).set_data_handle(y);
          execute_all(p.steps[i]);
          if (s.l2norm) {
            const NhwcView out{y, DType::kFloat32, n, s.out, 1, 1, s.out};
            l2norm_rows(out, s.eps, y, threads_);
          }
          break;
        case StepOp::kConcat: {
          const NhwcView out = view(s.output, n);
          int64_t c0 = 0;
          for (const auto& in : s.inputs) {
            NhwcView slice = out;
            slice.data = static_cast<char*>(out.data) + c0 * static_cast<int64_t>(dtype_size(act_));
            slice.c = g_.shape(in)[0];
            copy_centred_nhwc(view(in, n), slice, threads_);
            c0 += slice.c;
          }
          break;
        }
        case StepOp::kAffine:
          affine_nhwc(view(s.inputs[0], n), s.w.data(), s.b.data(), s.relu, view(s.output, n),
                      threads_);
          break;
        case StepOp::kAdd:
          add_padded_nhwc(view(s.inputs[0], n), view(s.inputs[1], n), s.relu, view(s.output, n),
                          threads_);
          break;
        case StepOp::kL2Norm:
          l2norm_rows(view(s.inputs[0], n), s.eps, y, threads_);
          return;  // why_not: only as the output
      }
    }
    if (p.output) {
      p.output->args.at(DNNL_ARG_TO).set_data_handle(y);
      execute(*p.output);
    }
  }

  LoweredGraph g_;
  dnnl::engine eng_;
  dnnl::stream stream_;
  DType act_ = DType::kFloat32;
  int threads_ = 1;
  int64_t micro_batch_ = kDefaultMicroBatch;
  AlignedBytes arena_, input_, wino_src_, wino_dst_;
  std::vector<char> scratch_;  // oneDNN aligns each scratchpad entry itself
  std::vector<std::vector<std::pair<memory::desc, memory>>> weights_;  // per step
  std::vector<std::vector<float>> single_w_;  // per step: conv_single_nhwc's packed weights
  std::map<int64_t, BatchPlan> plans_;
};

}  // namespace

bool cpu_has_bf16() {
  const auto isa = dnnl::get_effective_cpu_isa();
  return isa == dnnl::cpu_isa::avx512_core_bf16 || isa == dnnl::cpu_isa::avx512_core_amx;
}

std::unique_ptr<Backend> make_cpu_backend(const Model& model, const BackendOptions& options) {
  return std::make_unique<CpuBackend>(model, options);
}

}  // namespace facenet
