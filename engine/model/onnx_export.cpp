// ONNX export: each graph op lowered to standard ONNX ops, serialised by a small protobuf
// wire-format writer (field numbers from onnx/onnx.proto).
#include "engine/model/onnx_export.h"

#include <climits>
#include <cstring>
#include <fstream>
#include <set>
#include <string_view>

#include "engine/core/error.h"

namespace facenet {

namespace {

// ---- protobuf wire format ----------------------------------------------------------------
// A field is a varint key (field_number << 3 | wire_type) followed by a varint (type 0:
// int32/int64/enum, negative values as their 64-bit two's complement), 4 little-endian bytes
// (type 5: float) or a varint length and that many bytes (type 2: string, bytes, message).
// Repeated scalars are written one field each (proto2's unpacked default; parsers also
// accept it where the .proto says packed).
class ProtoWriter {
 public:
  ProtoWriter& varint_field(int field, int64_t v) {
    key(field, 0);
    varint(static_cast<uint64_t>(v));
    return *this;
  }
  ProtoWriter& float_field(int field, float v) {
    key(field, 5);
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    for (int i = 0; i < 4; ++i) buf_.push_back(static_cast<char>(bits >> (8 * i) & 0xff));
    return *this;
  }
  ProtoWriter& bytes_field(int field, std::string_view bytes) {
    key(field, 2);
    varint(bytes.size());
    buf_.append(bytes.data(), bytes.size());
    return *this;
  }
  ProtoWriter& message_field(int field, const ProtoWriter& m) { return bytes_field(field, m.buf_); }
  const std::string& bytes() const { return buf_; }

 private:
  void key(int field, int wire_type) { varint(static_cast<uint64_t>(field) << 3 | wire_type); }
  void varint(uint64_t v) {
    for (; v >= 0x80; v >>= 7) buf_.push_back(static_cast<char>((v & 0x7f) | 0x80));
    buf_.push_back(static_cast<char>(v));
  }
  std::string buf_;
};

// Field numbers of onnx/onnx.proto and the enum values used here.
namespace pb {
namespace model {
constexpr int ir_version = 1, producer_name = 2, doc_string = 6, graph = 7, opset_import = 8,
              metadata_props = 14;
}
namespace opset {
constexpr int version = 2;
}
namespace entry {  // StringStringEntryProto
constexpr int key = 1, value = 2;
}
namespace graph {
constexpr int node = 1, name = 2, initializer = 5, input = 11, output = 12;
}
namespace node {
constexpr int input = 1, output = 2, name = 3, op_type = 4, attribute = 5;
}
namespace attr {
constexpr int name = 1, f = 2, i = 3, ints = 8, type = 20;
constexpr int type_float = 1, type_int = 2, type_ints = 7;
}  // namespace attr
namespace tensor {
constexpr int dims = 1, data_type = 2, name = 8, raw_data = 9;
constexpr int float32 = 1, int64 = 7;
}  // namespace tensor
namespace value_info {
constexpr int name = 1, type = 2;
}
namespace type {  // TypeProto.tensor_type, then TypeProto.Tensor's fields
constexpr int tensor_type = 1, elem_type = 1, shape = 2;
}
namespace shape {  // TensorShapeProto.dim, then Dimension's fields
constexpr int dim = 1, dim_value = 1, dim_param = 2;
}
}  // namespace pb

struct Attr {
  std::string name;
  int type;
  float f = 0;
  int64_t i = 0;
  std::vector<int64_t> ints;
};
Attr attr_int(const std::string& name, int64_t v) {
  return {name, pb::attr::type_int, 0, v, {}};
}
Attr attr_float(const std::string& name, double v) {
  return {name, pb::attr::type_float, static_cast<float>(v), 0, {}};
}
Attr attr_ints(const std::string& name, std::vector<int64_t> v) {
  return {name, pb::attr::type_ints, 0, 0, std::move(v)};
}

// Kernel, strides and symmetric pads of a square k/s/p window (conv and pools).
std::vector<Attr> window_attrs(const Node& n) {
  return {attr_ints("kernel_shape", {n.kernel, n.kernel}),
          attr_ints("strides", {n.stride, n.stride}),
          attr_ints("pads", {n.pad, n.pad, n.pad, n.pad})};
}

// The ONNX graph being built: nodes, initializers, and every value name used so far (ONNX
// values must be named uniquely; helper values are "<node>/<what>").
class OnnxGraph {
 public:
  explicit OnnxGraph(const TensorMap& tensors) : tensors_(tensors) {}

