// Hostile model files, .npy files and converter inputs: every bad header, graph field or value
// is an error of ours naming the file and the field, checked before any arithmetic or
// allocation, and the CLI exits 2 on it.
#include <unistd.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "engine/core/error.h"
#include "engine/core/npy.h"
#include "engine/model/convert_openface.h"
#include "engine/model/model.h"
#include "engine/model/safetensors.h"
#include "tests/cli_fixture.h"
#include "tests/model_fixture.h"

#ifdef FACENET_HAS_DLIB
#include "engine/model/dlib_resnet.h"
#include "tests/dlib_fixture.h"
#endif

namespace facenet {
namespace {

namespace fs = std::filesystem;
using test::expect_error;

// A safetensors file's bytes from a header text and a data section of `data_bytes` zeros.
std::string safetensors_bytes(const std::string& header, size_t data_bytes) {
  std::string out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((header.size() >> (8 * i)) & 0xff));
  return out + header + std::string(data_bytes, '\0');
}

void expect_header_error(const std::string& header, size_t data_bytes,
                         const std::vector<std::string>& parts) {
  std::vector<std::string> all = parts;
  all.push_back("bad.safetensors");
  expect_error([&] { parse_safetensors(safetensors_bytes(header, data_bytes), "bad.safetensors"); },
               all);
}

TEST(SafetensorsHeader, DuplicateTensorNameIsRefused) {
  expect_header_error(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                      R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                      8, {"'a'", "twice"});
}

TEST(SafetensorsHeader, NonObjectHeaderAndEntriesAreRefused) {
  expect_header_error(R"([1,2,3])", 0, {"not a JSON object"});
  expect_header_error(R"({"a":[1,2]})", 0, {"'a'", "JSON object"});
  expect_header_error(R"({"__metadata__":["x"]})", 0, {"__metadata__"});
  expect_header_error(R"({"__metadata__":{"k":3}})", 0, {"'k'", "not a string"});
  expect_header_error(R"({"a":{"dtype":"F32","shape":[1]}})", 4, {"'a'", "data_offsets"});
}

TEST(SafetensorsHeader, DtypeMustBeF32) {
  expect_header_error(R"({"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}})", 4,
                      {"'a'", "dtype", "F32"});
  expect_header_error(R"({"a":{"dtype":7,"shape":[1],"data_offsets":[0,4]}})", 4, {"'a'", "dtype"});
}

TEST(SafetensorsHeader, ShapesAndOffsetsMustBeNonNegativeIntegers) {
  // nlohmann would truncate 1.5 to 1 and make 1e30 undefined behaviour when cast.
  expect_header_error(R"({"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4,
                      {"'a'", "shape", "1.5"});
  expect_header_error(R"({"a":{"dtype":"F32","shape":[1e30],"data_offsets":[0,4]}})", 4,
                      {"'a'", "shape"});
  expect_header_error(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", 4,
                      {"'a'", "data_offsets"});
  expect_header_error(R"({"a":{"dtype":"F32","shape":"12","data_offsets":[0,4]}})", 4,
                      {"'a'", "shape", "not an array"});
  expect_header_error(R"({"a":{"dtype":"F32","shape":[18446744073709551615],)"
                      R"("data_offsets":[0,4]}})",
                      4, {"'a'", "shape"});
}

TEST(SafetensorsHeader, ByteRangesMustBeInBoundsAndMatchTheShape) {
  expect_header_error(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 8,
                      {"'a'", "offsets"});
  expect_header_error(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", 8,
                      {"'a'", "offsets"});
  expect_header_error(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", 8,
                      {"'a'", "offsets"});
  expect_header_error(R"({"a":{"dtype":"F32","shape":[3037000500,3037000500,2],)"
                      R"("data_offsets":[0,4]}})",
                      4, {"'a'", "more values than"});
}

TEST(SafetensorsHeader, HeaderLengthMustFitTheFile) {
  std::string bytes = safetensors_bytes("{}", 0);
  bytes[7] = '\x7f';  // a header length of ~9e18
  expect_error([&] { parse_safetensors(bytes, "big.safetensors"); },
               {"big.safetensors", "header length"});
  expect_error([&] { parse_safetensors("abc", "short.safetensors"); },
               {"short.safetensors", "shorter"});
}

