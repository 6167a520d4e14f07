// The one lowering (lowering.h): folding and fusion over the node list, then storage: every
// value gets an arena slot, full-size concat inputs may move into their concat's slice, a
// fused residual add computes in the residual's slot, and slots share memory by lifetime.
#include "engine/backend/lowering.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <set>

#include "engine/core/error.h"

namespace facenet {

const char* step_op_name(StepOp op) {
  switch (op) {
    case StepOp::kConv:
      return "conv";
    case StepOp::kDense:
      return "dense";
    case StepOp::kPool:
      return "pool";
    case StepOp::kLrn:
      return "lrn";
    case StepOp::kConcat:
      return "concat";
    case StepOp::kAffine:
      return "affine";
    case StepOp::kAdd:
      return "add";
    case StepOp::kL2Norm:
      return "l2norm";
  }
  return "?";
}

void fold_batchnorm(std::vector<float>& w, std::vector<float>& b, int64_t per_out,
                    const float* gamma, const float* beta, const float* mean, const float* var,
                    double eps) {
  for (size_t o = 0; o < b.size(); ++o) {
    const double s = gamma[o] / std::sqrt(static_cast<double>(var[o]) + eps);
    for (int64_t i = 0; i < per_out; ++i)
      w[o * per_out + i] = static_cast<float>(w[o * per_out + i] * s);
    b[o] = static_cast<float>((b[o] - static_cast<double>(mean[o])) * s + beta[o]);
  }
}

void fold_affine(std::vector<float>& w, std::vector<float>& b, int64_t per_out, const float* gamma,
                 const float* beta) {
  for (size_t o = 0; o < b.size(); ++o) {
    for (int64_t i = 0; i < per_out; ++i) w[o * per_out + i] *= gamma[o];
    b[o] = b[o] * gamma[o] + beta[o];
  }
}

namespace {

class Lowering {
 public:
  Lowering(const Model& m, const Fusions& f, int64_t align)
      : m_(m), g_(m.graph), f_(f), align_(std::max<int64_t>(1, align)) {
    out_.input = g_.input;
    out_.output = g_.output;
    out_.input_shape = g_.input_shape;
    out_.shapes[g_.input] = g_.input_shape;
    for (size_t i = 0; i < g_.nodes.size(); ++i) out_.shapes[g_.nodes[i].name] = m.shapes.at(i);
    for (size_t i = 0; i < g_.nodes.size(); ++i)
      for (const auto& v : g_.nodes[i].inputs) {
        ++uses_[v];
        last_use_[v] = static_cast<int>(i);
      }
    ++uses_[g_.output];
    last_use_[g_.output] = INT_MAX;
    for (const Node& n : g_.nodes)
      if (n.op == OpType::kConcat)
        for (const auto& v : n.inputs) concat_inputs_.insert(v);
  }

  LoweredGraph run() {
    for (i_ = 0; i_ < g_.nodes.size(); ++i_) out_.steps.push_back(lower_node());
    place_values();
    return std::move(out_);
  }

 private:
  const Node& node(size_t i) const { return g_.nodes[i]; }
  int uses(const std::string& v) const {
    const auto it = uses_.find(v);
    return it == uses_.end() ? 0 : it->second;
  }

  // nodes[i_+1] is `op`, reads the current value and is its only consumer.
  bool sole_next(OpType op) const {
    return i_ + 1 < g_.nodes.size() && node(i_ + 1).op == op &&
           node(i_ + 1).inputs[0] == node(i_).name && uses(node(i_).name) == 1;
  }

  void absorb(Step& s) {
    ++i_;
    s.output = node(i_).name;
    s.nodes.push_back(node(i_).name);
  }

  const std::vector<float>& tensor(const std::string& name) const {
    return m_.tensors.at(name).data;
  }

  void fold_following_norm(Step& s, int64_t per_out) {
    if (sole_next(OpType::kBatchNorm)) {
      const Node& bn = node(i_ + 1);
      fold_batchnorm(s.w, s.b, per_out, tensor(bn.gamma).data(), tensor(bn.beta).data(),
                     tensor(bn.mean).data(), tensor(bn.var).data(), bn.eps);
      absorb(s);
    } else if (sole_next(OpType::kAffine)) {
      const Node& af = node(i_ + 1);
      fold_affine(s.w, s.b, per_out, tensor(af.gamma).data(), tensor(af.beta).data());
      absorb(s);
    }
  }

  void fuse_relu(Step& s) {
    if (sole_next(OpType::kRelu)) {
      s.relu = true;
      absorb(s);
    }
  }

