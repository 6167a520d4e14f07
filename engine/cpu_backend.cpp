// Fast CPU backend. At load: BatchNorm and per-channel affine folded into the preceding conv,
// ReLU fused into its epilogue (or into a residual add), concat inputs of full size aliased to
// their channel slice of the concat buffer (no copy), only the zero-padded branches copied.
// Per call: the batch runs in micro-batches through preallocated CNHW buffers; GEMMs through
// OpenBLAS, other ops through OpenMP.
#include "engine/cpu_backend.h"

#include <omp.h>

#include <algorithm>
#include <map>
#include <set>

#include "engine/cpu_ops.h"
#include "engine/error.h"

namespace facenet {

namespace {

struct Storage {
  int buffer = -1;
  int64_t channel_offset = 0;  // where the value's channels start in the buffer
};

struct Step {
  OpType op;
  std::vector<std::string> inputs;
  std::string output;
  // conv / dense (BN folded): weights and bias, ReLU fused.
  std::vector<float> w, b;
  int out = 0, kernel = 1, stride = 1, pad = 0;
  bool relu = false;
  std::vector<float> winograd;  // conv 3x3/1 pad 1 on a large map: U = G w G^T, else empty
  const Node* node = nullptr;   // attributes of pools / LRN / l2norm
};

class CpuBackend final : public Backend {
 public:
  CpuBackend(const Model& m, const BackendOptions& opt) : graph_(m.graph) {
    threads_ = opt.threads > 0 ? opt.threads : omp_get_num_procs();
    micro_batch_ = opt.micro_batch > 0 ? opt.micro_batch : 16;
    shapes_[graph_.input] = graph_.input_shape;
    for (size_t i = 0; i < graph_.nodes.size(); ++i) shapes_[graph_.nodes[i].name] = m.shapes[i];
    build_steps(m);
    plan_storage();
  }

  std::string name() const override { return "cpu"; }

  // Threads split the batch: each runs whole micro-batches with its own buffers (BLAS is
  // single-threaded engine-wide, see blas.h; inside the parallel region every op runs
  // serially). A batch that makes only one micro-batch runs its ops and GEMMs across the
  // threads instead (parallel_sgemm splits the columns).
  void forward(const float* x, int64_t n, float* y) override {
    const int64_t in_per_image = element_count(graph_.input_shape);
    const int64_t out_dim = element_count(shapes_.at(graph_.output));
    const int64_t per_thread = (n + threads_ - 1) / threads_;
    const int64_t micro = std::max<int64_t>(1, std::min<int64_t>(micro_batch_, per_thread));
    const int64_t chunks = (n + micro - 1) / micro;
    const int workers = static_cast<int>(std::min<int64_t>(threads_, chunks));
    if (workspaces_.size() < static_cast<size_t>(workers)) workspaces_.resize(workers);
    // The caller's OpenMP setting is restored on return.
    struct OmpThreadsGuard {
      int saved = omp_get_max_threads();
      ~OmpThreadsGuard() { omp_set_num_threads(saved); }
    } guard;
    omp_set_num_threads(threads_);
    auto run_chunk = [&](Workspace& ws, int64_t c) {
      const int64_t i0 = c * micro, nb = std::min(micro, n - i0);
      ensure_buffers(ws, nb);
      run(ws, x + i0 * in_per_image, nb, y + i0 * out_dim);
    };
    if (workers == 1) {
      for (int64_t c = 0; c < chunks; ++c) run_chunk(workspaces_[0], c);
      return;
    }
    std::vector<std::string> errors(workers);
#pragma omp parallel for num_threads(workers) schedule(dynamic, 1)
    for (int64_t c = 0; c < chunks; ++c) {
      const int t = omp_get_thread_num();
      try {
        run_chunk(workspaces_[t], c);
      } catch (const std::exception& e) {
        errors[t] = e.what();
      }
    }
    for (const auto& e : errors)
      if (!e.empty()) fail(e);
  }

 private:
  // Consumers of each value, to know when a BN / ReLU can be fused into its producer.
  std::map<std::string, int> count_consumers() const {
    std::map<std::string, int> uses;
    for (const Node& n : graph_.nodes)
      for (const auto& i : n.inputs) ++uses[i];
    return uses;
  }

