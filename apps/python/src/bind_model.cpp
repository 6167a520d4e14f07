// Bindings of engine/model: a model file's description, the converters and the ONNX export.
// Every call releases the GIL while the engine reads, converts or writes.
#include <nanobind/stl/filesystem.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>

#include <cstdio>

#include "apps/python/src/bindings.h"
#include "engine/face/face.h"
#include "engine/model/convert_openface.h"
#include "engine/model/embedding_spec.h"
#include "engine/model/model.h"
#include "engine/model/onnx_export.h"
#ifdef FACENET_HAS_DLIB
#include "engine/model/dlib_resnet.h"
#endif

namespace fs = std::filesystem;

namespace facenet::python {

namespace {

// What `facenet info` shows, as a dict (preprocess and graph as JSON text for json.loads).
nb::dict model_info(const fs::path& path) {
  Model model;
  ParamCounts counts;
  std::string summary, fingerprint;
  EmbeddingSpec spec;
  {
    nb::gil_scoped_release release;
    model = load_model(path);
    counts = count_params(model);
    summary = model_summary(model);
    char hex[17];
    std::snprintf(hex, sizeof hex, "%016llx",
                  static_cast<unsigned long long>(model_fingerprint(model)));
    fingerprint = hex;
    spec = embedding_spec(model);
  }
  const Graph& g = model.graph;
  nb::dict d;
  d["path"] = path;
  d["name"] = g.name;
  d["variant"] = g.variant;
  d["input"] = g.input;
  d["input_shape"] = nb::make_tuple(g.input_shape.at(0), g.input_shape.at(1), g.input_shape.at(2));
  d["output"] = g.output;
  d["embedding_dim"] = model.embedding_dim();
  d["layers"] = g.nodes.size();
  d["parameters"] = counts.learned;
  d["running_stats"] = counts.running_stats;
  d["fingerprint"] = fingerprint;
  d["embedding_spec"] = spec.model;
  d["preprocess_json"] = g.preprocess.dump();
  d["provenance"] = model.provenance;
  d["summary"] = summary;
  return d;
}

}  // namespace

void bind_model(nb::module_& m) {
  m.def("model_info", &model_info, nb::arg("path"),
        "Reads a model file (.safetensors) and describes it: graph name and variant, input "
        "shape (C, H, W), embedding size, parameter counts, weight fingerprint, provenance, "
        "preprocessing (JSON text) and the layer table `facenet info` prints.");
  m.def(
      "convert_openface_csv",
      [](const fs::path& dir, const fs::path& output, const std::string& variant) {
        nb::gil_scoped_release release;
        save_model(output, convert_openface_csv(dir, parse_nn4_variant(variant)));
      },
      nb::arg("dir"), nb::arg("output"), nb::arg("variant") = "openface",
      "Converts the Keras-OpenFace CSV export of nn4.small2.v1 (one CSV per tensor in `dir`) "
      "into a model file; variant 'openface' (the Torch graph) or 'coursera'.");
  m.def(
      "convert_dlib_resnet",
      [](const fs::path& dat, const fs::path& output) {
#ifdef FACENET_HAS_DLIB
        nb::gil_scoped_release release;
        save_model(output, convert_dlib_resnet(dat));
#else
        (void)dat, (void)output;
        fail("convert_dlib_resnet: this build has no dlib (built without libdlib-dev)");
#endif
      },
      nb::arg("dat"), nb::arg("output"),
      "Converts dlib's dlib_face_recognition_resnet_model_v1.dat into a model file.");
  m.def(
      "export_onnx",
      [](const fs::path& model, const fs::path& output) {
        nb::gil_scoped_release release;
        export_onnx_file(model, output);
      },
      nb::arg("model"), nb::arg("output"),
      "Writes the model as an ONNX file (opset 13, batch dimension symbolic; the "
      "preprocessing is in metadata_props 'facenet.preprocess').");
  m.def("default_dlib_models_dir", &default_dlib_models_dir,
        "Where the engine reads dlib's .dat files: $FACENET_DLIB_MODELS, else "
        "$XDG_CACHE_HOME/facenet/dlib, else ~/.cache/facenet/dlib.");
}

}  // namespace facenet::python
