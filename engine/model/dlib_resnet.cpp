// dlib ResNet: graph, .dat converter (via dlib's deserialiser) and dlib's own forward pass.
#include "engine/model/dlib_resnet.h"

#include <dlib/dnn.h>

#include <algorithm>
#include <cstdio>
#include <sstream>
#include <string>
#include <system_error>

#include "engine/core/error.h"
#include "engine/core/file_bytes.h"
#include "engine/model/dlib_layers.h"

namespace facenet {

namespace {

// ---- dlib's network type (examples/dnn_face_recognition_ex.cpp), needed to deserialise -----
template <template <int, template <typename> class, int, typename> class block, int N,
          template <typename> class BN, typename SUBNET>
using residual = dlib::add_prev1<block<N, BN, 1, dlib::tag1<SUBNET>>>;

template <template <int, template <typename> class, int, typename> class block, int N,
          template <typename> class BN, typename SUBNET>
using residual_down = dlib::add_prev2<
    dlib::avg_pool<2, 2, 2, 2, dlib::skip1<dlib::tag2<block<N, BN, 2, dlib::tag1<SUBNET>>>>>>;

template <int N, template <typename> class BN, int stride, typename SUBNET>
using block =
    BN<dlib::con<N, 3, 3, 1, 1, dlib::relu<BN<dlib::con<N, 3, 3, stride, stride, SUBNET>>>>>;

template <int N, typename SUBNET>
using ares = dlib::relu<residual<block, N, dlib::affine, SUBNET>>;
template <int N, typename SUBNET>
using ares_down = dlib::relu<residual_down<block, N, dlib::affine, SUBNET>>;

template <typename SUBNET>
using alevel0 = ares_down<256, SUBNET>;
template <typename SUBNET>
using alevel1 = ares<256, ares<256, ares_down<256, SUBNET>>>;
template <typename SUBNET>
using alevel2 = ares<128, ares<128, ares_down<128, SUBNET>>>;
template <typename SUBNET>
using alevel3 = ares<64, ares<64, ares<64, ares_down<64, SUBNET>>>>;
template <typename SUBNET>
using alevel4 = ares<32, ares<32, ares<32, SUBNET>>>;

using anet_type = dlib::loss_metric<dlib::fc_no_bias<
    128, dlib::avg_pool_everything<alevel0<alevel1<alevel2<alevel3<alevel4<dlib::max_pool<
             3, 3, 2, 2,
             dlib::relu<dlib::affine<
                 dlib::con<32, 7, 7, 2, 2, dlib::input_rgb_image_sized<150>>>>>>>>>>>>>;

// ---- our graph ----------------------------------------------------------------------------
class ResnetBuilder {
 public:
  std::string conv_affine(const std::string& name, const std::string& in, int out, int kernel,
                          int stride, int pad) {
    add(make_conv(name, in, out, kernel, stride, pad));
    Node a = make_node(OpType::kAffine, name + "_affine", {name});
    a.gamma = a.name + "_gamma";
    a.beta = a.name + "_beta";
    return add(a);
  }

  std::string op(OpType type, const std::string& name, std::vector<std::string> inputs,
                 int kernel = 1, int stride = 1) {
    return add(make_node(type, name, std::move(inputs), kernel, stride));
  }

  // dlib's ares / ares_down: strided blocks use padding 0 (dlib's rule for stride != 1).
  std::string residual(const std::string& name, const std::string& in, int out, bool down) {
    std::string x = conv_affine(name + "_conv1", in, out, 3, down ? 2 : 1, down ? 0 : 1);
    x = op(OpType::kRelu, name + "_relu1", {x});
    x = conv_affine(name + "_conv2", x, out, 3, 1, 1);
    const std::string skip = down ? op(OpType::kAvgPool, name + "_skip_pool", {in}, 2, 2) : in;
    x = op(OpType::kAdd, name + "_add", {x, skip});
    return op(OpType::kRelu, name + "_relu", {x});
  }

  Graph& graph() { return g_; }