  void build_steps(const Model& m) {
    auto uses = count_consumers();
    const auto& nodes = graph_.nodes;
    for (size_t i = 0; i < nodes.size(); ++i) {
      const Node& n = nodes[i];
      Step s;
      s.op = n.op;
      s.inputs = n.inputs;
      s.output = n.name;
      s.node = &n;
      // The next node is `op`, reads the current step's output and is its sole consumer.
      auto sole_next = [&](OpType op) {
        return i + 1 < nodes.size() && nodes[i + 1].op == op &&
               nodes[i + 1].inputs[0] == nodes[i].name && uses[nodes[i].name] == 1;
      };
      if (n.op == OpType::conv || n.op == OpType::dense) {
        s.w = m.tensors.at(n.weight).data;
        s.b = m.tensors.at(n.bias).data;
        s.out = n.out;
        s.kernel = n.op == OpType::conv ? n.kernel : 1;
        s.stride = n.stride;
        s.pad = n.pad;
        // Fold a following BatchNorm or affine, then fuse a following ReLU, when each is
        // the sole consumer.
        const int64_t per_out = static_cast<int64_t>(s.w.size()) / s.out;
        if (sole_next(OpType::batchnorm)) {
          const Node& bn = nodes[++i];
          fold_batchnorm(s.w, s.b, per_out, m.tensors.at(bn.gamma).data.data(),
                         m.tensors.at(bn.beta).data.data(), m.tensors.at(bn.mean).data.data(),
                         m.tensors.at(bn.var).data.data(), bn.eps);
          s.output = bn.name;
        } else if (sole_next(OpType::affine)) {
          const Node& af = nodes[++i];
          fold_affine(s.w, s.b, per_out, m.tensors.at(af.gamma).data.data(),
                      m.tensors.at(af.beta).data.data());
          s.output = af.name;
        }
      } else if (n.op == OpType::affine) {
        s.w = m.tensors.at(n.gamma).data;
        s.b = m.tensors.at(n.beta).data;
      } else if (n.op == OpType::batchnorm) {
        fail("node '", n.name, "': BatchNorm not directly after a conv/dense is not supported ",
             "by the cpu backend");
      }
      if ((n.op == OpType::conv || n.op == OpType::dense || n.op == OpType::add) &&
          sole_next(OpType::relu)) {
        s.relu = true;
        s.output = nodes[++i].name;
      }
      // Winograd pays where the map has enough 2x2 tiles to amortise its transforms.
      if (n.op == OpType::conv && s.kernel == 3 && s.stride == 1 && s.pad == 1 &&
          shapes_.at(n.inputs[0])[1] >= winograd_min_map_)
        s.winograd =
            winograd_weights(s.w.data(), s.out, static_cast<int>(s.w.size() / (9 * s.out)));
      steps_.push_back(std::move(s));
    }
  }

  // Every value gets its own buffer, except concat inputs whose map is full size: those live
  // in their channel slice of the concat's buffer.
  void plan_storage() {
    auto new_buffer = [&](const std::string& v) {
      buffer_per_image_.push_back(element_count(shapes_.at(v)));
      storage_[v] = {static_cast<int>(buffer_per_image_.size()) - 1, 0};
    };
    new_buffer(graph_.input);
    for (const Step& s : steps_)
      if (!storage_.count(s.output)) new_buffer(s.output);
    // Alias after all buffers exist; walk concats in order (no nested aliasing in practice:
    // a value aliased into one concat is copied into any other).
    for (Step& s : steps_) {
      if (s.op != OpType::concat) continue;
      const Shape& cs = shapes_.at(s.output);
      int64_t c0 = 0;
      for (const auto& in : s.inputs) {
        const Shape& is = shapes_.at(in);
        if (in != graph_.input && is[1] == cs[1] && is[2] == cs[2] && !aliased_.count(in)) {
          storage_[in] = {storage_.at(s.output).buffer, c0};
          aliased_.insert(in);
        }
        c0 += is[0];
      }
    }
  }

  // One thread's activations (CNHW buffers sized for `nb` images) and im2col scratch.
  struct Workspace {
    std::vector<std::vector<float>> buffers;
    std::vector<float> col;
    int64_t nb = 0;
  };

  void ensure_buffers(Workspace& ws, int64_t nb) const {
    if (nb <= ws.nb) return;
    ws.buffers.resize(buffer_per_image_.size());
    for (size_t b = 0; b < ws.buffers.size(); ++b)
      ws.buffers[b].assign(buffer_per_image_[b] * nb, 0.f);
    ws.nb = nb;
  }

  float* ptr(Workspace& ws, const std::string& v, int64_t nb) const {
    const Storage& st = storage_.at(v);
    const Shape& s = shapes_.at(v);
    return ws.buffers[st.buffer].data() + st.channel_offset * nb * s[1] * s[2];
  }

  PlanarDims dims(const std::string& v, int64_t nb) const {
    const Shape& s = shapes_.at(v);
    return {s[0], nb, s[1], s[2]};
  }

