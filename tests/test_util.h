// Helpers shared by the test suites: where the shared data lives, GPU and dlib-model skipping.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "engine/core/error.h"

#include "engine/core/gpu.h"
#include "engine/face/face.h"

namespace facenet::test {

// A fresh temporary directory per test, `dir_` (<tmp>/<prefix>-<pid>-<n>-<test name>), removed
// with everything in it after the test.
class TempDirTest : public ::testing::Test {
 protected:
  explicit TempDirTest(std::string prefix) : prefix_(std::move(prefix)) {}
  void SetUp() override {
    static int counter = 0;  // tests of one process run one at a time
    dir_ = std::filesystem::temp_directory_path() /
           (prefix_ + "-" + std::to_string(getpid()) + "-" + std::to_string(counter++) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  std::filesystem::path dir_;

 private:
  std::string prefix_;
};

// Largest |got_i - want_i| over n values; every got_i must be finite.
inline double max_abs_diff(const float* got, const float* want, std::size_t n) {
  double err = 0;
  for (std::size_t i = 0; i < n; ++i) {
    EXPECT_TRUE(std::isfinite(got[i])) << "value " << i;
    err = std::max(err, std::fabs(static_cast<double>(got[i]) - want[i]));
  }
  return err;
}

// Root of the read-only shared material: $FACENET_SHARED, else the build-time setting
// (FACENET_SHARED_DIR, default ../shared next to the project).
inline std::filesystem::path shared_dir() {
  if (const char* env = std::getenv("FACENET_SHARED")) return env;
  return FACENET_DEFAULT_SHARED_DIR;
}

inline std::filesystem::path shared_path(const std::string& rel) {
  return shared_dir() / rel;
}

// The facenet CLI built alongside the tests.
inline std::string cli_path() {
  return FACENET_CLI_PATH;
}

// Runs `fn`, which must throw facenet::Error whose message holds every one of `parts`.
inline void expect_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& part : parts)
      EXPECT_NE(msg.find(part), std::string::npos) << "'" << part << "' not in: " << msg;
    return;
  }
  ADD_FAILURE() << "no facenet::Error thrown";
}

}  // namespace facenet::test

// Skips (never silently passes) a GPU test when no usable GPU is present.
#define FN_REQUIRE_GPU()                                                                           \
  do {                                                                                             \
    if (!::facenet::gpu_available()) GTEST_SKIP() << "no usable GPU: " << ::facenet::gpu_status(); \
  } while (0)

// Skips a test that detects faces when dlib's landmark models have not been fetched.
#define FN_REQUIRE_LANDMARK_MODELS()                                                    \
  do {                                                                                  \
    if (!std::filesystem::exists(::facenet::default_dlib_models_dir() /                 \
                                 "shape_predictor_68_face_landmarks.dat"))              \
      GTEST_SKIP() << "dlib models missing in " << ::facenet::default_dlib_models_dir() \
                   << ": run weights/fetch_dlib_models.sh first";                       \
  } while (0)
