// CNN-detector material for the GPU machine, which has no dlib: photos with their tiled-pyramid
// layout and the CPU backend's score map (written here by test_cnn_detector's
// ExportCasesForDevice, read by test_cuda_backend's GPU pyramid test).
// File: per case, int64 rows, cols, pyramid rows, pyramid cols, levels, map h, map w; each
// level's left, top, right, bottom (int64); rows x cols x 3 RGB bytes; h x w float32 scores.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <vector>

#include "engine/core/error.h"
#include "kernels/mmod_pyramid_rule.h"

namespace facenet::test {

struct MmodCase {
  int64_t rows = 0, cols = 0, pyramid_rows = 0, pyramid_cols = 0, map_h = 0, map_w = 0;
  std::vector<PyramidRect> levels;
  std::vector<uint8_t> rgb;
  std::vector<float> scores;
};

inline void write_mmod_cases(const std::filesystem::path& path,
                             const std::vector<MmodCase>& cases) {
  std::ofstream out(path, std::ios::binary);
  auto put = [&](int64_t v) { out.write(reinterpret_cast<const char*>(&v), sizeof v); };
  for (const MmodCase& c : cases) {
    for (int64_t v : {c.rows, c.cols, c.pyramid_rows, c.pyramid_cols,
                      static_cast<int64_t>(c.levels.size()), c.map_h, c.map_w})
      put(v);
    for (const PyramidRect& r : c.levels)
      for (int64_t v : {r.left, r.top, r.right, r.bottom}) put(v);
    out.write(reinterpret_cast<const char*>(c.rgb.data()),
              static_cast<std::streamsize>(c.rgb.size()));
    out.write(reinterpret_cast<const char*>(c.scores.data()),
              static_cast<std::streamsize>(c.scores.size() * sizeof(float)));
  }
  if (!out) fail(path.string(), ": cannot write the detector cases");
}

inline std::vector<MmodCase> read_mmod_cases(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path.string(), ": cannot read the detector cases");
  auto get = [&]() {
    int64_t v = 0;
    in.read(reinterpret_cast<char*>(&v), sizeof v);
    return v;
  };
  std::vector<MmodCase> cases;
  while (in.peek() != EOF) {
    MmodCase c;
    c.rows = get(), c.cols = get(), c.pyramid_rows = get(), c.pyramid_cols = get();
    const int64_t levels = get();
    c.map_h = get(), c.map_w = get();
    if (!in || levels < 1 || levels > 100 || c.rows < 1 || c.rows > 20000 || c.cols < 1 ||
        c.cols > 20000 || c.map_h < 1 || c.map_w < 1 || c.map_h * c.map_w > (int64_t{1} << 28))
      fail(path.string(), ": not a detector cases file");
    for (int64_t l = 0; l < levels; ++l) {
      PyramidRect r;
      r.left = get(), r.top = get(), r.right = get(), r.bottom = get();
      c.levels.push_back(r);
    }
    c.rgb.resize(static_cast<size_t>(c.rows * c.cols * 3));
    in.read(reinterpret_cast<char*>(c.rgb.data()), static_cast<std::streamsize>(c.rgb.size()));
    c.scores.resize(static_cast<size_t>(c.map_h * c.map_w));
    in.read(reinterpret_cast<char*>(c.scores.data()),
            static_cast<std::streamsize>(c.scores.size() * sizeof(float)));
    if (!in) fail(path.string(), ": truncated detector cases file");
    cases.push_back(std::move(c));
  }
  return cases;
}

}  // namespace facenet::test
