// The one lowering: a model's graph -> a plan of fused steps and where every value lives.
// Every fast backend (cpu on oneDNN, cuda on cuDNN) runs this plan through one switch; the
// reference backend keeps executing the plain graph and is the oracle for both.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "engine/backend/pool_kind.h"
#include "engine/model/model.h"

namespace facenet {

// What a lowered step computes. BatchNorm and affine after a conv/dense are folded into its
// weights; a BatchNorm anywhere else becomes an affine (inference BN is per-channel
// y = s_c x + t_c); a ReLU that is the sole consumer of a conv/dense/affine/add is fused into
// it; a standalone ReLU becomes an affine with gamma 1, beta 0 and the ReLU fused.
enum class StepOp {
  kConv,    // y = relu?(W * x + b [+ residual]); w [out][in][k][k]
  kDense,   // y = relu?(W flatten(x) + b), optionally l2-normalised; w [out][in*h*w]
  kPool,    // max / avg (divides by kernel^2, padding counts as zeros) / l2 window kPool
  kLrn,     // cross-channel LRN (node attributes)
  kConcat,  // channel concat; a smaller map is zero-padded, centred
  kAffine,  // y = relu?(gamma_c x + beta_c); gamma in w, beta in b
  kAdd,     // y = relu?(a + b), the smaller input zero-extended at the end of each axis
  kL2Norm,  // y = x / sqrt(max(sum x^2, eps)) per image
};

const char* step_op_name(StepOp op);

struct Step {
  StepOp op = StepOp::kConv;
  std::vector<std::string> inputs;  // value names (graph input or a step's output)
  std::string output;               // value name: the name of the last node fused into it
  std::vector<std::string> nodes;   // the graph nodes this step computes, in order
  // conv / dense: folded weights and bias (float32). affine: gamma in w, beta in b.
  std::vector<float> w, b;
  int out = 0;  // conv / dense: output channels / features
  int in = 0;   // conv: input channels; dense: input features (C*H*W of its input)
  int kernel = 1, stride = 1, pad = 0;  // conv and pool
  bool relu = false;
  // conv with a fused residual add: the value added before the ReLU. The step's output lives
  // where `residual` lives (its last use is this step), so a backend computes in place:
  // dst = conv(x) + dst (oneDNN's sum post-op, cuDNN's z input).
  std::string residual;
  // dense: its input is the map before a global average pool fused into this step (the
  // pool's window covers the whole map); `in` is then the pooled feature count.
  bool global_pool = false;
  bool l2norm = false;  // dense: its output L2-normalised (eps below)
  double eps = 1e-10;   // dense with l2norm / l2norm
  PoolKind pool = PoolKind::kMax;
  int lrn_size = 5;
  double lrn_alpha = 1e-4, lrn_beta = 0.75, lrn_k = 1.0;
};

// Fusions a backend can execute; the lowering applies only those asked for.
struct Fusions {
  bool residual_add = false;       // add(conv, x) -> conv with `residual`, same shapes only
  bool global_pool_dense = false;  // avgpool over the whole map, then dense -> one dense step
  bool concat_slices = false;      // full-size concat inputs are written straight into their slice
};

// Where a value lives: in arena slot `slot` starting at channel `c0` of that slot's channels;
// slot -1 is the graph input's own buffer. The output of a dense step that is the graph
// output has no placement: that step writes the caller's output buffer.
struct Placement {
  int slot = -1;
  int64_t c0 = 0;
};

// An arena region, per image: `c` x `h` x `w` elements at `offset` elements from the arena
// start (times the batch size n: a slot holds n images). Slots whose lifetimes (the steps
// that write [first] and last read [last] them) do not overlap share memory.
struct Slot {
  int64_t c = 0, h = 0, w = 0;
  int first = 0, last = -1;
  int64_t offset = 0;
  int64_t elements() const { return c * h * w; }
};

struct LoweredGraph {
  std::string input, output;
  Shape input_shape;
  std::map<std::string, Shape> shapes;  // every value's C, H, W
  std::vector<Step> steps;
  std::map<std::string, Placement> placement;
  std::vector<Slot> slots;
  int64_t arena_per_image = 0;   // elements per image the arena needs
  bool output_in_arena = false;  // the output is a slot value (not written by a dense step)

  const Shape& shape(const std::string& value) const { return shapes.at(value); }
  int64_t output_dim() const { return element_count(shapes.at(output)); }
};

// Lowers a validated model. `align` rounds each slot's per-image size up to a multiple of
// that many elements. Throws facenet::Error naming the node for what cannot be lowered.
LoweredGraph lower(const Model& model, const Fusions& fusions, int64_t align = 1);

// Throws facenet::Error naming the step's nodes and the backend when `why_not` (a backend's
// support check: empty string = supported) rejects any step.
void require_supported(const LoweredGraph& g, const std::string& backend,
                       const std::function<std::string(const Step&)>& why_not);

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
