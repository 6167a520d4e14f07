// The front door's two encode paths: the staged (double-buffered, CUDA's) one and the float
// one (CPU backends), on real files with failures interleaved, through fake backends; the
// staged fake defers its work to wait(), so a pipeline that reads a slot early or refills it
// while in flight gets wrong answers.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "engine/image/image_io.h"
#include "engine/pipeline/pipeline.h"
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

// A backend whose staged path is DeferredStaged (what the CUDA backend offers), and whose
// forward() must not be called.
class FakeStagedBackend final : public Backend {
 public:
  explicit FakeStagedBackend(const InputSpec& spec, DeferredStaged** made)
      : spec_(spec), made_(made) {}
  std::string name() const override { return "fake staged"; }
  void forward(const float*, int64_t, float*) override {
    ADD_FAILURE() << "the pipeline must use the staged path when there is one";
  }
  std::unique_ptr<StagedEncoder> make_staged_encoder(int slots, int64_t capacity) override {
    auto s = std::make_unique<DeferredStaged>(spec_, slots, capacity);
    *made_ = s.get();
    return s;
  }

 private:
  InputSpec spec_;
  DeferredStaged** made_;
};

// A model whose input rule is spec's and whose embeddings have kDim values (the fakes above
// compute them; the graph itself never runs).
Model fake_model() {
  Model m;
  m.graph.name = "fake";
  m.graph.input = "x";
  m.graph.input_shape = {3, 96, 96};
  m.graph.nodes.push_back(make_dense("fc", "x", static_cast<int>(kDim)));
  m.graph.output = "fc";
  m.shapes = {Shape{kDim}};  // what validate_model would infer
  return m;
}

class PipelineEncodePaths : public ::testing::Test {
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

  std::vector<ImageInput> inputs() const {
    std::vector<ImageInput> in;
    for (const auto& f : files_) in.push_back(ImageInput::file(f));
    return in;
  }

  static RequestOptions crops() {
    RequestOptions r;
    r.faces.detector = DetectorKind::kNone;
    return r;
  }

  // The expected embedding of one file, decoded on its own.
  std::vector<float> expected(const fs::path& path) const {
    std::vector<uint8_t> bgr(3 * spec_.height * spec_.width);
    std::vector<float> out(kDim);
    load_image_bgr8(path, spec_, bgr.data());
    fake_embedding(bgr.data(), spec_, out.data());
    return out;
  }

  // Every file's result, in input order, against what it must be.
  void check(const std::vector<ImageResult>& got) const {
    ASSERT_EQ(got.size(), files_.size());
    size_t encoded = 0;
    for (size_t i = 0; i < files_.size(); ++i) {
      const ImageResult& r = got[i];
      EXPECT_EQ(r.name, files_[i].string());
      const std::string f = files_[i].filename().string();
      if (f.rfind("missing", 0) == 0) {
        EXPECT_EQ(r.status, InputStatus::kUnreadable) << f;
      } else if (f == "empty.jpg" || f == "text.jpg") {
        EXPECT_EQ(r.status, InputStatus::kUndecodable) << f;
      } else {
        ASSERT_TRUE(r.ok()) << r.error;
        ASSERT_EQ(r.faces.size(), 1u);
        EXPECT_EQ(r.faces[0].embedding, expected(files_[i])) << f;
        ++encoded;
        continue;
      }
      EXPECT_NE(r.error.find(files_[i].string()), std::string::npos) << r.error;
      EXPECT_TRUE(r.faces.empty());
    }
    EXPECT_EQ(encoded, 7u);
  }

  InputSpec spec_;  // 3 x 96 x 96, scale 1/255, RGB
  fs::path dir_;
  std::vector<fs::path> files_;
};

// The float path (CPU backends) and the staged 8-bit path (CUDA) give every file its own
// result, bad files their status, in order, for batches that divide the files or not, one
// chip, and more chips than there are files; and the staged path never refills a slot in
// flight (DeferredStaged checks) nor submits an empty or oversized batch.
TEST_F(PipelineEncodePaths, FloatAndStagedPathsGiveEveryFileItsResult) {
  for (int batch : {1, 2, 3, 4, 11, 64})
    for (int workers : {1, 3}) {
      SCOPED_TRACE("batch " + std::to_string(batch) + ", workers " + std::to_string(workers));
      PipelineOptions po;
      po.max_batch = batch;
      po.workers = workers;
      Pipeline flt(fake_model(), std::make_unique<FakeFloatBackend>(spec_), po);
      check(flt.run(inputs(), crops()));
      DeferredStaged* staged = nullptr;
      {
        Pipeline stg(fake_model(), std::make_unique<FakeStagedBackend>(spec_, &staged), po);
        ASSERT_NE(staged, nullptr);
        EXPECT_EQ(staged->slots(), 2);
        check(stg.run(inputs(), crops()));
        int64_t chips = 0;
        for (int64_t n : staged->sizes) {
          EXPECT_TRUE(n >= 1 && n <= batch) << n;
          chips += n;
        }
        EXPECT_EQ(chips, 7);  // only decoded files reach the device
        const PipelineStats st = stg.stats();
        EXPECT_EQ(st.chips, 7);
        EXPECT_EQ(st.in_flight, 0);
      }
    }
}

// Encoded bytes and pixel buffers (BGR, and RGB with padded rows) give the file's embedding.
TEST_F(PipelineEncodePaths, BytesAndPixelsEqualTheFile) {
  Pipeline p(fake_model(), std::make_unique<FakeFloatBackend>(spec_));
  const fs::path file = files_[3];  // adams.jpg: resized to the input
  const std::vector<uint8_t> bytes = read_file_bytes(file);
  const Bgr8Image img = read_bgr8_image(file);
  const int64_t stride = 3 * img.width + 5;
  std::vector<uint8_t> rgb(stride * img.height, 0);
  for (int y = 0; y < img.height; ++y)
    for (int x = 0; x < img.width; ++x)
      for (int c = 0; c < 3; ++c)
        rgb[y * stride + 3 * x + c] = img.pixels[(y * img.width + x) * 3 + 2 - c];
  std::vector<ImageInput> in;
  in.push_back(ImageInput::file(file));
  in.push_back(ImageInput::bytes(bytes, "upload.jpg"));
  in.push_back(
      ImageInput::pixels({img.pixels.data(), img.height, img.width, 0, PixelOrder::kBgr}, "bgr"));
  in.push_back(
      ImageInput::pixels({rgb.data(), img.height, img.width, stride, PixelOrder::kRgb}, "rgb"));
  in.push_back(
      ImageInput::pixels({rgb.data(), img.height, img.width, 3, PixelOrder::kRgb}, "short-stride"));
  const auto got = p.run(std::move(in), crops());
  ASSERT_EQ(got.size(), 5u);
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(got[i].ok()) << got[i].error;
    EXPECT_EQ(got[i].faces.at(0).embedding, expected(file)) << got[i].name;
  }
  EXPECT_EQ(got[1].name, "upload.jpg");
  EXPECT_EQ(got[4].status, InputStatus::kUndecodable);
  EXPECT_NE(got[4].error.find("short-stride"), std::string::npos) << got[4].error;
  EXPECT_NE(got[4].error.find("stride"), std::string::npos) << got[4].error;
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