  std::string op(const std::string& op_type, const std::vector<std::string>& inputs,
                 const std::string& output, const std::vector<Attr>& attrs = {}) {
    claim(output);
    ProtoWriter n;
    for (const auto& in : inputs) n.bytes_field(pb::node::input, in);
    n.bytes_field(pb::node::output, output).bytes_field(pb::node::name, output);
    n.bytes_field(pb::node::op_type, op_type);
    for (const Attr& a : attrs) {
      ProtoWriter w;
      w.bytes_field(pb::attr::name, a.name).varint_field(pb::attr::type, a.type);
      if (a.type == pb::attr::type_float) w.float_field(pb::attr::f, a.f);
      if (a.type == pb::attr::type_int) w.varint_field(pb::attr::i, a.i);
      for (int64_t v : a.ints) w.varint_field(pb::attr::ints, v);
      n.message_field(pb::node::attribute, w);
    }
    graph_.message_field(pb::graph::node, n);
    return output;
  }

  // A model tensor as an initializer with the given dims (its own shape when empty), once.
  std::string weight(const std::string& name, Shape dims = {}) {
    const HostTensor& t = tensors_.at(name);
    if (dims.empty()) dims = t.shape;
    FN_ASSERT(element_count(dims) == t.size());
    std::string value = name;
    if (dims != t.shape)
      for (size_t i = 0; i < dims.size(); ++i) value += (i ? "x" : "/") + std::to_string(dims[i]);
    if (!initialized_.insert(value).second) return value;
    claim(value);
    add_initializer(value, dims, pb::tensor::float32, t.data.data(), t.size() * sizeof(float));
    return value;
  }
  std::string constant(const std::string& name, float v) {
    claim(name);
    add_initializer(name, {}, pb::tensor::float32, &v, sizeof v);
    return name;
  }
  std::string constant(const std::string& name, const std::vector<int64_t>& v) {
    claim(name);
    add_initializer(name, {static_cast<int64_t>(v.size())}, pb::tensor::int64, v.data(),
                    v.size() * sizeof(int64_t));
    return name;
  }

  // Graph input or output: float32 [N, dims...] with N symbolic.
  void io(int field, const std::string& name, const Shape& dims) {
    ProtoWriter sh;
    sh.message_field(pb::shape::dim, ProtoWriter().bytes_field(pb::shape::dim_param, "N"));
    for (int64_t d : dims)
      sh.message_field(pb::shape::dim, ProtoWriter().varint_field(pb::shape::dim_value, d));
    ProtoWriter tensor_type;
    tensor_type.varint_field(pb::type::elem_type, pb::tensor::float32)
        .message_field(pb::type::shape, sh);
    ProtoWriter vi;
    vi.bytes_field(pb::value_info::name, name)
        .message_field(pb::value_info::type,
                       ProtoWriter().message_field(pb::type::tensor_type, tensor_type));
    graph_.message_field(field, vi);
  }

  void claim(const std::string& value) {
    if (!names_.insert(value).second)
      fail("ONNX export: the value name '", value,
           "' is taken twice (a node is named like the input, another node or one of the "
           "'<node>/...' helper values: rename it)");
  }
  ProtoWriter& proto() { return graph_; }

 private:
  // raw_data is little-endian: the bytes as they lie in memory on the hosts we build for.
  static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "raw_data needs a little-endian host");
  void add_initializer(const std::string& name, const Shape& dims, int data_type, const void* data,
                       size_t bytes) {
    ProtoWriter t;
    for (int64_t d : dims) t.varint_field(pb::tensor::dims, d);
    t.varint_field(pb::tensor::data_type, data_type).bytes_field(pb::tensor::name, name);
    t.bytes_field(pb::tensor::raw_data, std::string_view(static_cast<const char*>(data), bytes));
    graph_.message_field(pb::graph::initializer, t);
  }