  void run(Workspace& ws, const float* x, int64_t nb, float* y) const {
    const PlanarDims in = dims(graph_.input, nb);
    nchw_to_cnhw(x, nb, in.c, in.plane(), ptr(ws, graph_.input, nb));
    for (const Step& s : steps_) {
      const PlanarDims d = dims(s.inputs[0], nb);
      const float* a = ptr(ws, s.inputs[0], nb);
      float* out = ptr(ws, s.output, nb);
      const Node& n = *s.node;
      switch (s.op) {
        case OpType::conv:
          if (!s.winograd.empty())
            conv_winograd_3x3(a, d, s.winograd.data(), s.b.data(), s.out, s.relu, out, ws.col);
          else
            conv_gemm(a, d, s.w.data(), s.b.data(), s.out, s.kernel, s.stride, s.pad, s.relu, out,
                      ws.col);
          break;
        case OpType::dense: {
          // Flatten each image in CHW order: x[c*HW + p][img] from CNHW x[c][img][p].
          const int64_t in_f = d.c * d.plane();
          const float* flat = a;
          if (d.plane() != 1) {
            ws.col.resize(in_f * nb);
            for (int64_t c = 0; c < d.c; ++c)
              for (int64_t img = 0; img < nb; ++img)
                for (int64_t p = 0; p < d.plane(); ++p)
                  ws.col[(c * d.plane() + p) * nb + img] = a[(c * nb + img) * d.plane() + p];
            flat = ws.col.data();
          }
          dense_gemm(flat, in_f, nb, s.w.data(), s.b.data(), s.out, out);
          if (s.relu)
            for (int64_t i = 0; i < s.out * nb; ++i) out[i] = std::max(out[i], 0.0f);
          break;
        }
        case OpType::relu:
          for (int64_t i = 0; i < d.size(); ++i) out[i] = std::max(a[i], 0.0f);
          break;
        case OpType::affine:
          affine_channels(a, d.c, nb * d.plane(), s.w.data(), s.b.data(), out);
          break;
        case OpType::add:
          add_padded(a, d, ptr(ws, s.inputs[1], nb), dims(s.inputs[1], nb), s.relu, out);
          break;
        case OpType::maxpool:
        case OpType::avgpool:
        case OpType::l2pool: {
          const PoolKind kind = s.op == OpType::maxpool   ? PoolKind::max
                                : s.op == OpType::avgpool ? PoolKind::avg
                                                          : PoolKind::l2;
          pool_planes(a, d.c * nb, d.h, d.w, n.kernel, n.stride, n.pad, kind, out);
          break;
        }
        case OpType::lrn:
          lrn_channels(a, d.c, nb * d.plane(), n.size, static_cast<float>(n.alpha),
                       static_cast<float>(n.beta_pow), static_cast<float>(n.k), out);
          break;
        case OpType::concat: {
          const PlanarDims od = dims(s.output, nb);
          int64_t c0 = 0;
          for (const auto& in : s.inputs) {
            const PlanarDims id = dims(in, nb);
            const Storage& st = storage_.at(in);
            const bool in_place = st.buffer == storage_.at(s.output).buffer;
            if (!in_place)
              copy_centred(ptr(ws, in, nb), id.c * nb, id.h, id.w, out + c0 * nb * od.plane(), od.h,
                           od.w);
            c0 += id.c;
          }
          break;
        }
        case OpType::l2norm:
          if (s.output == graph_.output) {
            l2norm_columns(a, d.c * d.plane(), nb, n.eps, y);
            return;
          }
          fail("node '", n.name, "': the cpu backend supports l2norm only as the output");
        case OpType::batchnorm:
          FN_ASSERT(false);  // folded at load (build_steps rejects unfoldable ones)
      }
    }
    // Output not produced by an l2norm: transpose [D][nb] to [nb][D].
    const PlanarDims od = dims(graph_.output, nb);
    cnhw_to_nchw(ptr(ws, graph_.output, nb), nb, od.c, od.plane(), y);
  }

  Graph graph_;
  int threads_ = 1;
  int64_t micro_batch_ = 16;
  // Measured at batch 64 here: Winograd on the 8x8-and-larger maps (nn4's stem conv3 and
  // 3a/3b) took the encoder from 385 to 453 img/s; extending it to the 6x6 and 3x3 maps gains
  // nothing (their transforms cost what they save).
  static constexpr int64_t winograd_min_map_ = 8;
  std::map<std::string, Shape> shapes_;
  std::vector<Step> steps_;
  std::map<std::string, Storage> storage_;
  std::set<std::string> aliased_;
  std::vector<int64_t> buffer_per_image_;
  std::vector<Workspace> workspaces_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(const Model& model, const BackendOptions& options) {
  return std::make_unique<CpuBackend>(model, options);
}

}  // namespace facenet
