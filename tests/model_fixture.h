// The nn4.small2 model files the tests load (both variants): converted once per test binary
// from the shared CSV weights, so tests exercise the same path users do; or, where the CSVs are
// not at hand (a device machine), taken ready-made from $FACENET_TEST_MODELS.
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>

#include "engine/model/convert_openface.h"
#include "tests/test_util.h"

namespace facenet::test {

inline std::filesystem::path weights_dir() {
  return shared_path("weights/openface-nn4.small2.v1-csv-5-standins");
}

// Path of a model file for `variant` ("openface" | "coursera"):
// $FACENET_TEST_MODELS/nn4-<variant>.safetensors when that variable is set (made by
// tools/device_prepare.sh with `facenet convert`), else converted here on first use.
inline std::filesystem::path converted_model(const std::string& variant) {
  static std::map<std::string, std::filesystem::path> cache;
  auto it = cache.find(variant);
  if (it != cache.end()) return it->second;
  const std::string name = "nn4-" + variant + ".safetensors";
  if (const char* models = std::getenv("FACENET_TEST_MODELS")) {
    const std::filesystem::path path = std::filesystem::path(models) / name;
    if (!std::filesystem::exists(path))
      fail("FACENET_TEST_MODELS is set but ", path.string(), " does not exist");
    return cache[variant] = path;
  }
  const auto dir =
      std::filesystem::temp_directory_path() / ("facenet-test-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto path = dir / name;
  save_model(path, convert_openface_csv(weights_dir(), parse_nn4_variant(variant)));
  return cache[variant] = path;
}

}  // namespace facenet::test