  const TensorMap& tensors_;
  ProtoWriter graph_;
  std::set<std::string> names_, initialized_;
};

// Zero-pads `x` (NCHW, per-image shape `from`) to `to`: `before` cells ahead on H and W, the
// rest after; channels grow at the end. Returns x when nothing is padded.
std::string pad_to(OnnxGraph& g, const std::string& x, const std::string& name, const Shape& from,
                   const Shape& to, bool centred) {
  if (from == to) return x;
  const int64_t dc = to[0] - from[0], dh = to[1] - from[1], dw = to[2] - from[2];
  const int64_t top = centred ? dh / 2 : 0, left = centred ? dw / 2 : 0;
  const auto pads = g.constant(name + "/pads", {0, 0, top, left, 0, dc, dh - top, dw - left});
  return g.op("Pad", {x, pads}, name);
}

// Emits node `n` reading `in` (ONNX value names of its inputs), producing `out`.
void lower(OnnxGraph& g, const Node& n, const std::vector<std::string>& in,
           const std::vector<Shape>& in_shapes, const Shape& out_shape, const std::string& out) {
  const std::string& x = in[0];
  switch (n.op) {
    case OpType::kConv: {
      std::vector<Attr> a = window_attrs(n);
      a.push_back(attr_ints("dilations", {1, 1}));
      a.push_back(attr_int("group", 1));
      g.op("Conv", {x, g.weight(n.weight), g.weight(n.bias)}, out, a);
      break;
    }
    case OpType::kBatchNorm:
      g.op("BatchNormalization",
           {x, g.weight(n.gamma), g.weight(n.beta), g.weight(n.mean), g.weight(n.var)}, out,
           {attr_float("epsilon", n.eps)});
      break;
    case OpType::kAffine: {  // y = gamma_c x + beta_c: [C, 1, 1] broadcasts over N, H, W
      const Shape c11 = {in_shapes[0][0], 1, 1};
      const auto scaled = g.op("Mul", {x, g.weight(n.gamma, c11)}, out + "/scaled");
      g.op("Add", {scaled, g.weight(n.beta, c11)}, out);
      break;
    }
    case OpType::kRelu:
      g.op("Relu", {x}, out);
      break;
    case OpType::kMaxPool:  // ONNX's padded cells never win, as in the reference
      g.op("MaxPool", {x}, out, window_attrs(n));
      break;
    case OpType::kAvgPool: {  // divides by kernel^2, padded cells included
      std::vector<Attr> a = window_attrs(n);
      a.push_back(attr_int("count_include_pad", 1));
      g.op("AveragePool", {x}, out, a);
      break;
    }
    case OpType::kL2Pool: {
      // sqrt(sum over the window of x^2) = sqrt(k^2 * mean of x^2, padding counted as 0):
      // AveragePool is implemented everywhere, LpPool's padding is not.
      std::vector<Attr> a = window_attrs(n);
      a.push_back(attr_int("count_include_pad", 1));
      const auto sq = g.op("Mul", {x, x}, out + "/square");
      const auto mean = g.op("AveragePool", {sq}, out + "/mean_square", a);
      const auto area = g.constant(out + "/window_area", static_cast<float>(n.kernel * n.kernel));
      g.op("Sqrt", {g.op("Mul", {mean, area}, out + "/sum_square")}, out);
      break;
    }
    case OpType::kLrn:
      // ONNX sums over channels [c - (size-1)/2, c + size/2]: the reference's |j - c| <= size/2
      // only when size is odd.
      if (n.size % 2 == 0)
        fail("ONNX export: node '", n.name, "' (lrn) has an even size ", n.size,
             "; ONNX LRN's window is asymmetric for even sizes, the graph's is not");
      g.op("LRN", {x}, out,
           {attr_int("size", n.size), attr_float("alpha", n.alpha), attr_float("beta", n.beta_pow),
            attr_float("bias", n.k)});
      break;
    case OpType::kConcat: {  // smaller maps zero-padded, centred (floor of half the gap before)
      std::vector<std::string> parts;
      for (size_t i = 0; i < in.size(); ++i) {
        const Shape to = {in_shapes[i][0], out_shape[1], out_shape[2]};
        parts.push_back(pad_to(g, in[i], out + "/pad" + std::to_string(i), in_shapes[i], to, true));
      }
      g.op("Concat", parts, out, {attr_int("axis", 1)});
      break;
    }
    case OpType::kAdd: {  // dlib's add_prev: the smaller input is zero beyond its extent
      const auto a = pad_to(g, in[0], out + "/pad0", in_shapes[0], out_shape, false);
      const auto b = pad_to(g, in[1], out + "/pad1", in_shapes[1], out_shape, false);
      g.op("Add", {a, b}, out);
      break;
    }
    case OpType::kDense: {  // CHW flattened; the result kept 4-D [N, out, 1, 1] like the graph's
      const auto flat = g.op("Flatten", {x}, out + "/flat", {attr_int("axis", 1)});
      const auto y = g.op("Gemm", {flat, g.weight(n.weight), g.weight(n.bias)}, out + "/gemm",
                          {attr_int("transB", 1)});
      g.op("Reshape", {y, g.constant(out + "/shape", {0, n.out, 1, 1})}, out);
      break;
    }
    case OpType::kL2Norm: {  // x / sqrt(max(sum x^2, eps)) over each image's C x H x W
      const auto ss = g.op("ReduceSumSquare", {x}, out + "/sum_square",
                           {attr_ints("axes", {1, 2, 3}), attr_int("keepdims", 1)});
      const auto clamped = g.op("Max", {ss, g.constant(out + "/eps", n.eps)}, out + "/clamped");
      g.op("Div", {x, g.op("Sqrt", {clamped}, out + "/norm")}, out);
      break;
    }
  }
}

ProtoWriter metadata(const std::string& key, const std::string& value) {
  ProtoWriter e;
  e.bytes_field(pb::entry::key, key).bytes_field(pb::entry::value, value);
  return e;
}

}  // namespace