TEST(SafetensorsHeader, EmptyTensorsNeedNoData) {
  const SafetensorsFile f = parse_safetensors(
      safetensors_bytes(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}})", 0), "e");
  EXPECT_TRUE(f.tensors.at("a").data.empty());
}

// A temporary directory per test, removed after it; `seed` (optional) is copied into it.
class TestDir : public test::TempDirTest {
 protected:
  TestDir() : TempDirTest("facenet-model-files") {}
  void SetUp() override {
    TempDirTest::SetUp();
    if (!seed().empty()) {
      fs::remove(dir_);
      fs::copy(seed(), dir_);
    }
  }
  virtual fs::path seed() const { return {}; }
};

// Damaged copies of the converted nn4.small2 model.
class DamagedModel : public TestDir {
 protected:
  // The model with its graph JSON changed by `edit`, written to `name`.
  fs::path with_graph(const std::string& name, const std::function<void(nlohmann::json&)>& edit) {
    SafetensorsFile f = read_safetensors(test::converted_model("openface"));
    nlohmann::json g = nlohmann::json::parse(f.metadata.at("facenet.graph"));
    edit(g);
    f.metadata["facenet.graph"] = g.dump();
    write_safetensors(dir_ / name, f);
    return dir_ / name;
  }
  nlohmann::json& node(nlohmann::json& g, const std::string& name) {
    for (auto& n : g["nodes"])
      if (n["name"] == name) return n;
    throw std::runtime_error("no node " + name);
  }
  void expect_load_error(const fs::path& file, const std::vector<std::string>& parts) {
    std::vector<std::string> all = parts;
    all.push_back(file.string());
    expect_error([&] { load_model(file); }, all);
  }
};

TEST_F(DamagedModel, FractionalOrWrappingIntegersAreRefused) {
  expect_load_error(
      with_graph("frac.safetensors", [&](auto& g) { node(g, "pool1")["stride"] = 1.5; }),
      {"'pool1'", "'stride'", "integer"});
  // 2^32 + 1 would wrap to a stride of 1 as an int.
  expect_load_error(
      with_graph("wrap.safetensors", [&](auto& g) { node(g, "conv1")["kernel"] = 4294967303ll; }),
      {"'conv1'", "'kernel'", "integer"});
  expect_load_error(with_graph("shape.safetensors",
                               [&](auto& g) {
                                 g["input"]["shape"] = {3, 96.5, 96};
                               }),
                    {"input shape", "integer"});
  expect_load_error(with_graph("version.safetensors", [&](auto& g) { g["version"] = 1.5; }),
                    {"version"});
}

TEST_F(DamagedModel, NodeNamesMustBeUniqueAndInputsExist) {
  expect_load_error(
      with_graph("dup.safetensors", [&](auto& g) { node(g, "conv2")["name"] = "conv1"; }),
      {"'conv1'", "twice"});
  expect_load_error(
      with_graph("asinput.safetensors", [&](auto& g) { node(g, "conv1")["name"] = "input"; }),
      {"'input'", "twice"});
  expect_load_error(
      with_graph("missing.safetensors", [&](auto& g) { node(g, "conv2")["inputs"] = {"nowhere"}; }),
      {"'nowhere'"});
}

TEST_F(DamagedModel, PoolPaddingMustLeaveARealValueInEveryWindow) {
  expect_load_error(with_graph("pad.safetensors", [&](auto& g) { node(g, "pool1")["pad"] = 3; }),
                    {"'pool1'", "pad 3"});
  expect_load_error(
      with_graph("negpad.safetensors", [&](auto& g) { node(g, "conv1")["pad"] = -1; }),
      {"'conv1'", "pad -1"});
}

TEST_F(DamagedModel, ActivationsAreBounded) {
  expect_load_error(with_graph("big.safetensors",
                               [&](auto& g) {
                                 g["input"]["shape"] = {3, 65536, 65536};
                               }),
                    {"input shape", "more than"});
  // Padding makes a conv's output larger than its input.
  expect_load_error(with_graph("bigpad.safetensors",
                               [&](auto& g) {
                                 g["input"]["shape"] = {3, 4096, 4096};
                                 node(g, "conv1")["pad"] = 65536;
                               }),
                    {"'conv1'", "larger than allowed"});
}

