// The engine's CNN face detector against dlib's own (cnn_face_detection_model_v1's code path):
// the converted model, the network input (dlib's tiled pyramid tensor, bit for bit), and the
// detections on shared photos — boxes within 1 px, scores within 1e-3 — on the CPU backend,
// the reference backend and (with a GPU) CUDA. FACENET_CNN_CHECK_IMAGES=N checks N LFW photos
// (the closing report used 60; CI checks a few).
#include <dlib/dnn.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "engine/eval/lfw_eval.h"
#include "engine/face/cnn_detector.h"
#include "engine/face/dlib_view.h"
#include "engine/image/image_io.h"
#include "engine/model/dlib_mmod.h"
#include "engine/model/dlib_mmod_net.h"
#include "engine/pipeline/pipeline.h"
#include "tests/mmod_cases.h"
#include "tests/test_util.h"

namespace facenet {
namespace {

namespace fs = std::filesystem;

fs::path mmod_dat() {
  return default_dlib_models_dir() / "mmod_human_face_detector.dat";
}

#define FN_REQUIRE_MMOD()                                                         \
  do {                                                                            \
    if (!fs::exists(mmod_dat()))                                                  \
      GTEST_SKIP() << mmod_dat() << " missing: run weights/fetch_dlib_models.sh"; \
  } while (0)

const Model& mmod_model() {
  static const Model m = convert_dlib_mmod(mmod_dat());
  return m;
}

const Detector& dlib_cnn() {
  static const auto d = make_dlib_cnn_detector(mmod_dat());
  return *d;
}

const CnnDetector& ours(Device device = Device::kCpu) {
  static std::map<Device, std::unique_ptr<CnnDetector>> detectors;
  auto& d = detectors[device];
  if (!d) {
    CnnDetectorOptions o;
    o.backend.device = device;
    d = std::make_unique<CnnDetector>(mmod_model(), mmod_dat().string(), o);
  }
  return *d;
}

// The first image of each of the first `n` LFW people (sorted), plus two openface examples.
std::vector<fs::path> photos(size_t n_lfw, bool examples) {
  if (const char* env = std::getenv("FACENET_CNN_CHECK_IMAGES")) n_lfw = std::stoul(env);
  std::vector<fs::path> out =
      lfw_first_images(test::shared_path("data/lfw/lfw-deepfunneled"), n_lfw);
  if (examples)
    for (const char* f : {"clapton-2.jpg", "longoria-cooper.jpg"})
      out.push_back(test::shared_path("data/openface-examples/images/examples") / f);
  return out;
}

// Same detections in the same order: boxes within 1 px, scores within 1e-3.
void expect_same(const std::vector<Detection>& got, const std::vector<Detection>& want,
                 const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    const FaceBox &a = got[i].box, &b = want[i].box;
    EXPECT_LE(std::abs(a.left - b.left), 1) << what << " face " << i;
    EXPECT_LE(std::abs(a.top - b.top), 1) << what << " face " << i;
    EXPECT_LE(std::abs(a.right - b.right), 1) << what << " face " << i;
    EXPECT_LE(std::abs(a.bottom - b.bottom), 1) << what << " face " << i;
    EXPECT_NEAR(got[i].score, want[i].score, 1e-3) << what << " face " << i;
  }
}

TEST(CnnDetector, ConvertedModelHoldsDlibsNetworkAndSettings) {
  FN_REQUIRE_MMOD();
  const Model& m = mmod_model();
  EXPECT_TRUE(is_detector_model(m));
  EXPECT_EQ(m.graph.nodes.size(), 3u * 6 + 1);
  EXPECT_EQ(m.tensors.size(), 4u * 6 + 2);  // conv w, b + affine gamma, beta; the score conv
  EXPECT_EQ(m.tensors.at("rcon2_w").shape, (Shape{45, 45, 5, 5}));
  EXPECT_EQ(m.tensors.at("score_w").shape, (Shape{1, 45, 9, 9}));
  const MmodSettings s = mmod_settings(m, "m");
  dlib_mmod::net_type net;
  dlib::deserialize(mmod_dat().string()) >> net;
  const auto& opt = net.loss_details().get_options();
  ASSERT_EQ(s.windows.size(), 1u);
  EXPECT_EQ(s.windows[0].width, static_cast<long>(opt.detector_windows[0].width));
  EXPECT_EQ(s.windows[0].height, static_cast<long>(opt.detector_windows[0].height));
  EXPECT_EQ(s.nms_iou, opt.overlaps_nms.get_iou_thresh());
  EXPECT_EQ(s.nms_covered, opt.overlaps_nms.get_percent_covered_thresh());
  EXPECT_EQ(s.padding, 10);
  EXPECT_EQ(s.outer_padding, 11);
  // dlib's output_tensor_to_input_tensor on the network: the same map as ours.
  for (long p : {0L, 3L, 40L}) {
    const dlib::dpoint q = dlib::output_tensor_to_input_tensor(net.subnet(), dlib::point(p, p));
    EXPECT_DOUBLE_EQ(q.x(), p * s.map_scale + s.map_offset);
  }
  // The weights are dlib's: the score layer's bias is the last of its parameters.
  const dlib::tensor& params = net.subnet().layer_details().get_layer_params();
  EXPECT_EQ(m.tensors.at("score_b").data[0], params.host()[params.size() - 1]);
}

TEST(CnnDetector, ConverterNamesABadFile) {
  FN_REQUIRE_MMOD();
  test::expect_error([] { convert_dlib_mmod_bytes("not a dat file", "x.dat"); },
                     {"x.dat", "CNN face detector"});
  test::expect_error([] { convert_dlib_mmod("/nonexistent/m.dat"); },
                     {"/nonexistent/m.dat", "not found"});
  Model m = mmod_model();
  m.graph.preprocess["detector"]["nms_iou"] = "high";
  test::expect_error([&] { mmod_settings(m, "m.safetensors"); },
                     {"m.safetensors", "preprocess.detector.nms_iou"});
  // Given where an encoder belongs, the detector model is named as what it is.
  test::expect_error([] { Pipeline p(mmod_model()); },
                     {"mmod_human_face_detector", "face detector"});
  m = mmod_model();
  m.graph.preprocess.erase("task");
  test::expect_error([&] { CnnDetector(m, "enc.safetensors", {}); },
                     {"enc.safetensors", "not a face detector"});
}

// Our network input equals dlib's input_rgb_image_pyramid tensor bit for bit (level 0's
// normalisation, the layout, every resized level, the zero padding).
TEST(CnnDetector, PyramidInputEqualsDlibsTensor) {
  FN_REQUIRE_MMOD();
  const MmodSettings s = mmod_settings(mmod_model(), "m");
  for (const auto& file : photos(1, true)) {
    const Bgr8Image img = read_bgr8_image(file);
    const dlib::matrix<dlib::rgb_pixel> rgb = rgb_upsampled(img, 0);
    dlib::input_rgb_image_pyramid<dlib::pyramid_down<6>> input;
    dlib::resizable_tensor want;
    input.to_tensor(&rgb, &rgb + 1, want);
    const PyramidLayout layout = pyramid_layout(s, rgb.nr(), rgb.nc());
    ASSERT_EQ(layout.rows, want.nr()) << file;
    ASSERT_EQ(layout.cols, want.nc()) << file;
    std::vector<float> got(want.size());
    build_pyramid_input(s, layout, &rgb(0, 0).red, 1, rgb.nr(), rgb.nc(), got.data());
    EXPECT_EQ(test::max_abs_diff(got.data(), want.host(), got.size()), 0.0) << file;
  }
}

// The GPU pyramid's per-pixel rule (dlib's CUDA resize_bilinear) against dlib's CPU resize,
// which the host pyramid uses: equal to float rounding (dlib's CPU path steps its sample
// positions by repeated float addition, 2.6e-6 apart at most here on values of +-0.5).
TEST(CnnDetector, GpuResizeRuleMatchesDlibsResize) {
  std::vector<float> src(41 * 57);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<float>(std::sin(0.37 * i)) * 0.5f;
  for (auto [dh, dw] : {std::pair<long, long>{34, 47}, {28, 39}, {1, 1}, {41, 57}}) {
    std::vector<float> want(dh * dw), got(dh * dw);
    const auto in = dlib::sub_image(static_cast<const float*>(src.data()), 41, 57, 57);
    auto out = dlib::sub_image(want.data(), dh, dw, dw);
    dlib::resize_image(in, out);
    for (long r = 0; r < dh; ++r)
      for (long c = 0; c < dw; ++c)
        got[r * dw + c] = mmod_bilinear(src.data(), 57, 41, 57, dh, dw, r, c);
    EXPECT_LT(test::max_abs_diff(got.data(), want.data(), got.size()), 1e-5) << dh << "x" << dw;
  }
}

TEST(CnnDetector, DetectionsEqualDlibsOnSharedPhotos) {
  FN_REQUIRE_MMOD();
  int faces = 0;
  for (const auto& file : photos(6, true)) {
    const Bgr8Image img = read_bgr8_image(file);
    const auto want = dlib_cnn().detect(img, 0);
    expect_same(ours().detect(img, 0), want, file.string());
    faces += static_cast<int>(want.size());
  }
  EXPECT_GE(faces, 6);  // the comparison is about faces, not empty maps
}

TEST(CnnDetector, UpsampledDetectionsEqualDlibs) {
  FN_REQUIRE_MMOD();
  const Bgr8Image img = read_bgr8_image(
      test::shared_path("data/lfw/lfw-deepfunneled/Jelena_Dokic/Jelena_Dokic_0004.jpg"));
  const auto want = dlib_cnn().detect(img, 1);
  ASSERT_FALSE(want.empty());
  expect_same(ours().detect(img, 1), want, "Jelena_Dokic_0004 upsample 1");
}

// Same-size photos in one forward (as on CUDA; batch_on_cpu makes the CPU do it too) give what
// each photo gives alone: 4 LFW photos share a forward, the two examples run on their own.
TEST(CnnDetector, BatchEqualsOneByOne) {
  FN_REQUIRE_MMOD();
  std::vector<Bgr8Image> imgs;
  for (const auto& file : photos(4, true)) imgs.push_back(read_bgr8_image(file));
  std::vector<const Bgr8Image*> ptrs;
  for (const auto& i : imgs) ptrs.push_back(&i);
  CnnDetectorOptions o;
  o.batch_on_cpu = true;
  const CnnDetector batched(mmod_model(), "m", o);
  const auto batch = batched.detect_batch(ptrs, 0);
  ASSERT_EQ(batch.size(), imgs.size());
  for (size_t i = 0; i < imgs.size(); ++i)
    expect_same(batch[i], ours().detect(imgs[i], 0), "image " + std::to_string(i));
}

TEST(CnnDetector, ReferenceBackendAgrees) {
  FN_REQUIRE_MMOD();
  const Bgr8Image img = read_bgr8_image(photos(1, false).front());
  expect_same(ours(Device::kCpuReference).detect(img, 0), dlib_cnn().detect(img, 0),
              "cpu-reference");
}

TEST(CnnDetector, CudaAgrees) {
  FN_REQUIRE_MMOD();
  FN_REQUIRE_GPU();
  for (const auto& file : photos(3, true)) {
    const Bgr8Image img = read_bgr8_image(file);
    expect_same(ours(Device::kCuda).detect(img, 0), dlib_cnn().detect(img, 0), file.string());
  }
}

// A photo whose pyramid's first activation holds more values than a model file may ask for
// (6.8 MP: 16 x 27 M) is still searched, and its face found (it used to give no faces).
TEST(CnnDetector, LargePhotoIsSearched) {
  FN_REQUIRE_MMOD();
  const Bgr8Image small =
      read_bgr8_image(test::shared_path("data/openface-examples/images/examples/clapton-2.jpg"));
  Bgr8Image big;
  big.width = big.height = 2600;
  big.pixels.resize(size_t{2600} * 2600 * 3);
  for (int y = 0; y < 2600; ++y)  // nearest-neighbour 6.5x upscale of the 400x400 photo
    for (int x = 0; x < 2600; ++x)
      std::copy_n(&small.pixels[(static_cast<size_t>(y) * 400 / 2600 * 400 + x * 400 / 2600) * 3],
                  3, &big.pixels[(static_cast<size_t>(y) * 2600 + x) * 3]);
  const auto faces = ours().detect(big, 0);
  ASSERT_FALSE(faces.empty());
  EXPECT_GT(faces[0].box.width(), 400);
  test::expect_error([&] { ours().detect(small, -1); }, {"upsample -1"});
}

// Photos smaller than the network's receptive field have no location to score: no faces (dlib's
// own detector throws a DLIB_CASSERT error for them instead).
TEST(CnnDetector, TinyAndBlankImagesGiveNoFaces) {
  FN_REQUIRE_MMOD();
  for (int size : {1, 7, 20, 60}) {
    Bgr8Image img;
    img.width = img.height = size;
    img.pixels.assign(static_cast<size_t>(size) * size * 3, 128);
    EXPECT_TRUE(ours().detect(img, 0).empty()) << size;
  }
}

// Writes the converted model and a few photos with their layout and CPU score map for the GPU
// machine (tools/device_prepare.sh; test_cuda_backend's MmodPyramidOnGpuMatchesCpu reads them).
TEST(CnnDetector, ExportCasesForDevice) {
  const char* dest = std::getenv("FACENET_EXPORT_MMOD");
  if (!dest) GTEST_SKIP() << "FACENET_EXPORT_MMOD not set";
  FN_REQUIRE_MMOD();
  const fs::path dir(dest);
  fs::create_directories(dir);
  save_model(dir / "mmod.safetensors", mmod_model());
  const MmodSettings s = mmod_settings(mmod_model(), "m");
  std::vector<test::MmodCase> cases;
  for (const auto& file : photos(3, true)) {
    const dlib::matrix<dlib::rgb_pixel> rgb = rgb_upsampled(read_bgr8_image(file), 0);
    test::MmodCase c;
    c.rows = rgb.nr(), c.cols = rgb.nc();
    const PyramidLayout layout = pyramid_layout(s, c.rows, c.cols);
    c.pyramid_rows = layout.rows, c.pyramid_cols = layout.cols;
    c.levels = layout.levels;
    c.rgb.assign(&rgb(0, 0).red, &rgb(0, 0).red + c.rows * c.cols * 3);
    Model m = mmod_model();
    m.graph.input_shape = {3, layout.rows, layout.cols};
    m.shapes.clear();
    validate_model(m);
    c.map_h = m.shapes.back()[1], c.map_w = m.shapes.back()[2];
    std::vector<float> x(3 * layout.rows * layout.cols);
    build_pyramid_input(s, layout, c.rgb.data(), 1, c.rows, c.cols, x.data());
    c.scores.resize(c.map_h * c.map_w);
    make_backend(m, {})->forward(x.data(), 1, c.scores.data());
    cases.push_back(std::move(c));
  }
  test::write_mmod_cases(dir / "cases.raw", cases);
  EXPECT_EQ(test::read_mmod_cases(dir / "cases.raw").size(), cases.size());
}

}  // namespace
}  // namespace facenet
