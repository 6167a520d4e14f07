// dlib ResNet test material: the converted model file and dlib-aligned 150x150 LFW chips.
// With dlib in the build both are made here (converted from dlib's fetched .dat, aligned from
// the shared LFW copy); a machine without dlib (the GPU device) takes them ready-made from
// $FACENET_DLIB_MODEL and $FACENET_DLIB_CHIPS, which tools/device_prepare.sh writes.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "engine/image/image_io.h"
#include "engine/model/model.h"
#include "tests/test_util.h"

#if FACENET_HAS_DLIB
#include <opencv2/core.hpp>

#include "engine/face/align.h"
#include "engine/face/find_faces.h"
#include "engine/model/dlib_resnet.h"
#endif

namespace facenet::test {

constexpr int kChipSize = 150;
constexpr int64_t kChipBytes = int64_t{kChipSize} * kChipSize * 3;

// Chips as one raw file: n x 150 x 150 x 3 uint8, BGR, rows packed (n from the file size).
inline void write_chips_raw(const std::filesystem::path& path, const std::vector<uint8_t>& bgr) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bgr.data()), static_cast<std::streamsize>(bgr.size()));
  if (!out) fail(path.string(), ": cannot write chips");
}

inline std::vector<uint8_t> read_chips_raw(const std::filesystem::path& path) {
  std::vector<uint8_t> bytes = read_file_bytes(path);
  if (bytes.empty() || bytes.size() % kChipBytes != 0)
    fail(path.string(), ": ", bytes.size(), " bytes is not a whole number of 150x150x3 chips");
  return bytes;
}

#if FACENET_HAS_DLIB
inline std::filesystem::path resnet_dat() {
  return default_dlib_models_dir() / "dlib_face_recognition_resnet_model_v1.dat";
}

// The first image of each of the first `n` people (sorted) of the shared LFW copy, aligned as
// dlib's ResNet expects. FACENET_DLIB_CHECK_FACES overrides n (the report used 64).
inline std::vector<cv::Mat> lfw_chips(size_t n) {
  if (const char* env = std::getenv("FACENET_DLIB_CHECK_FACES")) n = std::stoul(env);
  const auto root = shared_path("data/lfw/lfw-deepfunneled");
  std::vector<std::filesystem::path> people;
  for (const auto& e : std::filesystem::directory_iterator(root)) people.push_back(e.path());
  std::sort(people.begin(), people.end());
  const FaceModels models;
  std::vector<cv::Mat> chips;
  for (const auto& dir : people) {
    if (chips.size() == n) break;
    std::vector<std::filesystem::path> files;
    for (const auto& e : std::filesystem::directory_iterator(dir)) files.push_back(e.path());
    std::sort(files.begin(), files.end());
    const Bgr8Image img = read_bgr8_image(files.front());
    const FoundFaces found = find_faces(models, img, FaceOptions{});
    if (found.faces.empty()) continue;
    Bgr8Image chip = align_face(img, found.faces.front().face, Alignment::kDlibChip150);
    chips.push_back(cv::Mat(chip.height, chip.width, CV_8UC3, chip.pixels.data()).clone());
  }
  EXPECT_EQ(chips.size(), n);
  return chips;
}

inline std::vector<uint8_t> pack_chips(const std::vector<cv::Mat>& chips) {
  std::vector<uint8_t> bgr;
  for (const cv::Mat& c : chips) {
    const cv::Mat packed = c.isContinuous() ? c : c.clone();
    if (packed.type() != CV_8UC3 || packed.rows != kChipSize || packed.cols != kChipSize)
      fail("chip is not 150x150 8-bit BGR");
    bgr.insert(bgr.end(), packed.data, packed.data + kChipBytes);
  }
  return bgr;
}
#endif

// The converted dlib ResNet, loaded once: from $FACENET_DLIB_MODEL, else (dlib builds)
// converted in memory from the fetched .dat; null when neither is at hand (the caller skips).
inline const Model* dlib_model() {
  static const std::optional<Model> model = []() -> std::optional<Model> {
    if (const char* env = std::getenv("FACENET_DLIB_MODEL")) {
      if (!std::filesystem::exists(env))
        fail("FACENET_DLIB_MODEL is set but ", env, " does not exist");
      return load_model(env);
    }
#if FACENET_HAS_DLIB
    if (std::filesystem::exists(resnet_dat())) return convert_dlib_resnet(resnet_dat());
#endif
    return std::nullopt;
  }();
  return model ? &*model : nullptr;
}

// Up to `n` aligned chips, packed as in write_chips_raw: $FACENET_DLIB_CHIPS, else (dlib builds
// with the .dat fetched) aligned here; empty when neither is at hand (the caller skips).
inline std::vector<uint8_t> dlib_chips(size_t n) {
  if (const char* env = std::getenv("FACENET_DLIB_CHIPS")) {
    std::vector<uint8_t> bgr = read_chips_raw(env);
    bgr.resize(std::min<size_t>(bgr.size(), n * kChipBytes));
    return bgr;
  }
#if FACENET_HAS_DLIB
  if (std::filesystem::exists(resnet_dat())) return pack_chips(lfw_chips(n));
#endif
  return {};
}

}  // namespace facenet::test
