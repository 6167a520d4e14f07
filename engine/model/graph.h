// The network as data: a list of typed op nodes read from the model file, with shape
// inference and parameter accounting. Backends compile it into their own plans.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/core/tensor.h"

namespace facenet {

enum class OpType {
  kConv,
  kBatchNorm,
  kRelu,
  kMaxPool,
  kAvgPool,
  kL2Pool,
  kLrn,
  kConcat,
  kDense,
  kL2Norm,
  kAffine,  // per-channel y = gamma_c * x + beta_c (dlib's affine_ layer in CONV mode)
  kAdd,     // y = a + b; output dims are the larger of each; the smaller input counts as
            // zero beyond its extent (channels/rows/columns at the end: dlib's add_prev rule)
};

const char* op_name(OpType op);

// One op. Activations are per image C x H x W; a batch adds a leading N.
struct Node {
  std::string name;
  OpType op = OpType::kRelu;
  std::vector<std::string> inputs;  // node names, or the graph input's name

  // conv: weight [out, in, kernel, kernel], bias [out]; pools: window/stride/padding.
  int out = 0;  // conv / dense: output channels / features
  int kernel = 1;
  int stride = 1;
  int pad = 0;
  // conv / dense / batchnorm parameter tensors (names in the model file).
  std::string weight, bias;            // conv, dense (dense weight [out, in])
  std::string gamma, beta, mean, var;  // batchnorm (all four), affine (gamma, beta)
  double eps = 1e-5;                   // batchnorm, l2norm
  // lrn across channels (Torch/PyTorch convention: alpha is divided by size):
  // y_c = x_c / (k + alpha/size * sum_{|j-c|<=size/2} x_j^2)^beta
  int size = 5;
  double alpha = 1e-4, beta_pow = 0.75, k = 1.0;
};

struct Graph {
  std::string name;                                      // e.g. "nn4.small2.v1"
  std::string variant;                                   // e.g. "openface"
  std::string input;                                     // the input's name
  Shape input_shape;                                     // C, H, W
  std::string output;                                    // node name of the embedding
  nlohmann::json preprocess = nlohmann::json::object();  // how images become the input
  std::vector<Node> nodes;  // in execution order: inputs come before their users

  const Node& node(const std::string& name) const;
  int index_of(const std::string& name) const;  // -1 for the graph input
};

// Node constructors for the converters' graph builders.
// An op with its inputs and window (pools; kernel/stride/pad are ignored by the other ops).
Node make_node(OpType op, const std::string& name, std::vector<std::string> inputs, int kernel = 1,
               int stride = 1, int pad = 0);
// A convolution whose parameters are `<name>_w` [out, in, k, k] and `<name>_b` [out].
Node make_conv(const std::string& name, const std::string& input, int out, int kernel, int stride,
               int pad);
// A dense layer with parameters `<name>_w` [out, in] and `<name>_b` [out].
Node make_dense(const std::string& name, const std::string& input, int out);

nlohmann::json graph_to_json(const Graph& g);
Graph graph_from_json(const nlohmann::json& j);  // throws facenet::Error on bad structure

using TensorMap = std::map<std::string, HostTensor>;

// Per-node output shape (C, H, W), index-aligned with g.nodes. Checks every parameter
// tensor's presence and shape against the graph; throws facenet::Error naming the node and
// tensor on a mismatch.
// A model file may ask for no activation above this many values per image (268 MB of
// float32): what any face network needs, and a bound against hostile files.
constexpr int64_t kMaxActivationValues = int64_t{1} << 26;
std::vector<Shape> infer_shapes(const Graph& g, const TensorMap& tensors,
                                int64_t max_activation = kMaxActivationValues);
// Same without parameter tensors (their shapes are not checked): what a converter needs to
// know the shapes it must fill.
std::vector<Shape> infer_shapes(const Graph& g);

// Output spatial size of a k/s/p window op (floor mode), or -1 when the window never fits.
int64_t pooled_size(int64_t in, int kernel, int stride, int pad);

// Multiply-adds of one image's forward pass (convs and dense).
int64_t count_macs(const Graph& g, const std::vector<Shape>& shapes);

}  // namespace facenet
