// nn4.small2 graph construction and Keras-OpenFace CSV import.
#include "engine/model/convert_openface.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <map>
#include <set>

#include "engine/core/error.h"
#include "engine/core/file_bytes.h"

namespace facenet {

namespace {

// Builds the graph node by node; each helper returns the name of the node it added.
class Nn4Builder {
 public:
  explicit Nn4Builder(Nn4Variant v) : variant_(v) {}

  std::string conv_bn_relu(const std::string& conv, const std::string& bn, const std::string& in,
                           int out, int kernel, int stride, int pad, double eps = 1e-5) {
    add(make_conv(conv, in, out, kernel, stride, pad));
    Node b = make_node(OpType::kBatchNorm, bn, {conv});
    b.gamma = bn + "_w";
    b.beta = bn + "_b";
    b.mean = bn + "_m";
    b.var = bn + "_v";
    b.eps = eps;
    add(b);
    return simple(OpType::kRelu, conv + "_relu", bn);
  }

  std::string pool(OpType op, const std::string& name, const std::string& in, int kernel,
                   int stride, int pad = 0) {
    return add(make_node(op, name, {in}, kernel, stride, pad));
  }

  std::string simple(OpType op, const std::string& name, const std::string& in) {
    return add(make_node(op, name, {in}));
  }

  std::string lrn(const std::string& name, const std::string& in) {
    if (variant_ == Nn4Variant::kCoursera) return in;  // the Keras port has no LRN
    return simple(OpType::kLrn, name, in);
  }

  // The L2 pool of the Torch graph; the Keras port uses plain average pooling instead.
  OpType l2pool() const {
    return variant_ == Nn4Variant::kCoursera ? OpType::kAvgPool : OpType::kL2Pool;
  }

  struct PoolBranch {
    OpType op;
    int kernel, stride;
  };

  // Output channels of an inception block's branches (0 = branch absent).
  struct Widths {
    int reduce3, out3, reduce5, out5, pool, out1;
  };

  // One inception block: [1x1 reduce; 3x3] [1x1 reduce; 5x5] [pool (+1x1)] [1x1], each branch
  // but the first optional, concatenated in that order with centred zero padding.
  std::string inception(const std::string& blk, const std::string& in, int stride, Widths w,
                        PoolBranch pb) {
    const std::string p = "inception_" + blk + "_";
    std::vector<std::string> outs;
    outs.push_back(
        conv_bn_relu(p + "3x3_conv2", p + "3x3_bn2",
                     conv_bn_relu(p + "3x3_conv1", p + "3x3_bn1", in, w.reduce3, 1, 1, 0), w.out3,
                     3, stride, 1));
    if (w.out5)
      outs.push_back(
          conv_bn_relu(p + "5x5_conv2", p + "5x5_bn2",
                       conv_bn_relu(p + "5x5_conv1", p + "5x5_bn1", in, w.reduce5, 1, 1, 0), w.out5,
                       5, stride, 2));
    std::string pooled = pool(pb.op, p + "pool", in, pb.kernel, pb.stride);
    outs.push_back(w.pool ? conv_bn_relu(p + "pool_conv", p + "pool_bn", pooled, w.pool, 1, 1, 0)
                          : pooled);
    if (w.out1) outs.push_back(conv_bn_relu(p + "1x1_conv", p + "1x1_bn", in, w.out1, 1, 1, 0));
    return add(make_node(OpType::kConcat, "inception_" + blk, outs));
  }

  Graph finish(std::string output) {
    g_.output = std::move(output);
    return std::move(g_);
  }
  Graph& graph() { return g_; }

