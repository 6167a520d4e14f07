// A model = graph description + named parameter tensors, stored in one safetensors file whose
// metadata carries the graph ("facenet.graph", JSON) and provenance.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "engine/model/graph.h"

namespace facenet {

struct Model {
  Graph graph;
  TensorMap tensors;
  std::map<std::string, std::string> provenance;  // free-form: source, converter, variant...
  std::vector<Shape> shapes;                      // per-node output shapes (C, H, W)

  int64_t embedding_dim() const { return shapes.empty() ? 0 : element_count(shapes.back()); }
};

// Checks that the graph and the tensors agree (shapes, presence); fills model.shapes.
// `max_activation`: values per image any node may output (infer_shapes); a caller that sets
// the input shape itself (the CNN detector, per photo) may allow more than a file may ask.
void validate_model(Model& model, int64_t max_activation = kMaxActivationValues);

Model load_model(const std::filesystem::path& path);  // throws facenet::Error naming the file
// The same from a model file's bytes; `origin` (a path or a label) starts every error message.
Model load_model_bytes(std::string_view bytes, const std::string& origin);
void save_model(const std::filesystem::path& path, const Model& model);

struct ParamCounts {
  int64_t learned = 0;        // conv/dense weights + biases, BatchNorm gamma/beta
  int64_t running_stats = 0;  // BatchNorm running mean/var
};
ParamCounts count_params(const Model& model);

// FNV-1a 64 over the graph JSON and every tensor (name, shape, bytes): equal for the same
// network and weights, different when any weight differs.
uint64_t model_fingerprint(const Model& model);

// True for a converted face detector (preprocess.task == "detect": engine/model/dlib_mmod.h),
// whose output is a score map, not an embedding.
bool is_detector_model(const Model& model);

// A readable table: layer, op, output shape, parameters; then totals.
std::string model_summary(const Model& model);

}  // namespace facenet