TEST_F(DamagedModel, NonFiniteWeightsAndNegativeVarianceAreRefused) {
  Model m = load_model(test::converted_model("openface"));
  Model nan = m;
  nan.tensors.at("conv2_w").data[7] = std::numeric_limits<float>::quiet_NaN();
  save_model(dir_ / "nan.safetensors", nan);
  expect_load_error(dir_ / "nan.safetensors", {"'conv2_w'", "non-finite", "element 7"});
  Model var = m;
  var.tensors.at("bn1_v").data[3] = -1.0f;
  save_model(dir_ / "var.safetensors", var);
  expect_load_error(dir_ / "var.safetensors", {"'bn1'", "'bn1_v'", "negative", "channel 3"});
}

TEST_F(DamagedModel, PreprocessNumbersMustFitFloat32) {
  // Cast to float where images are prepared: 1e300 would overflow the cast.
  expect_load_error(
      with_graph("scale.safetensors", [&](auto& g) { g["preprocess"]["scale"] = 1e300; }),
      {"preprocess.scale"});
  expect_load_error(with_graph("mean.safetensors",
                               [&](auto& g) {
                                 g["preprocess"]["mean"] = {1, -1e300, 2};
                               }),
                    {"preprocess.mean"});
}

TEST_F(DamagedModel, ADirectoryIsNotAModel) {
  expect_load_error(dir_, {"directory"});
}

TEST_F(DamagedModel, CliExitsTwoNamingTheFile) {
  const fs::path dup =
      with_graph("dup.safetensors", [&](auto& g) { node(g, "conv2")["name"] = "conv1"; });
  for (const std::string& cmd :
       {"info " + dup.string(), "info " + dir_.string(),
        "encode --model " + dup.string() + " " +
            test::shared_path("data/happy-house/images/andrew.jpg").string()}) {
    const test::CliResult r = test::run_cli(cmd, dir_);
    EXPECT_EQ(r.status, 2) << cmd << ": " << r.err;
    EXPECT_NE(r.err.find(dir_.string()), std::string::npos) << cmd << ": " << r.err;
    EXPECT_EQ(r.err.find("unexpected"), std::string::npos) << cmd << ": " << r.err;
    EXPECT_TRUE(r.out.empty()) << cmd;
  }
}

// .npy: a header written the way numpy writes it, then `data_bytes` zeros.
std::string npy_bytes(const std::string& dict, size_t data_bytes) {
  std::string h = dict;
  h.append((64 - (10 + h.size() + 1) % 64) % 64, ' ');
  h.push_back('\n');
  std::string out("\x93NUMPY\x01\x00", 8);
  out.push_back(static_cast<char>(h.size() & 0xff));
  out.push_back(static_cast<char>(h.size() >> 8));
  return out + h + std::string(data_bytes, '\0');
}

TEST(NpyReader, ReadsWhatNumpyWrites) {
  const NpyMatrix m =
      parse_npy(npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 24), "m");
  EXPECT_EQ(m.rows, 2);
  EXPECT_EQ(m.cols, 3);
  const NpyMatrix v =
      parse_npy(npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }", 20), "v");
  EXPECT_EQ(v.rows, 5);
  EXPECT_EQ(v.cols, 1);
  const auto file = fs::temp_directory_path() / ("facenet-npy-" + std::to_string(getpid()));
  const float x[6] = {1, 2, 3, 4, 5, 6};
  write_npy(file, x, 3, 2);
  const NpyMatrix r = read_npy(file);
  fs::remove(file);
  EXPECT_EQ(r.data, std::vector<float>(x, x + 6));
}

