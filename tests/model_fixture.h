// Converts the shared nn4.small2 CSV weights once per test binary (both variants) into a
// temporary model file, so tests exercise the same path users do.
#pragma once

#include <filesystem>
#include <map>
#include <string>

#include "engine/convert_openface.h"
#include "tests/test_util.h"

namespace facenet::test {

inline std::filesystem::path weights_dir() {
  return shared_path("weights/openface-nn4.small2.v1-csv-5-standins");
}

// Path of a converted model for `variant` ("openface" | "coursera"), made on first use.
inline std::filesystem::path converted_model(const std::string& variant) {
  static std::map<std::string, std::filesystem::path> cache;
  auto it = cache.find(variant);
  if (it != cache.end()) return it->second;
  const auto dir =
      std::filesystem::temp_directory_path() / ("facenet-test-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto path = dir / ("nn4-" + variant + ".safetensors");
  save_model(path, convert_openface_csv(weights_dir(), parse_nn4_variant(variant)));
  return cache[variant] = path;
}

}  // namespace facenet::test
