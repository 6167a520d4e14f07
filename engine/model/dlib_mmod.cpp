// dlib's MMOD face detector: graph and .dat converter (via dlib's deserialiser); its settings
// and channel padding, which need no dlib, are in mmod_settings.cpp.
#include "engine/model/dlib_mmod.h"

#include "engine/core/error.h"
#include "engine/model/dlib_layers.h"
#include "engine/model/dlib_mmod_net.h"

namespace facenet {

namespace {

constexpr const char* kWhat = "dlib's CNN face detector (mmod_human_face_detector.dat)";

// The tiled pyramid's size for an nr x nc image (dlib's layout).
Shape nominal_input(long nr, long nc, long padding, long outer_padding) {
  std::vector<dlib::rectangle> rects;
  long NR = 0, NC = 0;
  dlib::impl::compute_tiled_image_pyramid_details(dlib::pyramid_down<6>(), nr, nc, padding,
                                                  outer_padding, rects, NR, NC);
  return {3, NR, NC};
}

}  // namespace

Graph dlib_mmod_graph() {
  Graph g;
  g.name = "mmod_human_face_detector";
  g.variant = "dlib";
  g.input = "input";
  g.input_shape = nominal_input(250, 250, 10, 11);
  std::string x = "input";
  auto conv_affine_relu = [&](const std::string& name, int out, int kernel, int stride, int pad) {
    g.nodes.push_back(make_conv(name, x, out, kernel, stride, pad));
    Node a = make_node(OpType::kAffine, name + "_affine", {name});
    a.gamma = a.name + "_gamma";
    a.beta = a.name + "_beta";
    g.nodes.push_back(a);
    g.nodes.push_back(make_node(OpType::kRelu, name + "_relu", {a.name}));
    x = g.nodes.back().name;
  };
  // dlib's rule: a conv with stride != 1 has padding 0, stride 1 pads k/2.
  conv_affine_relu("down1", 16, 5, 2, 0);
  conv_affine_relu("down2", 32, 5, 2, 0);
  conv_affine_relu("down3", 32, 5, 2, 0);
  conv_affine_relu("rcon1", 45, 5, 1, 2);
  conv_affine_relu("rcon2", 45, 5, 1, 2);
  conv_affine_relu("rcon3", 45, 5, 1, 2);
  g.nodes.push_back(make_conv("score", x, 1, 9, 1, 4));
  g.output = "score";
  return g;
}

namespace {

Model convert_net(dlib_mmod::net_type& net, const std::string& origin) {
  Model m;
  m.graph = dlib_mmod_graph();
  dlib_layers::assign(m, dlib_layers::collect(net, origin), origin);

  const auto& in = dlib::input_layer(net);
  const dlib::mmod_options& opt = net.loss_details().get_options();
  if (opt.use_bounding_box_regression)
    fail(origin, ": the detector uses bounding-box regression, which this engine does not run");
  if (opt.detector_windows.size() != 1)
    fail(origin, ": ", opt.detector_windows.size(),
         " detector windows; the graph has one score channel");
  nlohmann::json windows = nlohmann::json::array();
  for (const auto& w : opt.detector_windows)
    windows.push_back({{"width", w.width}, {"height", w.height}, {"label", w.label}});
  m.graph.preprocess = {{"task", "detect"},
                        {"color", "rgb"},
                        {"mean", {in.get_avg_red(), in.get_avg_green(), in.get_avg_blue()}},
                        {"scale", 1.0 / 256.0},
                        {"detector",
                         {{"pyramid_down", 6},
                          {"padding", in.get_pyramid_padding()},
                          {"outer_padding", in.get_pyramid_outer_padding()},
                          {"windows", windows},
                          {"nms_iou", opt.overlaps_nms.get_iou_thresh()},
                          {"nms_covered", opt.overlaps_nms.get_percent_covered_thresh()},
                          {"threshold", 0.0}}}};
  m.graph.input_shape = nominal_input(250, 250, static_cast<long>(in.get_pyramid_padding()),
                                      static_cast<long>(in.get_pyramid_outer_padding()));
  m.provenance = {{"source",
                   "mmod_human_face_detector.dat (dlib, Davis King; CC0) from PyPI "
                   "face_recognition_models 0.3.0"},
                  {"converter", "facenet convert dlib-mmod"},
                  {"variant", m.graph.variant}};
  validate_model(m);
  mmod_settings(m, origin);  // what a detector will read back must be valid
  return m;
}

}  // namespace

Model convert_dlib_mmod_bytes(const std::string& bytes, const std::string& origin) {
  auto net = std::make_unique<dlib_mmod::net_type>();
  dlib_layers::deserialize(*net, bytes, origin, kWhat);
  return convert_net(*net, origin);
}

Model convert_dlib_mmod(const std::filesystem::path& dat) {
  return convert_dlib_mmod_bytes(dlib_layers::read_dat(dat, kWhat), dat.string());
}

}  // namespace facenet