TEST(NpyReader, HostileHeadersAreNamedErrors) {
  struct Case {
    std::string dict;
    size_t data;
    std::string named;
  };
  const Case cases[] = {
      {"{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", 16, "float32"},
      {"{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", 16, "Fortran"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2, 2), }", 32, "2-D"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (), }", 4, "1-D"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (4, 4), }", 60, "truncated"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", 12, "needs 8"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4), }", 16,
       "truncated"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", 16,
       "too large"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }", 16, "extent"},
      {"{'descr': '<f4', 'shape': (2,), }", 8, "missing"},
      {"{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", 8, "repeated"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x", 8, "malformed"},
  };
  for (const Case& c : cases)
    expect_error([&] { parse_npy(npy_bytes(c.dict, c.data), "bad.npy"); }, {"bad.npy", c.named});
  std::string big = npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", 4);
  big[8] = '\xff', big[9] = '\xff';  // a header of 65535 bytes in a 132-byte file
  expect_error([&] { parse_npy(big, "bad.npy"); }, {"bad.npy", "does not fit"});
  expect_error([&] { parse_npy("\x93NUMPY", "bad.npy"); }, {"bad.npy", "version-1"});
}

// A copy of the CSV standins to damage.
class CsvWeights : public TestDir {
 protected:
  fs::path seed() const override { return test::weights_dir(); }
};

TEST_F(CsvWeights, ADirectoryInPlaceOfACsvIsNamed) {
  fs::remove(dir_ / "bn2_b.csv");
  fs::create_directory(dir_ / "bn2_b.csv");
  expect_error([&] { convert_openface_csv(dir_, Nn4Variant::kOpenFace); },
               {"bn2_b.csv", "directory"});
  const test::CliResult r = test::run_cli(
      "convert openface-csv " + dir_.string() + " -o " + (dir_ / "m.st").string(), dir_);
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_NE(r.err.find("bn2_b.csv"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir_ / "m.st"));
}

TEST_F(CsvWeights, AFileInPlaceOfTheDirectoryIsNamed) {
  expect_error([&] { convert_openface_csv(dir_ / "bn2_b.csv", Nn4Variant::kOpenFace); },
               {"bn2_b.csv", "not a directory"});
}

TEST(CsvParser, MalformedTextIsNamed) {
  const std::pair<std::string, std::string> cases[] = {
      {"1,,2", "element 1"},   {"1,nan", "element 1"},
      {"1e999", "element 0"},  {std::string("1,\0,2", 5), "element 1"},
      {"1 2", "expected ','"}, {"1,", "trailing"},
      {" \n ", "empty"},
  };
  for (const auto& [text, named] : cases)
    expect_error([&] { parse_csv_floats(text, "w.csv"); }, {"w.csv", named});
  EXPECT_EQ(parse_csv_floats(" 1, -2.5e-1 ,3\n", "w.csv"), (std::vector<float>{1, -0.25f, 3}));
}

#ifdef FACENET_HAS_DLIB
TEST(DlibDat, HostileBytesAreNamedErrors) {
  for (const std::string& bytes : {std::string(), std::string("not a dlib file"),
                                   std::string("\x0c"
                                               "loss_metric_",
                                               13),
                                   std::string(1 << 12, '\xff')})
    expect_error([&] { convert_dlib_resnet_bytes(bytes, "bad.dat"); }, {"bad.dat"});
}

TEST(DlibDat, ADirectoryIsNamedAsSuch) {
  const fs::path dir = fs::temp_directory_path() / ("facenet-dat-dir-" + std::to_string(getpid()));
  fs::create_directories(dir / "model.dat");
  const test::CliResult r = test::run_cli(
      "convert dlib-resnet " + (dir / "model.dat").string() + " -o " + (dir / "m.st").string(),
      dir);
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_NE(r.err.find("model.dat"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("directory"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir / "m.st"));
  fs::remove_all(dir);
}

TEST(DlibDat, TruncatedModelIsNamed) {
  const fs::path dat = test::resnet_dat();
  if (!fs::exists(dat)) GTEST_SKIP() << dat << " absent (weights/fetch_dlib_models.sh)";
  std::ifstream in(dat, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (size_t keep : {size_t{1000}, bytes.size() / 2, bytes.size() - 1})
    expect_error([&] { convert_dlib_resnet_bytes(bytes.substr(0, keep), "cut.dat"); }, {"cut.dat"});
}
#endif

}  // namespace
}  // namespace facenet
