// ONNX export: any facenet graph as a standard ONNX model (opset 13) that ONNX Runtime,
// OpenVINO and other runtimes load, written without a protobuf library.
#pragma once

#include <filesystem>
#include <string>

#include "engine/model/model.h"

namespace facenet {

inline constexpr int kOnnxOpset = 13;     // ai.onnx operator set of every node
inline constexpr int kOnnxIrVersion = 8;  // IR 8 (ONNX 1.10+): every current runtime reads it

// The model as a serialised ONNX ModelProto. Input: the graph's input name, float32
// [N, C, H, W] with N symbolic ("N": any batch); output: the graph's output name, float32
// [N, D]. Weights are initializers (raw float32); every op maps to standard ONNX ops that
// compute what cpu_reference.cpp does (see onnx_export.cpp). The preprocessing (the model's
// `preprocess` JSON) is not part of the network; it is stored in metadata_props as
// "facenet.preprocess". Throws facenet::Error naming the node for anything ONNX cannot
// express exactly.
std::string export_onnx(const Model& model);

// Loads `model_file`, exports it and writes `onnx_file`; errors name the file (and the node).
void export_onnx_file(const std::filesystem::path& model_file,
                      const std::filesystem::path& onnx_file);

}  // namespace facenet
