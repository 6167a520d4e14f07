// Model files: safetensors with the graph JSON in the metadata.
#include "engine/model/model.h"

#include <cmath>
#include <iomanip>
#include <sstream>

#include "engine/core/error.h"
#include "engine/core/file_bytes.h"
#include "engine/model/safetensors.h"

namespace facenet {

namespace {
constexpr const char* kGraphKey = "facenet.graph";
constexpr const char* kFormatKey = "format";
constexpr const char* kFormatValue = "facenet-engine-model/1";

int64_t tensor_size(const Model& m, const std::string& name) {
  auto it = m.tensors.find(name);
  return it == m.tensors.end() ? 0 : it->second.size();
}
}  // namespace

namespace {

// The preprocess fields the engine reads, checked for type and range where the model is
// loaded, so a wrong one is named there rather than failing later in a JSON accessor.
// Preprocess numbers become float32 where they are used: beyond kMaxPreprocessValue the cast
// would overflow (undefined behaviour), and no pixel scale, mean or distance is near it.
constexpr double kMaxPreprocessValue = 1e30;

bool float_number(const nlohmann::json& v) {
  return v.is_number() && std::fabs(v.get<double>()) <= kMaxPreprocessValue;
}

void check_preprocess(const nlohmann::json& p) {
  if (!p.is_object()) fail("preprocess must be a JSON object");
  auto finite_number = [&](const char* key, bool positive) {
    if (!p.contains(key)) return;
    const auto& v = p.at(key);
    if (!float_number(v) || (positive && v.get<double>() <= 0) || v.get<double>() < 0)
      fail("preprocess.", key, " must be a ", positive ? "positive" : "non-negative",
           " number of at most ", kMaxPreprocessValue, " (got ", v.dump(), ")");
  };
  finite_number("scale", true);
  finite_number("threshold", false);
  if (p.contains("mean")) {
    const auto& m = p.at("mean");
    bool ok = m.is_array() && m.size() == 3;
    for (size_t i = 0; ok && i < 3; ++i) ok = float_number(m[i]);
    if (!ok)
      fail("preprocess.mean must be 3 numbers of magnitude at most ", kMaxPreprocessValue, " (got ",
           m.dump(), ")");
  }
  if (p.contains("color") && !(p.at("color") == "rgb" || p.at("color") == "bgr"))
    fail("preprocess.color must be \"rgb\" or \"bgr\" (got ", p.at("color").dump(), ")");
  if (p.contains("alignment") && !p.at("alignment").is_string())
    fail("preprocess.alignment must be a string (got ", p.at("alignment").dump(), ")");
}

// Parameter values the forward pass can use: finite everywhere (a NaN or Inf weight would
// give NaN embeddings with exit 0), and no negative BatchNorm variance (sqrt of a negative).
void check_values(const Model& model) {
  for (const auto& [name, t] : model.tensors)
    for (size_t i = 0; i < t.data.size(); ++i)
      if (!std::isfinite(t.data[i]))
        fail("tensor '", name, "' holds a non-finite value (", t.data[i], ") at element ", i);
  for (const Node& n : model.graph.nodes) {
    if (n.op != OpType::kBatchNorm) continue;
    const HostTensor& var = model.tensors.at(n.var);
    for (size_t i = 0; i < var.data.size(); ++i)
      if (var.data[i] < 0)
        fail("node '", n.name, "': variance tensor '", n.var, "' is negative (", var.data[i],
             ") at channel ", i);
  }
}

}  // namespace

void validate_model(Model& model, int64_t max_activation) {
  for (const auto& [name, t] : model.tensors)  // a reader or converter that built one wrongly
    if (static_cast<int64_t>(t.data.size()) != element_count(t.shape))
      fail("tensor '", name, "' holds ", t.data.size(), " values for its shape of ",
           element_count(t.shape));
  check_preprocess(model.graph.preprocess);
  model.shapes = infer_shapes(model.graph, model.tensors, max_activation);
  check_values(model);
  if (model.graph.nodes.empty() || model.graph.nodes.back().name != model.graph.output)
    fail("model graph: the output '", model.graph.output, "' must be the last node");
}

Model load_model_bytes(std::string_view bytes, const std::string& origin) {
  SafetensorsFile f = parse_safetensors(bytes, origin);
  if (f.metadata[kFormatKey] != kFormatValue || !f.metadata.count(kGraphKey))
    fail(origin, ": not a facenet-engine model (safetensors metadata lacks '", kGraphKey,
         "'); convert weights with `facenet convert`");
  Model m;
  try {
    m.graph = graph_from_json(nlohmann::json::parse(f.metadata[kGraphKey]));
  } catch (const nlohmann::json::exception& e) {
    fail(origin, ": graph metadata is not valid JSON (", e.what(), ")");
  } catch (const Error& e) {
    fail(origin, ": ", e.what());
  }
  for (auto& [k, v] : f.metadata)
    if (k != kGraphKey && k != kFormatKey) m.provenance[k] = v;
  m.tensors = std::move(f.tensors);
  try {
    validate_model(m);
  } catch (const Error& e) {
    fail(origin, ": ", e.what());
  }
  return m;
}

Model load_model(const std::filesystem::path& path) {
  return load_model_bytes(read_input_file(path, "model file"), path.string());
}

void save_model(const std::filesystem::path& path, const Model& model) {
  SafetensorsFile f;
  f.tensors = model.tensors;
  f.metadata = model.provenance;
  f.metadata[kFormatKey] = kFormatValue;
  f.metadata[kGraphKey] = graph_to_json(model.graph).dump();
  write_safetensors(path, f);
}

ParamCounts count_params(const Model& m) {
  ParamCounts c;
  for (const Node& n : m.graph.nodes) {
    c.learned += tensor_size(m, n.weight) + tensor_size(m, n.bias) + tensor_size(m, n.gamma) +
                 tensor_size(m, n.beta);
    c.running_stats += tensor_size(m, n.mean) + tensor_size(m, n.var);
  }
  return c;
}

uint64_t model_fingerprint(const Model& m) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&h](const void* data, size_t bytes) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < bytes; ++i) h = (h ^ p[i]) * 1099511628211ull;
  };
  const std::string graph = graph_to_json(m.graph).dump();
  mix(graph.data(), graph.size());
  for (const auto& [name, t] : m.tensors) {
    mix(name.data(), name.size());
    mix(t.shape.data(), t.shape.size() * sizeof(int64_t));
    mix(t.data.data(), t.data.size() * sizeof(float));
  }
  return h;
}

