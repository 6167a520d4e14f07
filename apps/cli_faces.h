// CLI commands for raw photos: convert dlib-resnet, detect, eval lfw.
#pragma once

#include <CLI/CLI.hpp>

namespace facenet::cli {

// Adds `convert dlib-resnet` (under the existing `convert`), `detect` and `eval lfw`.
void add_face_commands(CLI::App& app, int& exit_code);

}  // namespace facenet::cli
