// The encode pipelines: the staged (double-buffered) one against the float one on real files
// with failures interleaved, through a fake device that defers its work to wait(), so that a
// pipeline that reads a slot early or refills it while in flight gets wrong answers.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "engine/pipeline/encode.h"
#include "engine/image/image_io.h"
#include "tests/test_util.h"

namespace facenet {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kDim = 4;

// A stand-in embedding of one image (H x W x 3 uint8): the sum of each channel (exact in
// float: 96 * 96 * 255 < 2^24) and the centre byte. Distinct for distinct photos.
void fake_embedding(const uint8_t* bgr, const InputSpec& spec, float* e) {
  const int64_t hw = int64_t{spec.height} * spec.width;
  double sum[3] = {0, 0, 0};
  for (int64_t i = 0; i < hw; ++i)
    for (int c = 0; c < 3; ++c) sum[c] += bgr[3 * i + c];
  for (int c = 0; c < 3; ++c) e[c] = static_cast<float>(sum[c]);
  e[3] = bgr[3 * (hw / 2)];
}

// A StagedEncoder whose "device" runs at wait() time: output(slot) holds NaN from submit to
// wait, and the input is checksummed at submit and checked when the work runs.
class DeferredStaged final : public StagedEncoder {
 public:
  DeferredStaged(const InputSpec& spec, int slots, int64_t capacity)
      : spec_(spec), capacity_(capacity), image_bytes_(int64_t{3} * spec.height * spec.width) {
    for (int i = 0; i < slots; ++i)
      slots_.push_back(
          {std::vector<uint8_t>(capacity * image_bytes_), std::vector<float>(capacity * kDim)});
  }
  int slots() const override { return static_cast<int>(slots_.size()); }
  int64_t capacity() const override { return capacity_; }
  uint8_t* input(int slot) override { return slots_.at(slot).in.data(); }
  const float* output(int slot) const override { return slots_.at(slot).out.data(); }

  void submit(int slot, int64_t n) override {
    Slot& s = slots_.at(slot);
    EXPECT_EQ(s.pending, 0) << "slot " << slot << " submitted while in flight";
    EXPECT_TRUE(n >= 1 && n <= capacity_) << n;
    s.pending = n;
    s.checksum = checksum(s.in, n);
    std::fill(s.out.begin(), s.out.end(), std::numeric_limits<float>::quiet_NaN());
    sizes.push_back(n);
  }

  void wait(int slot) override {
    Slot& s = slots_.at(slot);
    if (s.pending == 0) return;
    EXPECT_EQ(s.checksum, checksum(s.in, s.pending)) << "slot " << slot << " refilled in flight";
    for (int64_t i = 0; i < s.pending; ++i)
      fake_embedding(s.in.data() + i * image_bytes_, spec_, s.out.data() + i * kDim);
    s.pending = 0;
  }

  std::vector<int64_t> sizes;  // n of every submit, in order

 private:
  struct Slot {
    std::vector<uint8_t> in;
    std::vector<float> out;
    int64_t pending = 0;
    uint64_t checksum = 0;
  };
  uint64_t checksum(const std::vector<uint8_t>& in, int64_t n) const {
    uint64_t h = 1469598103934665603ull;  // FNV-1a
    for (int64_t i = 0; i < n * image_bytes_; ++i) h = (h ^ in[i]) * 1099511628211ull;
    return h;
  }
  InputSpec spec_;
  int64_t capacity_, image_bytes_;
  std::vector<Slot> slots_;
};

// The float path's stand-in backend: the same fake embedding, from the float input (x / scale
// recovers the bytes, in RGB order).
class FakeFloatBackend final : public Backend {
 public:
  explicit FakeFloatBackend(const InputSpec& spec) : spec_(spec) {}
  std::string name() const override { return "fake"; }
  void forward(const float* x, int64_t n, float* y) override {
    const int64_t hw = int64_t{spec_.height} * spec_.width;
    std::vector<uint8_t> bgr(hw * 3);
    for (int64_t i = 0; i < n; ++i) {
      for (int c = 0; c < 3; ++c)
        for (int64_t p = 0; p < hw; ++p)
          bgr[3 * p + 2 - c] =
              static_cast<uint8_t>(std::lround(x[(i * 3 + c) * hw + p] / spec_.scale));
      fake_embedding(bgr.data(), spec_, y + i * kDim);
    }
  }