 private:
  std::string add(Node n) {
    g_.nodes.push_back(std::move(n));
    return g_.nodes.back().name;
  }
  Nn4Variant variant_;
  Graph g_;
};

}  // namespace

Nn4Variant parse_nn4_variant(const std::string& s) {
  if (s == "openface") return Nn4Variant::kOpenFace;
  if (s == "coursera") return Nn4Variant::kCoursera;
  fail("unknown nn4.small2 variant '", s, "' (expected openface or coursera)");
}

Graph nn4_small2_graph(Nn4Variant variant) {
  Nn4Builder b(variant);
  Graph& g = b.graph();
  g.name = "nn4.small2.v1";
  g.variant = variant == Nn4Variant::kOpenFace ? "openface" : "coursera";
  g.input = "input";
  g.input_shape = {3, 96, 96};
  g.preprocess = {{"color", "rgb"},
                  {"scale", 1.0 / 255.0},
                  {"size", {96, 96}},
                  {"resize", "linear"},
                  {"alignment", "openface-outer-eyes-and-nose-96"}};
  const OpType l2 = b.l2pool();
  const OpType mx = OpType::kMaxPool;

  // Channel widths from the MODEL doc's table.
  std::string x = b.conv_bn_relu("conv1", "bn1", "input", 64, 7, 2, 3,
                                 variant == Nn4Variant::kCoursera ? 1e-3 : 1e-5);
  x = b.pool(mx, "pool1", x, 3, 2, 1);
  x = b.lrn("lrn1", x);
  x = b.conv_bn_relu("conv2", "bn2", x, 64, 1, 1, 0);
  x = b.conv_bn_relu("conv3", "bn3", x, 192, 3, 1, 1);
  x = b.lrn("lrn2", x);
  x = b.pool(mx, "pool2", x, 3, 2, 1);
  x = b.inception("3a", x, 1, {96, 128, 16, 32, 32, 64}, {mx, 3, 2});
  x = b.inception("3b", x, 1, {96, 128, 32, 64, 64, 64}, {l2, 3, 3});
  x = b.inception("3c", x, 2, {128, 256, 32, 64, 0, 0}, {mx, 3, 2});
  x = b.inception("4a", x, 1, {96, 192, 32, 64, 128, 256}, {l2, 3, 3});
  x = b.inception("4e", x, 2, {160, 256, 64, 128, 0, 0}, {mx, 3, 2});
  x = b.inception("5a", x, 1, {96, 384, 0, 0, 96, 256}, {l2, 3, 3});
  x = b.inception("5b", x, 1, {96, 384, 0, 0, 96, 256}, {mx, 3, 2});
  x = b.pool(OpType::kAvgPool, "avgpool", x, 3, 1);
  g.nodes.push_back(make_dense("dense", x, 128));
  return b.finish(b.simple(OpType::kL2Norm, "embedding", "dense"));
}

std::vector<float> read_csv_floats(const std::filesystem::path& file) {
  return parse_csv_floats(read_input_file(file, "CSV file"), file.string());
}

std::vector<float> parse_csv_floats(const std::string& text, const std::string& file) {
  std::vector<float> values;
  const char* p = text.c_str();
  const char* end = p + text.size();
  auto skip_space = [&] {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')) ++p;
  };
  skip_space();
  if (p == end) fail(file, " is empty (expected comma-separated floats)");
  while (p < end) {
    errno = 0;
    char* next = nullptr;
    const float v = std::strtof(p, &next);
    if (next == p || !std::isfinite(v)) {
      const std::string token(p, std::min<size_t>(end - p, 20));
      fail(file, ": element ", values.size(), " is not a finite number ('", token, "')");
    }
    values.push_back(v);
    p = next;
    skip_space();
    if (p < end) {
      if (*p != ',') fail(file, ": expected ',' after element ", values.size() - 1);
      ++p;
      skip_space();
      if (p == end) fail(file, ": trailing ',' after element ", values.size() - 1);
    }
  }
  return values;
}

Model convert_openface_csv(const std::filesystem::path& dir, Nn4Variant variant,
                           std::vector<std::string>* unused) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec))
    fail("weights directory ", dir.string(), " not found (or not a directory)");
  Model m;
  m.graph = nn4_small2_graph(variant);
  // Expected shapes follow from the graph: each conv's input channels are its input's
  // output channels, its output channels are in the node.
  std::set<std::string> used;
  auto load = [&](const std::string& name, const Shape& shape) {
    const auto file = dir / (name + ".csv");
    std::vector<float> v = read_csv_floats(file);
    if (static_cast<int64_t>(v.size()) != element_count(shape))
      fail(file, " has ", v.size(), " values, expected ", element_count(shape), " for shape ",
           shape_string(shape));
    m.tensors[name] = HostTensor(shape, std::move(v));
    used.insert(name);
  };
  std::map<std::string, int64_t> channels{{m.graph.input, m.graph.input_shape[0]}};
  for (const Node& n : m.graph.nodes) {
    int64_t in_c = 0;
    for (const auto& i : n.inputs) in_c += channels.at(i);
    int64_t out_c = in_c;
    if (n.op == OpType::kConv || n.op == OpType::kDense) {
      out_c = n.out;
      // nn4.small2's dense layer sees a 1x1 map, so its inputs are the channels.
      load(n.weight,
           n.op == OpType::kConv ? Shape{out_c, in_c, n.kernel, n.kernel} : Shape{out_c, in_c});
      load(n.bias, {out_c});
    } else if (n.op == OpType::kBatchNorm) {
      for (const auto* t : {&n.gamma, &n.beta, &n.mean, &n.var}) load(*t, {in_c});
    }
    channels[n.name] = out_c;
  }
  if (unused) {
    // Every file the graph needs has been read by now; a listing error only loses the report.
    for (auto it = std::filesystem::directory_iterator(dir, ec);
         !ec && it != std::filesystem::directory_iterator(); it.increment(ec))
      if (it->path().extension() == ".csv" && !used.count(it->path().stem().string()))
        unused->push_back(it->path().filename().string());
    std::sort(unused->begin(), unused->end());
  }
  m.provenance = {{"source", "Keras-OpenFace CSV export of OpenFace nn4.small2.v1"},
                  {"converter", "facenet convert openface-csv"},
                  {"variant", m.graph.variant}};
  validate_model(m);
  return m;
}

}  // namespace facenet