  // add(conv, r) right after the conv, which is its only use, with r of the same shape, not
  // the conv's own input, not the graph input, not in any concat, and read for the last time
  // by this add.
  void fuse_residual(Step& s) {
    if (!f_.residual_add || i_ + 1 >= g_.nodes.size()) return;
    const Node& a = node(i_ + 1);
    if (a.op != OpType::kAdd || uses(s.output) != 1) return;
    const std::string& v = s.output;
    if (a.inputs[0] != v && a.inputs[1] != v) return;
    const std::string& r = a.inputs[0] == v ? a.inputs[1] : a.inputs[0];
    // In place: the conv must not read what it overwrites.
    if (r == v || r == s.inputs[0] || r == g_.input || concat_inputs_.count(r) ||
        out_.shapes.at(r) != out_.shapes.at(v))
      return;
    if (last_use_.count(r) == 0 || last_use_.at(r) != static_cast<int>(i_ + 1)) return;
    s.residual = r;
    s.inputs = {s.inputs[0]};
    absorb(s);
  }

  Step dense_step(size_t dense_index, Step s) {
    const Node& d = node(dense_index);
    s.op = StepOp::kDense;
    s.w = tensor(d.weight);
    s.b = tensor(d.bias);
    s.out = d.out;
    s.in = static_cast<int>(static_cast<int64_t>(s.w.size()) / d.out);
    fold_following_norm(s, s.in);
    fuse_relu(s);
    if (sole_next(OpType::kL2Norm)) {
      s.l2norm = true;
      s.eps = node(i_ + 1).eps;
      absorb(s);
    }
    return s;
  }

  bool is_global_pool(const Node& n) const {
    const Shape& in = out_.shapes.at(n.inputs[0]);
    return n.op == OpType::kAvgPool && n.pad == 0 && n.kernel == in[1] && n.kernel == in[2];
  }

  Step lower_node() {
    const Node& n = node(i_);
    Step s;
    s.inputs = n.inputs;
    s.output = n.name;
    s.nodes = {n.name};
    switch (n.op) {
      case OpType::kConv:
        s.op = StepOp::kConv;
        s.w = tensor(n.weight);
        s.b = tensor(n.bias);
        s.out = n.out;
        s.in = static_cast<int>(out_.shapes.at(n.inputs[0])[0]);
        s.kernel = n.kernel, s.stride = n.stride, s.pad = n.pad;
        fold_following_norm(s, static_cast<int64_t>(s.w.size()) / s.out);
        fuse_residual(s);
        fuse_relu(s);
        return s;
      case OpType::kDense:
        return dense_step(i_, s);
      case OpType::kAvgPool:
        if (f_.global_pool_dense && is_global_pool(n) && sole_next(OpType::kDense)) {
          absorb(s);
          s.global_pool = true;
          return dense_step(i_, s);
        }
        [[fallthrough]];
      case OpType::kMaxPool:
      case OpType::kL2Pool:
        s.op = StepOp::kPool;
        s.pool = n.op == OpType::kMaxPool   ? PoolKind::kMax
                 : n.op == OpType::kAvgPool ? PoolKind::kAvg
                                            : PoolKind::kL2;
        s.kernel = n.kernel, s.stride = n.stride, s.pad = n.pad;
        return s;
      case OpType::kLrn:
        s.op = StepOp::kLrn;
        s.lrn_size = n.size, s.lrn_alpha = n.alpha, s.lrn_beta = n.beta_pow, s.lrn_k = n.k;
        return s;
      case OpType::kConcat:
        s.op = StepOp::kConcat;
        return s;
      case OpType::kBatchNorm: {  // not after a conv/dense: y = s_c x + t_c
        s.op = StepOp::kAffine;
        const auto &g = tensor(n.gamma), &be = tensor(n.beta), &mu = tensor(n.mean),
                   &var = tensor(n.var);
        s.w.resize(g.size());
        s.b.resize(g.size());
        for (size_t c = 0; c < g.size(); ++c) {
          const double k = g[c] / std::sqrt(static_cast<double>(var[c]) + n.eps);
          s.w[c] = static_cast<float>(k);
          s.b[c] = static_cast<float>(be[c] - mu[c] * k);
        }
        fuse_relu(s);
        return s;
      }
      case OpType::kAffine:
        s.op = StepOp::kAffine;
        s.w = tensor(n.gamma);
        s.b = tensor(n.beta);
        fuse_relu(s);
        return s;
      case OpType::kRelu:  // standalone: an identity affine with the ReLU fused
        s.op = StepOp::kAffine;
        s.w.assign(out_.shapes.at(n.inputs[0])[0], 1.0f);
        s.b.assign(s.w.size(), 0.0f);
        s.relu = true;
        return s;
      case OpType::kAdd:
        s.op = StepOp::kAdd;
        fuse_relu(s);
        return s;
      case OpType::kL2Norm:
        s.op = StepOp::kL2Norm;
        s.eps = n.eps;
        return s;
    }
    fail("node '", n.name, "': op ", op_name(n.op), " cannot be lowered");
  }

  int new_slot(const std::string& v) {
    const Shape& s = out_.shapes.at(v);
    Slot slot{s[0], s[1], s[2]};
    slot.first = INT_MAX;
    out_.slots.push_back(slot);
    out_.placement[v] = {static_cast<int>(out_.slots.size()) - 1, 0};
    return out_.placement[v].slot;
  }