 private:
  InputSpec spec_;
};

// Everything the callbacks saw, in order.
struct Log {
  std::vector<std::string> events;
  std::vector<std::string> encoded;  // paths of on_batch, flattened
  std::vector<float> embeddings;
  EncodeCallbacks callbacks() {
    EncodeCallbacks cb;
    cb.on_batch = [this](const std::vector<fs::path>& paths, const std::vector<float>& emb) {
      EXPECT_EQ(emb.size(), paths.size() * kDim);
      std::string e = "batch";
      for (const auto& p : paths) e += " " + p.filename().string(), encoded.push_back(p.string());
      events.push_back(e);
      embeddings.insert(embeddings.end(), emb.begin(), emb.end());
    };
    cb.on_error = [this](const fs::path& p, const std::string& why) {
      EXPECT_NE(why.find(p.string()), std::string::npos) << why;
      events.push_back("error " + p.filename().string());
    };
    cb.on_progress = [this](size_t done, size_t total) {
      events.push_back("progress " + std::to_string(done) + "/" + std::to_string(total));
    };
    return cb;
  }
};

class StagedPipeline : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("facenet-encode-" + std::to_string(getpid()));
    fs::create_directories(dir_);
    std::ofstream(dir_ / "empty.jpg").close();
    std::ofstream(dir_ / "text.jpg") << "not an image";
    const fs::path happy = test::shared_path("data/happy-house/images");
    const fs::path photo = test::shared_path("data/openface-examples/images/examples");
    // Good and bad interleaved; a PNG; a large photo (resized); two bad files in a row.
    files_ = {happy / "andrew.jpg", dir_ / "missing.jpg",   happy / "danielle.png",
              photo / "adams.jpg",  dir_ / "empty.jpg",     dir_ / "text.jpg",
              happy / "benoit.jpg", happy / "camera_0.jpg", dir_ / "missing2.png",
              happy / "younes.jpg", happy / "tian.jpg"};
  }
  void TearDown() override { fs::remove_all(dir_); }

  // The expected embedding of every file that decodes, one by one.
  std::vector<float> expected(const std::vector<std::string>& paths) const {
    std::vector<uint8_t> bgr(3 * spec_.height * spec_.width);
    std::vector<float> out(paths.size() * kDim);
    for (size_t i = 0; i < paths.size(); ++i) {
      load_image_bgr8(paths[i], spec_, bgr.data());
      fake_embedding(bgr.data(), spec_, out.data() + i * kDim);
    }
    return out;
  }

  InputSpec spec_;  // 3 x 96 x 96, scale 1/255, RGB
  fs::path dir_;
  std::vector<fs::path> files_;
};

// Same callbacks in the same order, same stats, same embeddings as the float path, for
// batches that divide the files or not, one image, and more than there are files.
TEST_F(StagedPipeline, MatchesFloatPathCallbackForCallback) {
  for (int slots : {1, 2, 3})
    for (int batch : {1, 2, 3, 4, 11, 64}) {
      SCOPED_TRACE("slots " + std::to_string(slots) + ", batch " + std::to_string(batch));
      FakeFloatBackend backend(spec_);
      Log want, got;
      const EncodeStats a = encode_files(backend, spec_, kDim, files_, batch, want.callbacks());
      DeferredStaged staged(spec_, slots, std::min<int64_t>(batch, files_.size()));
      const EncodeStats b = encode_staged(staged, spec_, kDim, files_, batch, got.callbacks());
      EXPECT_EQ(a.encoded, 7u);
      EXPECT_EQ(a.failed, 4u);
      EXPECT_EQ(b.encoded, a.encoded);
      EXPECT_EQ(b.failed, a.failed);
      EXPECT_EQ(got.events, want.events);
      ASSERT_EQ(got.embeddings.size(), got.encoded.size() * kDim);
      EXPECT_EQ(got.embeddings, expected(got.encoded));
      EXPECT_EQ(want.embeddings, got.embeddings);
      // Every batch keeps its size (failures are padded, not compacted): only the full size
      // and the last remainder reach the device, each its own plan.
      for (size_t k = 0; k < staged.sizes.size(); ++k)
        EXPECT_TRUE(staged.sizes[k] == std::min<int64_t>(batch, files_.size()) ||
                    staged.sizes[k] == static_cast<int64_t>(files_.size() % batch))
            << staged.sizes[k];
    }
}

