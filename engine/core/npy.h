// NumPy .npy (format 1.0) reading and writing for float32 matrices.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace facenet {

void write_npy(const std::filesystem::path& path, const float* data, int64_t rows, int64_t cols);

struct NpyMatrix {
  int64_t rows = 0, cols = 0;
  std::vector<float> data;
};
// Reads a little-endian float32, C-order, 1-D or 2-D array; throws naming the file otherwise.
NpyMatrix read_npy(const std::filesystem::path& path);
// The same from the file's bytes; `origin` (a path or a label) starts every error message.
NpyMatrix parse_npy(std::string_view bytes, const std::string& origin);

}  // namespace facenet