  void place_values() {
    auto& steps = out_.steps;
    out_.placement[g_.input] = {-1, 0};
    std::set<std::string> concat_outputs, in_place;
    for (const Step& s : steps) {
      if (s.op == StepOp::kDense && s.output == g_.output) continue;  // writes the output
      if (!s.residual.empty()) {
        out_.placement[s.output] = out_.placement.at(s.residual);
        in_place.insert(s.residual);
        in_place.insert(s.output);
      } else {
        new_slot(s.output);
      }
      if (s.op == StepOp::kConcat) concat_outputs.insert(s.output);
    }
    // Full-size concat inputs move into their channel slice of the concat's slot: not the
    // graph input, not another concat (its own aliases would be left behind), not a value
    // sharing its slot with a residual step, and only into the first concat that reads it.
    if (f_.concat_slices) {
      std::set<std::string> aliased;
      for (const Step& s : steps) {
        // A concat whose output is a fused residual is overwritten in place: its inputs keep
        // their own slots.
        if (s.op != StepOp::kConcat || in_place.count(s.output)) continue;
        const Shape& cs = out_.shapes.at(s.output);
        int64_t c0 = 0;
        for (const auto& in : s.inputs) {
          const Shape& is = out_.shapes.at(in);
          if (in != g_.input && !concat_outputs.count(in) && !in_place.count(in) &&
              !aliased.count(in) && out_.placement.count(in) && is[1] == cs[1] && is[2] == cs[2]) {
            out_.placement[in] = {out_.placement.at(s.output).slot, c0};
            aliased.insert(in);
          }
          c0 += is[0];
        }
      }
    }
    // Lifetimes: first write, last read (the graph output lives to the end).
    for (size_t i = 0; i < steps.size(); ++i) {
      const int t = static_cast<int>(i);
      auto touch = [&](const std::string& v, bool write) {
        const auto it = out_.placement.find(v);
        if (it == out_.placement.end() || it->second.slot < 0) return;
        Slot& slot = out_.slots[it->second.slot];
        if (write) slot.first = std::min(slot.first, t);
        slot.last = std::max(slot.last, t);
      };
      touch(steps[i].output, true);
      for (const auto& v : steps[i].inputs) touch(v, false);
      if (!steps[i].residual.empty()) touch(steps[i].residual, false);
    }
    const auto out_it = out_.placement.find(g_.output);
    out_.output_in_arena = out_it != out_.placement.end() && out_it->second.slot >= 0;
    if (out_.output_in_arena) out_.slots[out_it->second.slot].last = static_cast<int>(steps.size());
    assign_offsets();
  }

  int64_t per_image(const Slot& s) const { return (s.elements() + align_ - 1) / align_ * align_; }

  // Greedy by size: each slot takes the lowest offset that overlaps no already placed slot
  // whose lifetime intersects its own. Offsets are per image; x n keeps every slot disjoint.
  void assign_offsets() {
    auto& slots = out_.slots;
    std::vector<int> order(slots.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int>(i);
    std::stable_sort(order.begin(), order.end(),
                     [&](int a, int b) { return per_image(slots[a]) > per_image(slots[b]); });
    std::vector<int> placed;
    for (int id : order) {
      Slot& s = slots[id];
      if (s.first > s.last) continue;  // emptied by aliasing
      std::vector<std::pair<int64_t, int64_t>> busy;
      for (int p : placed)
        if (slots[p].first <= s.last && s.first <= slots[p].last)
          busy.push_back({slots[p].offset, slots[p].offset + per_image(slots[p])});
      std::sort(busy.begin(), busy.end());
      int64_t offset = 0;
      for (const auto& [b, e] : busy) {
        if (offset + per_image(s) <= b) break;
        offset = std::max(offset, e);
      }
      s.offset = offset;
      out_.arena_per_image = std::max(out_.arena_per_image, offset + per_image(s));
      placed.push_back(id);
    }
  }

  const Model& m_;
  const Graph& g_;
  Fusions f_;
  int64_t align_;
  std::map<std::string, int> uses_, last_use_;
  std::set<std::string> concat_inputs_;
  size_t i_ = 0;
  LoweredGraph out_;
};

}  // namespace

LoweredGraph lower(const Model& model, const Fusions& fusions, int64_t align) {
  FN_ASSERT(model.shapes.size() == model.graph.nodes.size());
  return Lowering(model, fusions, align).run();
}

void require_supported(const LoweredGraph& g, const std::string& backend,
                       const std::function<std::string(const Step&)>& why_not) {
  for (const Step& s : g.steps) {
    const std::string why = why_not(s);
    if (why.empty()) continue;
    std::string nodes;
    for (const auto& n : s.nodes) nodes += (nodes.empty() ? "" : "+") + n;
    fail("node '", nodes, "' (", step_op_name(s.op), "): not supported by the ", backend,
         " backend: ", why);
  }
}

}  // namespace facenet