// A batch where every file fails is reported but never submitted; the others go on.
TEST_F(StagedPipeline, AllFailedBatchIsReportedNotSubmitted) {
  const std::vector<fs::path> files = {files_[0], dir_ / "empty.jpg", dir_ / "text.jpg", files_[2]};
  DeferredStaged staged(spec_, 2, 1);
  Log got;
  const EncodeStats s = encode_staged(staged, spec_, kDim, files, 1, got.callbacks());
  EXPECT_EQ(s.encoded, 2u);
  EXPECT_EQ(s.failed, 2u);
  EXPECT_EQ(staged.sizes, (std::vector<int64_t>{1, 1}));
  const std::vector<std::string> events = {
      "batch andrew.jpg", "progress 1/4", "error empty.jpg",    "progress 2/4",
      "error text.jpg",   "progress 3/4", "batch danielle.png", "progress 4/4"};
  EXPECT_EQ(got.events, events);
}

// The benchmark's route: items decoded by a caller's function instead of from disk.
TEST_F(StagedPipeline, CallerDecoderReplacesFiles) {
  const std::vector<fs::path> names(5, "item");
  DeferredStaged staged(spec_, 2, 2);
  Log got;
  const EncodeStats s = encode_staged(
      staged, spec_, kDim, names, 2, got.callbacks(), [&](size_t i, unsigned char* out) {
        if (i == 3) fail("item: number ", i, " is bad");
        std::fill_n(out, 3 * spec_.height * spec_.width, static_cast<unsigned char>(i));
      });
  EXPECT_EQ(s.encoded, 4u);
  EXPECT_EQ(s.failed, 1u);
  ASSERT_EQ(got.embeddings.size(), 4 * kDim);
  const float per_channel = 96.0f * 96.0f;
  const float items[] = {0, 1, 2, 4};
  for (int k = 0; k < 4; ++k) EXPECT_EQ(got.embeddings[k * kDim], items[k] * per_channel) << k;
}

TEST_F(StagedPipeline, RejectsSlotsSmallerThanTheBatch) {
  DeferredStaged staged(spec_, 2, 2);
  test::expect_error([&] { encode_staged(staged, spec_, kDim, files_, 4, EncodeCallbacks{}); },
                     {"2 images", "--batch 4"});
}

// The 8-bit route's input is load_image's, byte for byte once converted by the input rule:
// same decoder, same resize, same colour order (a JPEG, a PNG, a photo that is resized).
TEST(LoadImageBgr8, ConvertsToLoadImagesInput) {
  const InputSpec spec;
  const int64_t per = 3 * 96 * 96;
  for (const char* rel :
       {"data/happy-house/images/andrew.jpg", "data/happy-house/images/danielle.png",
        "data/openface-examples/images/examples/adams.jpg"}) {
    const fs::path path = test::shared_path(rel);
    std::vector<float> want(per), got(per);
    std::vector<uint8_t> bgr(per);
    load_image(path, spec, want.data());
    load_image_bgr8(path, spec, bgr.data());
    bgr8_to_input(bgr.data(), 96, 96, spec, got.data());
    EXPECT_EQ(got, want) << rel;
  }
  test::expect_error([&] { load_image_bgr8("/nonexistent/x.jpg", spec, nullptr); },
                     {"/nonexistent/x.jpg"});
}

}  // namespace
}  // namespace facenet