std::string export_onnx(const Model& model) {
  const Graph& gr = model.graph;
  const std::vector<Shape> shapes = infer_shapes(gr, model.tensors);
  const int out_index = gr.index_of(gr.output);
  if (out_index < 0) fail("ONNX export: the graph's output '", gr.output, "' is its input");
  OnnxGraph g(model.tensors);
  g.claim(gr.input);
  // ONNX value name of each graph value. The graph output's name goes to the flattened
  // [N, D] embedding, so the output node's own 4-D value gets a suffix.
  auto value_of = [&](const std::string& name) {
    return name == gr.output ? name + "/nchw" : name;
  };
  for (size_t i = 0; i < gr.nodes.size(); ++i) {
    const Node& n = gr.nodes[i];
    std::vector<std::string> in;
    std::vector<Shape> in_shapes;
    for (const auto& name : n.inputs) {
      const int j = gr.index_of(name);
      in.push_back(value_of(name));
      in_shapes.push_back(j < 0 ? gr.input_shape : shapes[j]);
    }
    lower(g, n, in, in_shapes, shapes[i], value_of(n.name));
  }
  g.op("Flatten", {value_of(gr.output)}, gr.output, {attr_int("axis", 1)});
  g.io(pb::graph::input, gr.input, gr.input_shape);
  g.io(pb::graph::output, gr.output, {element_count(shapes[out_index])});
  g.proto().bytes_field(pb::graph::name, gr.name);

  ProtoWriter m;
  m.varint_field(pb::model::ir_version, kOnnxIrVersion)
      .message_field(pb::model::opset_import,
                     ProtoWriter().varint_field(pb::opset::version, kOnnxOpset))
      .bytes_field(pb::model::producer_name, "facenet-engine")
      .bytes_field(pb::model::doc_string,
                   gr.name + " (" + gr.variant + "), exported by `facenet export onnx`")
      .message_field(pb::model::graph, g.proto())
      .message_field(pb::model::metadata_props, metadata("facenet.graph_name", gr.name))
      .message_field(pb::model::metadata_props, metadata("facenet.variant", gr.variant))
      .message_field(pb::model::metadata_props,
                     metadata("facenet.preprocess", gr.preprocess.dump()));
  // Protobuf messages are limited to 2 GiB; larger models would need ONNX's external data.
  if (m.bytes().size() > static_cast<size_t>(INT32_MAX))
    fail("ONNX export: the model is ", m.bytes().size() >> 20,
         " MiB, over protobuf's 2 GiB limit (external weight files are not supported)");
  return m.bytes();
}

void export_onnx_file(const std::filesystem::path& model_file,
                      const std::filesystem::path& onnx_file) {
  const Model model = load_model(model_file);
  std::string bytes;
  try {
    bytes = export_onnx(model);
  } catch (const Error& e) {
    fail(model_file.string(), ": ", e.what());
  }
  std::ofstream out(onnx_file, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out.flush()) fail(onnx_file.string(), ": cannot write the ONNX model");
}

}  // namespace facenet
