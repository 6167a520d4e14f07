// The dlib converters' shared parts: reading a .dat, and filling a graph's tensors from the
// layers dlib_layers::collect read off the network.
#include "engine/model/dlib_layers.h"

#include <system_error>

#include "engine/core/file_bytes.h"

namespace facenet::dlib_layers {

std::string read_dat(const std::filesystem::path& dat, const std::string& what) {
  std::error_code ec;
  if (!std::filesystem::exists(dat, ec))
    fail(dat.string(), ": not found (run weights/fetch_dlib_models.sh)");
  if (std::filesystem::file_size(dat, ec) > kMaxDatBytes && !ec)
    fail(dat.string(), ": larger than any ", what, " (at most ", kMaxDatBytes, " bytes)");
  return read_input_file(dat, what);
}

void assign(Model& m, std::vector<Layer> layers, const std::string& origin) {
  const auto shapes = infer_shapes(m.graph);
  size_t next = 0;
  auto take = [&](Layer::Kind kind, const Node& n) -> Layer& {
    if (next >= layers.size() || layers[next].kind != kind)
      fail(origin, ": layer ", next, " does not match node '", n.name, "' (", op_name(n.op), ")");
    return layers[next++];
  };
  for (size_t i = 0; i < m.graph.nodes.size(); ++i) {
    const Node& n = m.graph.nodes[i];
    const int in_index = m.graph.index_of(n.inputs[0]);
    const Shape& x = in_index < 0 ? m.graph.input_shape : shapes[in_index];
    if (n.op == OpType::kConv) {
      Layer& l = take(Layer::Kind::kConv, n);
      if (l.out != n.out || l.kernel != n.kernel || l.stride != n.stride || l.pad != n.pad)
        fail(origin, ": conv '", n.name, "' is ", l.out, " filters ", l.kernel, "x", l.kernel, "/",
             l.stride, " pad ", l.pad, "; the graph expects ", n.out, " ", n.kernel, "x", n.kernel,
             "/", n.stride, " pad ", n.pad);
      const Shape ws{n.out, x[0], n.kernel, n.kernel};
      if (static_cast<int64_t>(l.weight.size()) != element_count(ws))
        fail(origin, ": conv '", n.name, "' has ", l.weight.size(), " weights, expected ",
             element_count(ws));
      if (static_cast<int64_t>(l.bias.size()) != n.out)
        fail(origin, ": conv '", n.name, "' has ", l.bias.size(), " biases, expected ", n.out);
      m.tensors[n.weight] = HostTensor(ws, std::move(l.weight));
      m.tensors[n.bias] = HostTensor({n.out}, std::move(l.bias));
    } else if (n.op == OpType::kAffine) {
      Layer& l = take(Layer::Kind::kAffine, n);
      if (static_cast<int64_t>(l.weight.size()) != x[0])
        fail(origin, ": affine '", n.name, "' has ", l.weight.size(), " channels, expected ", x[0]);
      if (static_cast<int64_t>(l.bias.size()) != x[0])
        fail(origin, ": affine '", n.name, "' has ", l.bias.size(), " betas, expected ", x[0]);
      m.tensors[n.gamma] = HostTensor({x[0]}, std::move(l.weight));
      m.tensors[n.beta] = HostTensor({x[0]}, std::move(l.bias));
    } else if (n.op == OpType::kDense) {
      Layer& l = take(Layer::Kind::kFc, n);
      const int64_t in = element_count(x);
      if (l.out != n.out || static_cast<int64_t>(l.weight.size()) != in * n.out)
        fail(origin, ": fc has ", l.weight.size(), " weights, expected ", in * n.out);
      HostTensor w({n.out, in});  // dlib stores [in][out]; ours is [out][in]
      for (int64_t o = 0; o < n.out; ++o)
        for (int64_t j = 0; j < in; ++j) w.data[o * in + j] = l.weight[j * n.out + o];
      m.tensors[n.weight] = std::move(w);
      m.tensors[n.bias] = HostTensor({n.out});  // fc_no_bias
    }
  }
  if (next != layers.size())
    fail(origin, ": ", layers.size() - next, " dlib layer(s) left over after the graph");
}

}  // namespace facenet::dlib_layers
