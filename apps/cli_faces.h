// CLI commands for raw photos: convert dlib-resnet, detect, encode --align, eval lfw.
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "engine/backend/backend.h"

namespace facenet::cli {

// Adds `convert dlib-resnet` (under the existing `convert`), `detect` and `eval lfw`.
void add_face_commands(CLI::App& app, int& exit_code);

// `encode --align largest|all`: raw photos in, one embedding per chosen face out.
struct PhotoEncodeArgs {
  std::string model, align = "largest", dlib_models, format = "jsonl", output;
  BackendOptions backend;
  int batch = 64, upsample = 0, jitter = 0;
  bool retry_cnn = false;
  std::vector<std::string> inputs;
};
int run_encode_photos(const PhotoEncodeArgs& a);

}  // namespace facenet::cli
