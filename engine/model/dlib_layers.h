// Reading a deserialised dlib network's parameters (shared by the dlib converters): its conv,
// affine and fc layers, input side first, as plain float vectors with their geometry.
#pragma once

#include <dlib/dnn.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "engine/core/error.h"
#include "engine/model/model.h"

namespace facenet::dlib_layers {

// One parameterised dlib layer.
struct Layer {
  enum class Kind { kConv, kAffine, kFc } kind = Kind::kConv;
  long out = 0, kernel = 0, stride = 0, pad = 0;
  std::vector<float> weight, bias;  // conv: [out][in][k][k] + [out]; affine: gamma + beta;
                                    // fc: [in][out] (dlib's layout), no bias
};

inline std::vector<float> host_copy(const dlib::tensor& t, size_t offset, size_t count) {
  const float* p = t.host();
  return std::vector<float>(p + offset, p + offset + count);
}

struct Collector {
  std::vector<Layer>* layers;

  template <long N, long R, long C, int SY, int SX, int PY, int PX>
  void operator()(dlib::con_<N, R, C, SY, SX, PY, PX>& l) const {
    Layer d;
    d.kind = Layer::Kind::kConv;
    const dlib::tensor& p = l.get_layer_params();
    if (R != C || SY != SX || l.padding_y() != l.padding_x())
      fail("dlib model: non-square convolution is not supported");
    d.out = l.num_filters();
    d.kernel = R;
    d.stride = SY;
    d.pad = l.padding_y();
    const size_t nb = l.bias_is_disabled() ? 0 : static_cast<size_t>(d.out);
    if (p.size() < nb)
      fail("dlib model: a convolution holds ", p.size(), " parameters, fewer than its ", nb,
           " biases");
    d.weight = host_copy(p, 0, p.size() - nb);
    d.bias = nb ? host_copy(p, p.size() - nb, nb) : std::vector<float>(d.out, 0.f);
    layers->push_back(std::move(d));
  }
  void operator()(dlib::affine_& l) const {
    if (l.get_mode() != dlib::CONV_MODE) fail("dlib model: affine layer not in CONV mode");
    Layer d;
    d.kind = Layer::Kind::kAffine;
    auto g = l.get_gamma();
    auto b = l.get_beta();
    d.weight.assign(g.host(), g.host() + g.size());
    d.bias.assign(b.host(), b.host() + b.size());
    layers->push_back(std::move(d));
  }
  template <unsigned long N, dlib::fc_bias_mode M>
  void operator()(dlib::fc_<N, M>& l) const {
    if (M != dlib::FC_NO_BIAS) fail("dlib model: fc layer with bias is not expected");
    Layer d;
    d.kind = Layer::Kind::kFc;
    d.out = static_cast<long>(l.get_num_outputs());
    auto w = l.get_weights();
    d.weight.assign(w.host(), w.host() + w.size());
    layers->push_back(std::move(d));
  }
  template <typename T>
  void operator()(T&) const {}  // relu, pools, add_prev: nothing to copy
};

// The network's parameterised layers, input side first. Throws facenet::Error starting with
// `origin` (ours, or dlib's: an alias beyond its parameters).
template <typename Net>
std::vector<Layer> collect(Net& net, const std::string& origin) {
  std::vector<Layer> layers;
  try {
    dlib::visit_computational_layers(net, Collector{&layers});
  } catch (const std::exception& e) {
    fail(origin, ": ", e.what());
  }
  std::reverse(layers.begin(), layers.end());  // dlib visits from the output side
  return layers;
}

// The largest .dat accepted: dlib's models are 22 MB and less. dlib's deserialiser sizes
// strings and tensors from the file before reading them, so the bytes given bound what is
// read; a declared size beyond them ends in dlib's error or std::bad_alloc, both reported as
// this file's error.
constexpr uint64_t kMaxDatBytes = uint64_t{1} << 30;

// Deserialises `bytes` into `net`; throws facenet::Error "<origin>: not <what> (...)".
template <typename Net>
void deserialize(Net& net, const std::string& bytes, const std::string& origin,
                 const std::string& what) {
  if (bytes.size() > kMaxDatBytes)
    fail(origin, ": ", bytes.size(), " bytes is larger than any ", what, " (at most ", kMaxDatBytes,
         ")");
  try {
    std::istringstream in(bytes);
    dlib::deserialize(net, in);
  } catch (const std::exception& e) {
    fail(origin, ": not ", what, " (", e.what(), ")");
  }
}

// A .dat file's bytes; throws naming the file when it is missing or too large.
std::string read_dat(const std::filesystem::path& dat, const std::string& what);

// Fills the conv, affine and dense tensors of `m.graph` from `layers` (input side first, one
// layer per such node, in node order), checking each layer's geometry and sizes against the
// node; throws facenet::Error starting with `origin` on a mismatch or a layer left over.
void assign(Model& m, std::vector<Layer> layers, const std::string& origin);

}  // namespace facenet::dlib_layers