std::string model_summary(const Model& m) {
  std::ostringstream os;
  const Graph& g = m.graph;
  os << "model: " << g.name << " (variant " << (g.variant.empty() ? "-" : g.variant) << ")\n";
  for (const auto& [k, v] : m.provenance) os << "  " << k << ": " << v << "\n";
  os << "input: " << g.input << " " << shape_string(g.input_shape) << "\n\n";
  os << std::left << std::setw(34) << "layer" << std::setw(11) << "op" << std::setw(18)
     << "output (CxHxW)" << std::right << std::setw(12) << "params"
     << "\n";
  os << std::string(75, '-') << "\n";
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    const Shape& s = m.shapes[i];
    const int64_t p = tensor_size(m, n.weight) + tensor_size(m, n.bias) + tensor_size(m, n.gamma) +
                      tensor_size(m, n.beta) + tensor_size(m, n.mean) + tensor_size(m, n.var);
    std::ostringstream shape;
    shape << s[0] << "x" << s[1] << "x" << s[2];
    os << std::left << std::setw(34) << n.name << std::setw(11) << op_name(n.op) << std::setw(18)
       << shape.str() << std::right << std::setw(12) << p << "\n";
  }
  const ParamCounts c = count_params(m);
  const int64_t macs = count_macs(g, m.shapes);
  os << std::string(75, '-') << "\n";
  os << "embedding dimension:          " << m.embedding_dim() << "\n";
  os << "learned parameters:           " << c.learned << "\n";
  os << "with BatchNorm running stats: " << c.learned + c.running_stats << "\n";
  os << "multiply-adds per image:      " << macs << " (" << std::fixed << std::setprecision(3)
     << 2.0 * static_cast<double>(macs) / 1e9 << " GFLOP)\n";
  return os.str();
}

bool is_detector_model(const Model& model) {
  const auto& p = model.graph.preprocess;
  return p.is_object() && p.contains("task") && p.at("task") == "detect";
}

}  // namespace facenet
