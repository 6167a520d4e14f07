// End to end: embeddings of the happy-house images vs the golden file from an independent
// float64 implementation, for both graph variants, on the fast and reference CPU paths.
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/backend/backend.h"
#include "engine/image/image_io.h"
#include "tests/golden_fixture.h"

namespace facenet {
namespace {

using test::golden;
using test::GoldenImage;
using test::load_inputs;
using test::max_abs_error;

class Golden : public ::testing::TestWithParam<std::string> {};

TEST_P(Golden, FastCpuPathReproducesEveryImage) {
  const Model m = load_model(test::converted_model(GetParam()));
  const auto imgs = golden(GetParam());
  ASSERT_EQ(imgs.size(), 18u);
  const std::vector<float> x = load_inputs(m, imgs);
  // Micro-batches of 4 over 2 threads: exercises chunking, the ragged last chunk, and the
  // per-thread workspaces.
  BackendOptions opt;
  opt.threads = 2;
  opt.micro_batch = 4;
  auto backend = make_backend(m, opt);
  std::vector<float> y(imgs.size() * 128);
  backend->forward(x.data(), static_cast<int64_t>(imgs.size()), y.data());
  const double err = max_abs_error(y, imgs, imgs.size());
  std::printf("[ measured ] %s, cpu fast path: max abs error %.3g over 18 images\n",
              GetParam().c_str(), err);
  EXPECT_LE(err, 1e-4);

  // Batch composition must not change a result: image 5 alone equals image 5 in the batch.
  std::vector<float> single(128);
  backend->forward(x.data() + 5 * element_count(m.graph.input_shape), 1, single.data());
  for (int d = 0; d < 128; ++d) EXPECT_NEAR(single[d], y[5 * 128 + d], 1e-6);
}

TEST_P(Golden, ReferencePathReproducesTwoImages) {
  const Model m = load_model(test::converted_model(GetParam()));
  auto imgs = golden(GetParam());
  imgs.resize(2);  // the reference is slow by design
  const std::vector<float> x = load_inputs(m, imgs);
  BackendOptions opt;
  opt.device = Device::kCpuReference;
  std::vector<float> y(2 * 128);
  make_backend(m, opt)->forward(x.data(), 2, y.data());
  const double err = max_abs_error(y, imgs, 2);
  std::printf("[ measured ] %s, cpu reference: max abs error %.3g\n", GetParam().c_str(), err);
  EXPECT_LE(err, 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Variants, Golden, ::testing::Values("openface", "coursera"));

// Block-level statistics of the first image localise a mismatch: the model truncated after
// each block must give the golden mean and L2 norm.
TEST(GoldenBlocks, EveryBlockMatchesMeanAndNorm) {
  const Model full = load_model(test::converted_model("openface"));
  const auto imgs = golden("openface");
  ASSERT_TRUE(imgs[0].blocks.is_object());
  const std::vector<float> x = load_inputs(full, {imgs[0]});
  for (const auto& [block, stats] : imgs[0].blocks.items()) {
    const Model m = test::truncated_after(full, test::block_node(block));
    ASSERT_EQ(element_count(m.shapes.back()), element_count(stats.at("shape").get<Shape>()))
        << block;
    std::vector<float> y(element_count(m.shapes.back()));
    make_backend(m, {})->forward(x.data(), 1, y.data());
    double sum = 0, ss = 0;
    for (float v : y) {
      sum += v;
      ss += static_cast<double>(v) * v;
    }
    const double mean = sum / y.size(), l2 = std::sqrt(ss);
    EXPECT_NEAR(mean, stats.at("mean").get<double>(),
                1e-4 * std::fabs(stats.at("mean").get<double>()) + 1e-7)
        << block;
    EXPECT_NEAR(l2, stats.at("l2").get<double>(), 1e-4 * stats.at("l2").get<double>()) << block;
  }
}

}  // namespace
}  // namespace facenet
