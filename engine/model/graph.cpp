// Graph (de)serialisation and shape inference.
#include "engine/model/graph.h"

#include <algorithm>
#include <cmath>

#include "engine/core/error.h"

namespace facenet {

namespace {
// The largest extent (channels, rows, columns, window) a graph may ask for: beyond any face
// model, and small enough that no shape arithmetic on int64 can overflow.
constexpr int64_t kMaxExtent = int64_t{1} << 16;
// The most values one activation of one image may hold (256 MiB of float32): a face model's
// largest is well under a million; this bounds what a hostile graph can make a backend
// allocate per image.
constexpr int64_t kMaxActivation = kMaxActivationValues;

// An integer field of a node or of the graph: nlohmann's get<int> would truncate 1.5 to 1 and
// wrap 4294967297 to 1, so both are refused here; the range is checked where it is used.
int checked_int(const nlohmann::json& v, const std::string& what) {
  const bool fits = v.is_number_unsigned() ? v.get<uint64_t>() <= INT32_MAX
                    : v.is_number_integer()
                        ? v.get<int64_t>() >= INT32_MIN && v.get<int64_t>() <= INT32_MAX
                        : false;
  if (!fits) fail(what, " must be an integer (got ", v.dump(), ")");
  return static_cast<int>(v.get<int64_t>());
}

int int_field(const nlohmann::json& j, const char* key, int fallback, const std::string& where) {
  return j.contains(key) ? checked_int(j.at(key), where + ": '" + key + "'") : fallback;
}
}  // namespace

namespace {

struct OpEntry {
  OpType op;
  const char* name;
};
constexpr OpEntry kOps[] = {
    {OpType::kConv, "conv"},       {OpType::kBatchNorm, "batchnorm"}, {OpType::kRelu, "relu"},
    {OpType::kMaxPool, "maxpool"}, {OpType::kAvgPool, "avgpool"},     {OpType::kL2Pool, "l2pool"},
    {OpType::kLrn, "lrn"},         {OpType::kConcat, "concat"},       {OpType::kDense, "dense"},
    {OpType::kL2Norm, "l2norm"},   {OpType::kAffine, "affine"},       {OpType::kAdd, "add"},
};

OpType op_from_name(const std::string& s, const std::string& node) {
  for (const auto& e : kOps)
    if (s == e.name) return e.op;
  fail("graph node '", node, "': unknown op '", s, "'");
}

bool is_pool(OpType op) {
  return op == OpType::kMaxPool || op == OpType::kAvgPool || op == OpType::kL2Pool;
}

// Checks a parameter tensor's presence and shape; no-op when `t` is null (shapes only).
void param(const TensorMap* t, const Node& n, const std::string& name, const Shape& expected) {
  if (!t) return;
  auto it = t->find(name);
  if (name.empty() || it == t->end())
    fail("node '", n.name, "': parameter tensor '", name, "' is missing from the model");
  if (it->second.shape != expected)
    fail("node '", n.name, "': tensor '", name, "' has shape ", shape_string(it->second.shape),
         ", expected ", shape_string(expected));
}

}  // namespace

const char* op_name(OpType op) {
  for (const auto& e : kOps)
    if (op == e.op) return e.name;
  return "?";
}

int Graph::index_of(const std::string& n) const {
  for (size_t i = 0; i < nodes.size(); ++i)
    if (nodes[i].name == n) return static_cast<int>(i);
  if (n == input) return -1;
  fail("graph '", name, "': no node named '", n, "'");
}

const Node& Graph::node(const std::string& n) const {
  int i = index_of(n);
  if (i < 0) fail("graph '", name, "': '", n, "' is the input, not a node");
  return nodes[i];
}

Node make_node(OpType op, const std::string& name, std::vector<std::string> inputs, int kernel,
               int stride, int pad) {
  Node n;
  n.name = name;
  n.op = op;
  n.inputs = std::move(inputs);
  n.kernel = kernel;
  n.stride = stride;
  n.pad = pad;
  return n;
}

Node make_conv(const std::string& name, const std::string& input, int out, int kernel, int stride,
               int pad) {
  Node c = make_node(OpType::kConv, name, {input}, kernel, stride, pad);
  c.out = out;
  c.weight = name + "_w";
  c.bias = name + "_b";
  return c;
}

Node make_dense(const std::string& name, const std::string& input, int out) {
  Node d = make_node(OpType::kDense, name, {input});
  d.out = out;
  d.weight = name + "_w";
  d.bias = name + "_b";
  return d;
}

nlohmann::json graph_to_json(const Graph& g) {
  nlohmann::json nodes = nlohmann::json::array();
  for (const Node& n : g.nodes) {
    nlohmann::json j = {{"name", n.name}, {"op", op_name(n.op)}, {"inputs", n.inputs}};
    switch (n.op) {
      case OpType::kConv:
        j.update({{"out", n.out},
                  {"kernel", n.kernel},
                  {"stride", n.stride},
                  {"pad", n.pad},
                  {"weight", n.weight},
                  {"bias", n.bias}});
        break;
      case OpType::kDense:
        j.update({{"out", n.out}, {"weight", n.weight}, {"bias", n.bias}});
        break;
      case OpType::kBatchNorm:
        j.update({{"gamma", n.gamma},
                  {"beta", n.beta},
                  {"mean", n.mean},
                  {"var", n.var},
                  {"eps", n.eps}});
        break;
      case OpType::kAffine:
        j.update({{"gamma", n.gamma}, {"beta", n.beta}});
        break;
      case OpType::kMaxPool:
      case OpType::kAvgPool:
      case OpType::kL2Pool:
        j.update({{"kernel", n.kernel}, {"stride", n.stride}, {"pad", n.pad}});
        break;
      case OpType::kLrn:
        j.update({{"size", n.size}, {"alpha", n.alpha}, {"beta", n.beta_pow}, {"k", n.k}});
        break;
      case OpType::kL2Norm:
        j["eps"] = n.eps;
        break;
      case OpType::kRelu:
      case OpType::kConcat:
      case OpType::kAdd:
        break;
    }
    nodes.push_back(std::move(j));
  }
  return {{"format", "facenet-graph"},
          {"version", 1},
          {"name", g.name},
          {"variant", g.variant},
          {"input", {{"name", g.input}, {"shape", g.input_shape}}},
          {"output", g.output},
          {"preprocess", g.preprocess},
          {"nodes", nodes}};
}

Graph graph_from_json(const nlohmann::json& j) {
  Graph g;
  try {
    if (j.value("format", "") != "facenet-graph")
      fail("model graph: 'format' is not \"facenet-graph\"");
    if (j.at("version") != 1)
      fail("model graph: version ", j.at("version").dump(), " is not supported (expected 1)");
    g.name = j.at("name").get<std::string>();
    g.variant = j.value("variant", "");
    g.input = j.at("input").at("name").get<std::string>();
    const auto& shape = j.at("input").at("shape");
    if (!shape.is_array() || shape.size() != 3) fail("model graph: input shape must be [C, H, W]");
    for (size_t i = 0; i < 3; ++i)
      g.input_shape.push_back(checked_int(shape[i], "model graph: input shape"));
    g.output = j.at("output").get<std::string>();
    g.preprocess = j.value("preprocess", nlohmann::json::object());
    for (const auto& jn : j.at("nodes")) {
      Node n;
      n.name = jn.at("name").get<std::string>();
      n.op = op_from_name(jn.at("op").get<std::string>(), n.name);
      n.inputs = jn.at("inputs").get<std::vector<std::string>>();
      const std::string where = "node '" + n.name + "'";
      n.out = int_field(jn, "out", 0, where);
      n.kernel = int_field(jn, "kernel", 1, where);
      n.stride = int_field(jn, "stride", 1, where);
      n.pad = int_field(jn, "pad", 0, where);
      n.weight = jn.value("weight", "");
      n.bias = jn.value("bias", "");
      if (n.op == OpType::kBatchNorm) {
        n.gamma = jn.at("gamma").get<std::string>();
        n.beta = jn.at("beta").get<std::string>();
        n.mean = jn.at("mean").get<std::string>();
        n.var = jn.at("var").get<std::string>();
      }
      if (n.op == OpType::kAffine) {
        n.gamma = jn.at("gamma").get<std::string>();
        n.beta = jn.at("beta").get<std::string>();
      }
      n.eps = jn.value("eps", n.op == OpType::kL2Norm ? 1e-12 : 1e-5);
      if (n.op == OpType::kLrn) {
        n.size = int_field(jn, "size", 5, where);
        n.alpha = jn.value("alpha", 1e-4);
        n.beta_pow = jn.value("beta", 0.75);
        n.k = jn.value("k", 1.0);
      }
      g.nodes.push_back(std::move(n));
    }
  } catch (const nlohmann::json::exception& e) {
    fail("model graph: malformed description (", e.what(), ")");
  }
  if (g.input_shape.size() != 3) fail("model graph: input shape must be [C, H, W]");
  for (int64_t d : g.input_shape)
    if (d < 1 || d > kMaxExtent)
      fail("model graph: input shape [", g.input_shape[0], ", ", g.input_shape[1], ", ",
           g.input_shape[2], "] must have every extent in 1..", kMaxExtent);
  if (element_count(g.input_shape) > kMaxActivation)
    fail("model graph: input shape ", shape_string(g.input_shape), " holds more than ",
         kMaxActivation, " values");
  return g;
}

namespace {

// Checks a node's attributes before any arithmetic uses them (a stride of 0 would divide by
// zero in pooled_size; an LRN size below 1 would index outside its window).
void check_attributes(const Node& n) {
  auto in_range = [](int64_t v, int64_t lo, int64_t hi) { return lo <= v && v <= hi; };
  if (n.op == OpType::kConv || is_pool(n.op)) {
    if (!in_range(n.kernel, 1, kMaxExtent) || !in_range(n.stride, 1, kMaxExtent) ||
        !in_range(n.pad, 0, kMaxExtent))
      fail("node '", n.name, "': kernel ", n.kernel, ", stride ", n.stride, ", pad ", n.pad,
           " (kernel and stride must be 1..", kMaxExtent, ", pad 0..", kMaxExtent, ")");
    // A pooling window wholly inside the padding has no value to take (max of nothing).
    if (is_pool(n.op) && n.pad >= n.kernel)
      fail("node '", n.name, "': pad ", n.pad, " must be smaller than the pooling window ",
           n.kernel);
  }
  if ((n.op == OpType::kConv || n.op == OpType::kDense) && !in_range(n.out, 1, kMaxExtent))
    fail("node '", n.name, "': 'out' (output channels) is ", n.out, "; must be 1..", kMaxExtent);
  if (n.op == OpType::kLrn) {
    if (!in_range(n.size, 1, kMaxExtent))
      fail("node '", n.name, "': LRN size ", n.size, " must be 1..", kMaxExtent);
    if (!std::isfinite(n.alpha) || !std::isfinite(n.beta_pow) || !std::isfinite(n.k) || n.k <= 0)
      fail("node '", n.name, "': LRN alpha, beta and k must be finite and k > 0");
  }
  if ((n.op == OpType::kBatchNorm || n.op == OpType::kL2Norm) && !(n.eps > 0 && n.eps < 1))
    fail("node '", n.name, "': eps ", n.eps, " must be in (0, 1)");
}

}  // namespace

int64_t pooled_size(int64_t in, int kernel, int stride, int pad) {
  const int64_t span = in + 2 * pad - kernel;
  return span < 0 ? -1 : span / stride + 1;
}

namespace {

// Shape inference; parameter tensors are checked when `t` is not null.
std::vector<Shape> infer_shapes_checked(const Graph& g, const TensorMap* t,
                                        int64_t max_activation) {
  std::vector<Shape> shapes(g.nodes.size());
  auto shape_of = [&](const std::string& name) -> const Shape& {
    int i = g.index_of(name);
    return i < 0 ? g.input_shape : shapes[i];
  };
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    // Inputs are found by name, so a name must mean one thing.
    if (n.name.empty()) fail("node ", i, " has an empty name");
    if (n.name == g.input || g.index_of(n.name) != static_cast<int>(i))
      fail("node '", n.name, "': the name is used twice in the graph");
    if (n.inputs.empty()) fail("node '", n.name, "' has no inputs");
    for (const auto& in : n.inputs)
      if (g.index_of(in) >= static_cast<int>(i))
        fail("node '", n.name, "' uses '", in, "' before it is computed");
    if (n.op == OpType::kAdd && n.inputs.size() != 2)
      fail("node '", n.name, "' (add) takes exactly two inputs");
    if (n.op != OpType::kConcat && n.op != OpType::kAdd && n.inputs.size() != 1)
      fail("node '", n.name, "' (", op_name(n.op), ") takes exactly one input");
    check_attributes(n);
    const Shape& x = shape_of(n.inputs[0]);
    Shape y = x;
    switch (n.op) {
      case OpType::kConv:
        param(t, n, n.weight, {n.out, x[0], n.kernel, n.kernel});
        param(t, n, n.bias, {n.out});
        y = {n.out, pooled_size(x[1], n.kernel, n.stride, n.pad),
             pooled_size(x[2], n.kernel, n.stride, n.pad)};
        break;
      case OpType::kBatchNorm:
        for (const auto* p : {&n.gamma, &n.beta, &n.mean, &n.var}) param(t, n, *p, {x[0]});
        break;
      case OpType::kAffine:
        for (const auto* p : {&n.gamma, &n.beta}) param(t, n, *p, {x[0]});
        break;
      case OpType::kAdd: {
        const Shape& b = shape_of(n.inputs[1]);
        y = {std::max(x[0], b[0]), std::max(x[1], b[1]), std::max(x[2], b[2])};
        break;
      }
      case OpType::kMaxPool:
      case OpType::kAvgPool:
      case OpType::kL2Pool:
        y = {x[0], pooled_size(x[1], n.kernel, n.stride, n.pad),
             pooled_size(x[2], n.kernel, n.stride, n.pad)};
        break;
      case OpType::kDense:
        param(t, n, n.weight, {n.out, element_count(x)});
        param(t, n, n.bias, {n.out});
        y = {n.out, 1, 1};
        break;
      case OpType::kConcat: {
        int64_t c = 0, h = 0, w = 0;
        for (const auto& in : n.inputs) {
          const Shape& s = shape_of(in);
          c += s[0];
          h = std::max(h, s[1]);
          w = std::max(w, s[2]);
        }
        y = {c, h, w};
        if (c > kMaxExtent)
          fail("node '", n.name, "': concat of ", c, " channels (at most ", kMaxExtent, ")");
        break;
      }
      case OpType::kRelu:
      case OpType::kLrn:
      case OpType::kL2Norm:
        break;
    }
    if (y[1] < 1 || y[2] < 1)
      fail("node '", n.name, "': window ", n.kernel, "/", n.stride, " pad ", n.pad,
           " does not fit its ", x[1], "x", x[2], " input");
    if (y[1] > kMaxExtent || y[2] > kMaxExtent || element_count(y) > max_activation)
      fail("node '", n.name, "': output ", shape_string(y), " is larger than allowed (extents ",
           "at most ", kMaxExtent, ", at most ", max_activation, " values per image)");
    shapes[i] = y;
  }
  return shapes;
}

}  // namespace

std::vector<Shape> infer_shapes(const Graph& g, const TensorMap& tensors, int64_t max_activation) {
  return infer_shapes_checked(g, &tensors, max_activation);
}

std::vector<Shape> infer_shapes(const Graph& g) {
  return infer_shapes_checked(g, nullptr, kMaxActivation);
}

int64_t count_macs(const Graph& g, const std::vector<Shape>& shapes) {
  int64_t macs = 0;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    const int gi = g.index_of(n.inputs[0]);
    const Shape& x = gi < 0 ? g.input_shape : shapes[gi];
    if (n.op == OpType::kConv)
      macs += element_count(shapes[i]) * x[0] * n.kernel * n.kernel;
    else if (n.op == OpType::kDense)
      macs += shapes[i][0] * element_count(x);
  }
  return macs;
}

}  // namespace facenet
