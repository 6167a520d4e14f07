// Converter and model files: real CSVs from ../shared, corrupted copies made here, the
// safetensors round trip, and the parameter totals of nn4.small2.
#include <unistd.h>

#include <fstream>

#include "engine/core/error.h"
#include "engine/model/convert_openface.h"
#include "engine/model/model.h"
#include "engine/model/safetensors.h"
#include "tests/model_fixture.h"

namespace facenet {
namespace {

using test::expect_error;

namespace fs = std::filesystem;

class CorruptedWeights : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("facenet-corrupt-" + std::to_string(getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::copy(test::weights_dir(), dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  void write(const std::string& file, const std::string& text) {
    std::ofstream(dir_ / file, std::ios::trunc) << text;
  }
  fs::path dir_;
};

TEST(Converter, RealExportGivesTheDocumentedParameterCounts) {
  std::vector<std::string> unused;
  Model m = convert_openface_csv(test::weights_dir(), Nn4Variant::kOpenFace, &unused);
  const ParamCounts c = count_params(m);
  EXPECT_EQ(c.learned, 3733968);
  EXPECT_EQ(c.learned + c.running_stats, 3743280);
  EXPECT_EQ(m.tensors.size(), 224u);
  EXPECT_EQ(m.embedding_dim(), 128);
  EXPECT_EQ(m.tensors.at("conv1_w").shape, (Shape{64, 3, 7, 7}));
  EXPECT_EQ(m.tensors.at("dense_w").shape, (Shape{128, 736}));
  // The export carries two stray files that no layer uses; they are reported, not loaded.
  EXPECT_EQ(unused, (std::vector<std::string>{"inception_5a_3x3_conv2_m.csv",
                                              "inception_5a_3x3_conv2_v.csv"}));
}

TEST(Converter, VariantsDifferOnlyWhereTheDocSays) {
  const Graph o = nn4_small2_graph(Nn4Variant::kOpenFace);
  const Graph c = nn4_small2_graph(Nn4Variant::kCoursera);
  auto count = [](const Graph& g, OpType op) {
    return std::count_if(g.nodes.begin(), g.nodes.end(), [&](const Node& n) { return n.op == op; });
  };
  EXPECT_EQ(count(o, OpType::kLrn), 2);
  EXPECT_EQ(count(c, OpType::kLrn), 0);
  EXPECT_EQ(count(o, OpType::kL2Pool), 3);
  EXPECT_EQ(count(c, OpType::kL2Pool), 0);
  EXPECT_EQ(count(c, OpType::kAvgPool), count(o, OpType::kAvgPool) + 3);
  EXPECT_DOUBLE_EQ(o.node("bn1").eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.node("bn1").eps, 1e-3);
  EXPECT_DOUBLE_EQ(c.node("bn2").eps, 1e-5);
}

TEST(Converter, ShapesFollowTheModelTable) {
  Model m = convert_openface_csv(test::weights_dir(), Nn4Variant::kOpenFace);
  auto shape = [&](const std::string& n) { return m.shapes[m.graph.index_of(n)]; };
  EXPECT_EQ(shape("pool2"), (Shape{192, 12, 12}));
  EXPECT_EQ(shape("inception_3a"), (Shape{256, 12, 12}));
  EXPECT_EQ(shape("inception_3a_pool"), (Shape{192, 5, 5}));  // padded 3 before, 4 after
  EXPECT_EQ(shape("inception_3b"), (Shape{320, 12, 12}));
  EXPECT_EQ(shape("inception_3c"), (Shape{640, 6, 6}));
  EXPECT_EQ(shape("inception_4a"), (Shape{640, 6, 6}));
  EXPECT_EQ(shape("inception_4e"), (Shape{1024, 3, 3}));
  EXPECT_EQ(shape("inception_5a"), (Shape{736, 3, 3}));
  EXPECT_EQ(shape("inception_5b"), (Shape{736, 3, 3}));
  EXPECT_EQ(shape("embedding"), (Shape{128, 1, 1}));
}

TEST_F(CorruptedWeights, MissingFileIsNamed) {
  fs::remove(dir_ / "inception_4a_pool_conv_w.csv");
  expect_error([&] { convert_openface_csv(dir_, Nn4Variant::kOpenFace); },
               {"inception_4a_pool_conv_w.csv", "missing"});
}

TEST_F(CorruptedWeights, EmptyFileIsNamed) {
  write("bn3_v.csv", "");
  expect_error([&] { convert_openface_csv(dir_, Nn4Variant::kOpenFace); }, {"bn3_v.csv", "empty"});
}

TEST_F(CorruptedWeights, TruncatedFileNamesExpectedCount) {
  // Drop the last value of conv1's weights: 9407 of 64*3*7*7 = 9408.
  auto v = read_csv_floats(dir_ / "conv1_w.csv");
  std::string text;
  for (size_t i = 0; i + 1 < v.size(); ++i) text += (i ? "," : "") + std::to_string(v[i]);
  write("conv1_w.csv", text);
  expect_error([&] { convert_openface_csv(dir_, Nn4Variant::kOpenFace); },
               {"conv1_w.csv", "9407", "9408"});
}

TEST_F(CorruptedWeights, NonNumericValueIsNamed) {
  write("dense_b.csv", "0.1,0.2,abc,0.4");
  expect_error([&] { convert_openface_csv(dir_, Nn4Variant::kOpenFace); },
               {"dense_b.csv", "element 2", "abc"});
}

TEST_F(CorruptedWeights, TooManyValuesAreRejected) {
  auto v = read_csv_floats(dir_ / "bn1_w.csv");
  std::string text;
  for (float x : v) text += std::to_string(x) + ",";
  write("bn1_w.csv", text + "1.0");
  expect_error([&] { convert_openface_csv(dir_, Nn4Variant::kOpenFace); },
               {"bn1_w.csv", "65", "expected 64"});
}

TEST(ModelFile, RoundTripKeepsGraphAndTensorsBitExact) {
  const Model a = convert_openface_csv(test::weights_dir(), Nn4Variant::kCoursera);
  const auto path = test::converted_model("coursera");
  const Model b = load_model(path);
  EXPECT_EQ(graph_to_json(a.graph), graph_to_json(b.graph));
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (const auto& [name, t] : a.tensors) {
    EXPECT_EQ(t.shape, b.tensors.at(name).shape) << name;
    EXPECT_EQ(t.data, b.tensors.at(name).data) << name;
  }
  EXPECT_EQ(b.provenance.at("variant"), "coursera");
}

TEST(ModelFile, CorruptFilesAreClearErrors) {
  const auto dir = fs::temp_directory_path() / ("facenet-badmodel-" + std::to_string(getpid()));
  fs::create_directories(dir);
  const auto garbage = dir / "garbage.safetensors";
  std::ofstream(garbage) << "this is not a model";
  expect_error([&] { load_model(garbage); }, {"garbage.safetensors", "safetensors"});

  // A valid safetensors file without our graph metadata.
  SafetensorsFile plain;
  plain.tensors["x"] = HostTensor({2}, {1.f, 2.f});
  write_safetensors(dir / "plain.safetensors", plain);
  expect_error([&] { load_model(dir / "plain.safetensors"); }, {"not a facenet-engine model"});

  // A real model cut short.
  const auto good = test::converted_model("openface");
  const auto cut = dir / "cut.safetensors";
  fs::copy_file(good, cut, fs::copy_options::overwrite_existing);
  fs::resize_file(cut, fs::file_size(good) - 1000);
  expect_error([&] { load_model(cut); }, {"cut.safetensors"});

  // A model whose tensor no longer matches the graph.
  Model m = load_model(good);
  m.tensors["conv2_w"] = HostTensor({64, 64, 1, 2});
  save_model(dir / "wrongshape.safetensors", m);
  expect_error([&] { load_model(dir / "wrongshape.safetensors"); }, {"conv2_w", "[64, 64, 1, 1]"});

  // Hand-made headers: tensors sharing bytes, a shape whose element count overflows int64, a
  // negative extent, and an empty tensor (read without touching the data section).
  auto raw = [&](const std::string& file, const std::string& header, size_t data_bytes) {
    std::string h = header;
    h.append((8 - h.size() % 8) % 8, ' ');
    std::ofstream out(dir / file, std::ios::binary);
    for (int i = 0; i < 8; ++i) out.put(static_cast<char>((h.size() >> (8 * i)) & 0xff));
    out << h << std::string(data_bytes, '\0');
    return dir / file;
  };
  expect_error(
      [&] {
        read_safetensors(raw("overlap.safetensors",
                             R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                             R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                             16));
      },
      {"overlap.safetensors", "'a' and 'b'", "share bytes"});
  expect_error(
      [&] {
        read_safetensors(raw("huge.safetensors",
                             R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,4],)"
                             R"("data_offsets":[0,0]}})",
                             8));
      },
      {"huge.safetensors", "'a'", "more values than"});
  expect_error(
      [&] {
        read_safetensors(raw("negative.safetensors",
                             R"({"a":{"dtype":"F32","shape":[-2,-2],"data_offsets":[0,16]}})", 16));
      },
      {"negative.safetensors", "negative extent"});
  const SafetensorsFile empty = read_safetensors(
      raw("empty.safetensors", R"({"a":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]}})", 0));
  EXPECT_EQ(empty.tensors.at("a").data.size(), 0u);
  fs::remove_all(dir);
}

TEST(ModelFile, SummaryPrintsTotals) {
  const std::string s = model_summary(load_model(test::converted_model("openface")));
  EXPECT_NE(s.find("3733968"), std::string::npos);
  EXPECT_NE(s.find("3743280"), std::string::npos);
  EXPECT_NE(s.find("inception_3a_pool"), std::string::npos);
}

}  // namespace
}  // namespace facenet