 private:
  std::string add(Node n) {
    g_.nodes.push_back(std::move(n));
    return g_.nodes.back().name;
  }
  Graph g_;
};

}  // namespace

Graph dlib_resnet_graph() {
  ResnetBuilder b;
  Graph& g = b.graph();
  g.name = "dlib_face_recognition_resnet_model_v1";
  g.variant = "dlib";
  g.input = "input";
  g.input_shape = {3, 150, 150};
  const dlib::input_rgb_image_sized<150> in;
  g.preprocess = {
      {"color", "rgb"},       {"mean", {in.get_avg_red(), in.get_avg_green(), in.get_avg_blue()}},
      {"scale", 1.0 / 256.0}, {"size", {150, 150}},
      {"resize", "none"},     {"alignment", "dlib-chip-150-0.25"},
      {"distance", "l2"},     {"threshold", 0.6}};
  std::string x = b.conv_affine("conv1", "input", 32, 7, 2, 0);
  x = b.op(OpType::kRelu, "conv1_relu", {x});
  x = b.op(OpType::kMaxPool, "pool1", {x}, 3, 2);
  struct Stage {
    int width, blocks;
    bool down;
  };
  // alevel4 .. alevel0, input side first; a downsampling stage starts with res_down.
  const Stage stages[] = {
      {32, 3, false}, {64, 4, true}, {128, 3, true}, {256, 3, true}, {256, 1, true}};
  int index = 0;
  for (const Stage& s : stages)
    for (int i = 0; i < s.blocks; ++i) {
      char name[16];
      std::snprintf(name, sizeof name, "res%02d", ++index);
      x = b.residual(name, x, s.width, s.down && i == 0);
    }
  x = b.op(OpType::kAvgPool, "pool_all", {x}, 2, 2);  // avg_pool_everything of the 2x2 map
  g.nodes.push_back(make_dense("fc", x, 128));
  g.output = "fc";
  return g;
}

namespace {

anet_type parse_net(const std::string& bytes, const std::string& origin) {
  anet_type net;
  dlib_layers::deserialize(net, bytes, origin, "dlib's face recognition ResNet");
  return net;
}

anet_type load_net(const std::filesystem::path& dat) {
  return parse_net(dlib_layers::read_dat(dat, "dlib ResNet model"), dat.string());
}

Model convert_net(anet_type& net, const std::string& dat) {
  Model m;
  m.graph = dlib_resnet_graph();
  dlib_layers::assign(m, dlib_layers::collect(net, dat), dat);
  m.provenance = {{"source",
                   "dlib_face_recognition_resnet_model_v1.dat (dlib, Davis King; CC0) from PyPI "
                   "face_recognition_models 0.3.0"},
                  {"converter", "facenet convert dlib-resnet"},
                  {"variant", m.graph.variant}};
  validate_model(m);
  return m;
}

}  // namespace

Model convert_dlib_resnet(const std::filesystem::path& dat) {
  anet_type net = load_net(dat);
  return convert_net(net, dat.string());
}

Model convert_dlib_resnet_bytes(const std::string& bytes, const std::string& origin) {
  anet_type net = parse_net(bytes, origin);
  return convert_net(net, origin);
}

std::vector<float> dlib_resnet_forward(const std::filesystem::path& dat, const unsigned char* bgr,
                                       int64_t n, int height, int width) {
  constexpr int kSize = 150;
  if (height != kSize || width != kSize)
    fail("dlib_resnet_forward: chips are ", height, "x", width, "; expected ", kSize, "x", kSize);
  anet_type net = load_net(dat);
  std::vector<dlib::matrix<dlib::rgb_pixel>> images(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const unsigned char* chip = bgr + i * kSize * kSize * 3;
    images[i].set_size(kSize, kSize);
    for (int r = 0; r < kSize; ++r)
      for (int col = 0; col < kSize; ++col) {
        const unsigned char* p = chip + (r * kSize + col) * 3;
        images[i](r, col) = dlib::rgb_pixel(p[2], p[1], p[0]);
      }
  }
  std::vector<float> out;
  for (const auto& d : net(images)) out.insert(out.end(), d.begin(), d.end());
  return out;
}

}  // namespace facenet
