// Converter for the Keras-OpenFace CSV export of nn4.small2.v1 (one CSV of floats per tensor)
// into a facenet model (graph + tensors), for either graph variant.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "engine/model/model.h"

namespace facenet {

enum class Nn4Variant {
  kOpenFace,  // faithful to the Torch original: LRN in the stem, L2 pooling
  kCoursera,  // the deeplearning.ai Keras port: no LRN, average pooling, bn1 eps 1e-3
};

Nn4Variant parse_nn4_variant(const std::string& s);  // "openface" | "coursera"

// The nn4.small2 graph (see shared docs/MODEL-nn4small2.md); parameter names follow the
// CSV export (conv1_w, bn1_m, inception_3a_3x3_conv1_w, ..., dense_w).
Graph nn4_small2_graph(Nn4Variant variant);

// Reads every tensor the graph needs from `dir`/<name>.csv, checks each element count, and
// returns a validated model. A missing, empty, truncated or non-numeric file is an Error
// naming the file and the expected count. `unused` (optional) receives CSV files in the
// directory the graph does not use.
Model convert_openface_csv(const std::filesystem::path& dir, Nn4Variant variant,
                           std::vector<std::string>* unused = nullptr);

// Parses one line of comma-separated decimal floats; throws naming `file` and the element.
std::vector<float> read_csv_floats(const std::filesystem::path& file);
// The same on the file's text; `file` names it in errors.
std::vector<float> parse_csv_floats(const std::string& text, const std::string& file);

}  // namespace facenet
