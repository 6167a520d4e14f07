// The MMOD detector model's settings and channel padding: no dlib needed (the GPU machine
// reads converted models without it).
#include <algorithm>
#include <map>
#include <string>

#include "engine/core/error.h"
#include "engine/model/dlib_mmod.h"

namespace facenet {

MmodSettings mmod_settings(const Model& model, const std::string& origin) {
  const nlohmann::json& p = model.graph.preprocess;
  if (!is_detector_model(model))
    fail(origin, ": not a face detector model (preprocess.task is not \"detect\")");
  if (!p.contains("detector") || !p.at("detector").is_object())
    fail(origin, ": preprocess.detector is missing or not an object");
  const nlohmann::json& d = p.at("detector");
  auto number = [&](const nlohmann::json& j, const std::string& key, double lo, double hi,
                    const std::string& where) {
    if (!j.contains(key) || !j.at(key).is_number())
      fail(origin, ": ", where, key, " must be a number");
    const double v = j.at(key).get<double>();
    if (!(v >= lo && v <= hi))
      fail(origin, ": ", where, key, " is ", v, ", outside [", lo, ", ", hi, "]");
    return v;
  };
  MmodSettings s;
  const nlohmann::json& mean = p.contains("mean") ? p.at("mean") : nlohmann::json();
  if (!mean.is_array() || mean.size() != 3) fail(origin, ": preprocess.mean must be 3 numbers");
  for (int c = 0; c < 3; ++c) {
    if (!mean[c].is_number() || !(mean[c].get<double>() >= 0 && mean[c].get<double>() <= 255))
      fail(origin, ": preprocess.mean[", c, "] must be a number in [0, 255]");
    s.mean_rgb[c] = mean[c].get<double>();
  }
  s.scale = number(p, "scale", 1e-6, 1e6, "preprocess.");
  const std::string where = "preprocess.detector.";
  s.pyramid_down = static_cast<int>(number(d, "pyramid_down", 6, 6, where));
  s.padding = static_cast<long>(number(d, "padding", 0, 1000, where));
  s.outer_padding = static_cast<long>(number(d, "outer_padding", 0, 1000, where));
  s.nms_iou = number(d, "nms_iou", 0, 1, where);
  s.nms_covered = number(d, "nms_covered", 0, 1, where);
  s.threshold = number(d, "threshold", -1e6, 1e6, where);
  if (!d.contains("windows") || !d.at("windows").is_array() || d.at("windows").size() != 1)
    fail(origin, ": ", where, "windows must hold one window (the graph has one score channel)");
  for (const auto& w : d.at("windows")) {
    MmodSettings::Window win;
    win.width = static_cast<long>(number(w, "width", 1, 10000, where + "windows[]."));
    win.height = static_cast<long>(number(w, "height", 1, 10000, where + "windows[]."));
    if (w.contains("label") && w.at("label").is_string()) win.label = w.at("label");
    s.windows.push_back(win);
  }
  const Node& score = model.graph.node(model.graph.output);
  if (score.op != OpType::kConv || score.out != static_cast<int>(s.windows.size()))
    fail(origin, ": the graph's output '", score.name,
         "' must be a convolution with one channel per ", where, "windows entry (",
         s.windows.size(), ")");
  // dlib's output_tensor_to_input_tensor: through each conv or pool from the output back,
  // p -> p * stride - pad + kernel / 2; element-wise ops keep p.
  std::string v = model.graph.output;
  while (v != model.graph.input) {
    const Node& n = model.graph.node(v);
    if (n.op == OpType::kConv || n.op == OpType::kMaxPool || n.op == OpType::kAvgPool) {
      s.map_offset = s.map_offset * n.stride - n.pad + n.kernel / 2;
      s.map_scale *= n.stride;
    } else if (n.op != OpType::kAffine && n.op != OpType::kRelu && n.op != OpType::kBatchNorm) {
      fail(origin, ": node '", n.name, "' (", op_name(n.op),
           ") has no output-to-input mapping for detection");
    }
    if (n.inputs.size() != 1) fail(origin, ": node '", n.name, "' is not a chain link");
    v = n.inputs[0];
  }
  return s;
}

Model pad_conv_channels(Model m, int64_t multiple) {
  std::map<std::string, int64_t> channels{{m.graph.input, m.graph.input_shape[0]}};
  for (const Node& n : m.graph.nodes)
    if (n.op != OpType::kConv && n.op != OpType::kAffine && n.op != OpType::kRelu) return m;
  auto grow = [&](const std::string& name, const Shape& shape) {
    HostTensor& t = m.tensors.at(name);
    HostTensor out(shape);
    std::fill(out.data.begin(), out.data.end(), 0.f);
    const Shape& old = t.shape;
    const int64_t inner = old.size() == 4 ? old[2] * old[3] : 1;
    const int64_t in_old = old.size() == 4 ? old[1] : 1, in_new = shape.size() == 4 ? shape[1] : 1;
    for (int64_t o = 0; o < old[0]; ++o)
      for (int64_t i = 0; i < in_old; ++i)
        std::copy_n(t.data.begin() + (o * in_old + i) * inner, inner,
                    out.data.begin() + (o * in_new + i) * inner);
    t = std::move(out);
  };
  for (Node& n : m.graph.nodes) {
    const int64_t in = channels.at(n.inputs[0]);
    int64_t out = in;
    if (n.op == OpType::kConv) {
      out = n.out > 1 ? (n.out + multiple - 1) / multiple * multiple : n.out;
      const int64_t k = n.kernel;
      grow(n.weight, {out, in, k, k});
      grow(n.bias, {out});
      n.out = static_cast<int>(out);
    } else if (n.op == OpType::kAffine) {
      grow(n.gamma, {in});
      grow(n.beta, {in});
    }
    channels[n.name] = out;
  }
  m.shapes.clear();
  validate_model(m);
  return m;
}

}  // namespace facenet
