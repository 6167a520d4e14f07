// dlib's face recognition ResNet through our converter and executors vs dlib's own forward pass
// on the same aligned LFW chips (both computed here). Skips when the dlib models have not been
// fetched (weights/fetch_dlib_models.sh; tools/test.sh fetches them, so CI runs this).
#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "engine/backend/backend.h"
#include "engine/image/image_io.h"
#include "engine/model/dlib_resnet.h"
#include "tests/dlib_fixture.h"

namespace facenet {
namespace {

using test::lfw_chips;
using test::resnet_dat;

#define FN_REQUIRE_DLIB_MODELS()                                                          \
  do {                                                                                    \
    if (!std::filesystem::exists(resnet_dat()))                                           \
      GTEST_SKIP() << resnet_dat() << " missing: run weights/fetch_dlib_models.sh first"; \
  } while (0)

std::vector<float> to_inputs(const Model& m, const std::vector<cv::Mat>& chips) {
  const InputSpec spec = input_spec(m.graph);
  const int64_t per = element_count(m.graph.input_shape);
  std::vector<float> x(per * chips.size());
  for (size_t i = 0; i < chips.size(); ++i)
    bgr8_to_input(chips[i].data, chips[i].rows, chips[i].cols, spec, x.data() + i * per);
  return x;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  return test::max_abs_diff(a.data(), b.data(), std::min(a.size(), b.size()));
}

TEST(DlibResnet, GraphHasDlibShapes) {
  const Graph g = dlib_resnet_graph();
  const auto shapes = infer_shapes(g);
  EXPECT_EQ(shapes[g.index_of("pool1")], (Shape{32, 35, 35}));
  EXPECT_EQ(shapes[g.index_of("res04_add")], (Shape{64, 17, 17}));  // 32 -> 64 zero-extended
  EXPECT_EQ(shapes[g.index_of("res11_conv2_affine")], (Shape{256, 3, 3}));
  EXPECT_EQ(shapes[g.index_of("res11_add")], (Shape{256, 4, 4}));  // 3x3 branch + 4x4 pool
  EXPECT_EQ(shapes[g.index_of("res14_add")], (Shape{256, 2, 2}));
  EXPECT_EQ(shapes.back(), (Shape{128, 1, 1}));
}

TEST(DlibResnet, EmbeddingsEqualDlibsOwnForward) {
  FN_REQUIRE_DLIB_MODELS();
  const auto path = std::filesystem::temp_directory_path() /
                    ("facenet-test-dlib-" + std::to_string(::getpid()) + ".safetensors");
  save_model(path, convert_dlib_resnet(resnet_dat()));
  const Model m = load_model(path);  // through the file, as users do
  std::filesystem::remove(path);
  EXPECT_EQ(m.embedding_dim(), 128);

  const std::vector<cv::Mat> chips = lfw_chips(6);
  ASSERT_FALSE(chips.empty());
  const std::vector<uint8_t> packed = test::pack_chips(chips);
  const std::vector<float> want =
      dlib_resnet_forward(resnet_dat(), packed.data(), static_cast<int64_t>(chips.size()),
                          test::kChipSize, test::kChipSize);
  double norm = 0;
  for (int i = 0; i < 128; ++i) norm += want[i] * want[i];
  EXPECT_GT(std::sqrt(norm), 0.1) << "dlib's descriptor is suspiciously small";

  const std::vector<float> x = to_inputs(m, chips);
  const int64_t n = static_cast<int64_t>(chips.size());
  std::vector<float> got(n * 128);
  BackendOptions opt;
  opt.device = Device::kCpu;
  make_backend(m, opt)->forward(x.data(), n, got.data());
  const double fast_err = max_abs_diff(got, want);
  EXPECT_LE(fast_err, 1e-4) << n << " chips, cpu backend";

  // The oracle on the first two chips only (plain loops are slow on 150x150).
  const int64_t nr = std::min<int64_t>(2, n);
  std::vector<float> ref(nr * 128);
  opt.device = Device::kCpuReference;
  make_backend(m, opt)->forward(x.data(), nr, ref.data());
  const double ref_err =
      max_abs_diff(ref, std::vector<float>(want.begin(), want.begin() + nr * 128));
  EXPECT_LE(ref_err, 1e-4) << "cpu-reference backend";
  std::printf(
      "dlib ResNet vs dlib forward on %lld LFW chips: max abs error cpu %.3g, "
      "cpu-reference %.3g (%lld chips)\n",
      static_cast<long long>(n), fast_err, ref_err, static_cast<long long>(nr));
}

TEST(DlibResnet, ForwardRefusesChipsOfAnotherSize) {
  const std::vector<uint8_t> chip(100 * 100 * 3);
  test::expect_error([&] { dlib_resnet_forward(resnet_dat(), chip.data(), 1, 100, 100); },
                     {"100x100", "150x150"});
}

// Not a check: writes the aligned chips the GPU machine (no dlib there) compares its backends on,
// when FACENET_EXPORT_DLIB_CHIPS names the file (tools/device_prepare.sh); skips otherwise.
TEST(DlibResnet, ExportChipsForDevice) {
  const char* dest = std::getenv("FACENET_EXPORT_DLIB_CHIPS");
  if (!dest) GTEST_SKIP() << "FACENET_EXPORT_DLIB_CHIPS not set";
  FN_REQUIRE_DLIB_MODELS();
  const std::vector<uint8_t> bgr = test::pack_chips(lfw_chips(8));
  ASSERT_EQ(bgr.size(), 8 * test::kChipBytes);
  test::write_chips_raw(dest, bgr);
  EXPECT_EQ(test::read_chips_raw(dest), bgr);
}

}  // namespace
}  // namespace facenet
