// `facenet export onnx`: the exported file, run by ONNX Runtime (and OpenVINO where it is
// importable) through tools/check_onnx.py, must give our reference backend's embeddings on
// the same inputs — for both nn4.small2 variants, dlib's ResNet and a small graph built to
// hit every op's edge cases; and what ONNX cannot express is refused naming file and node.
#include <unistd.h>

#include <fstream>
#include <map>
#include <random>

#include "engine/backend/backend.h"
#include "engine/core/npy.h"
#include "engine/model/onnx_export.h"
#include "tests/cli_fixture.h"
#include "tests/dlib_fixture.h"
#include "tools/bench/bench_util.h"

namespace facenet {
namespace {

namespace fs = std::filesystem;

constexpr double kTolerance = 1e-4;

fs::path scratch_dir() {
  const auto dir =
      fs::temp_directory_path() / ("facenet-test-onnx-" + std::to_string(::getpid()) + "-" +
                                   ::testing::UnitTest::GetInstance()->current_test_info()->name());
  fs::create_directories(dir);
  return dir;
}

std::vector<float> uniform(int64_t count, unsigned seed, float lo, float hi) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(count);
  for (auto& x : v) x = u(rng);
  return v;
}

std::vector<float> forward(const Model& m, Device device, const std::vector<float>& x, int64_t n) {
  BackendOptions o;
  o.device = device;
  std::vector<float> y(n * m.embedding_dim());
  make_backend(m, o)->forward(x.data(), n, y.data());
  return y;
}

// Max abs difference of each runtime's output from `want` (n x dim); runtimes that did not
// run are absent. Empty with `reason` set when ONNX Runtime is not importable.
struct RuntimeDiffs {
  std::map<std::string, double> diff;
  std::string reason;
};

RuntimeDiffs run_runtimes(const fs::path& onnx, const std::vector<float>& x, int64_t n,
                          const std::vector<float>& want, int64_t dim) {
  const fs::path dir = onnx.parent_path();
  write_npy(dir / "input.npy", x.data(), n, static_cast<int64_t>(x.size()) / n);
  const nlohmann::json r =
      run_python_peer("check_onnx.py", {"--model", onnx.string(), "--input",
                                        (dir / "input.npy").string(), "--out-dir", dir.string()});
  RuntimeDiffs d;
  // Only a missing onnxruntime module skips; a runtime that fails on our file is a failure.
  if (!r.value("available", false) &&
      r.value("reason", "").rfind("import onnxruntime failed", 0) == 0) {
    d.reason = r.dump();
    return d;
  }
  EXPECT_TRUE(r.value("available", false) && r.contains("outputs")) << r.dump();
  if (!r.contains("outputs")) return d;
  EXPECT_EQ(r.value("input_shape", nlohmann::json::array()).at(0), "N") << "batch not dynamic";
  const auto checker = r.value("onnx_checker", nlohmann::json());
  if (checker.is_string()) {
    std::printf("onnx checker: %s\n", checker.get<std::string>().c_str());
    EXPECT_EQ(checker.get<std::string>().rfind("passed", 0), 0u) << checker.get<std::string>();
  }
  for (const auto& [runtime, path] : r.at("outputs").items()) {
    const NpyMatrix y = read_npy(path.get<std::string>());
    EXPECT_EQ(y.rows, n) << runtime;
    EXPECT_EQ(y.cols, dim) << runtime;
    if (y.rows != n || y.cols != dim) continue;
    d.diff[runtime] = test::max_abs_diff(y.data.data(), want.data(), want.size());
    std::printf("[ measured ] %s vs cpu-reference: max abs diff %.3g (%s %s, batch %lld)\n",
                onnx.stem().c_str(), d.diff[runtime], runtime.c_str(),
                r.value(runtime, std::string("?")).c_str(), static_cast<long long>(n));
  }
  return d;
}

// Exports `m` (already written as `onnx`, or exported here when `onnx` does not exist), runs
// it on `n` seeded inputs in [0, 1] and requires every runtime to match the reference.
void expect_runtimes_match(const Model& m, const fs::path& onnx, int64_t n) {
  if (!fs::exists(onnx)) {
    const std::string bytes = export_onnx(m);
    std::ofstream(onnx, std::ios::binary).write(bytes.data(), bytes.size());
  }
  const int64_t per = element_count(m.graph.input_shape);
  const std::vector<float> x = uniform(per * n, 7, 0.0f, 1.0f);
  const std::vector<float> want = forward(m, Device::kCpuReference, x, n);
  double largest = 0;
  for (float v : want) largest = std::max(largest, std::fabs(static_cast<double>(v)));
  ASSERT_GT(largest, 1e-2) << "reference output is (nearly) all zero: the test would prove nothing";
  const RuntimeDiffs d = run_runtimes(onnx, x, n, want, m.embedding_dim());
  if (!d.reason.empty())
    GTEST_SKIP() << "ONNX Runtime not importable (tools/setup.sh installs it): " << d.reason;
  ASSERT_TRUE(d.diff.count("onnxruntime"));
  for (const auto& [runtime, err] : d.diff) EXPECT_LE(err, kTolerance) << runtime;
  if (!d.diff.count("openvino")) std::printf("note: OpenVINO not importable, not checked\n");
}

TEST(OnnxExport, Nn4Small2OpenfaceThroughTheCli) {
  const fs::path dir = scratch_dir(), onnx = dir / "nn4-openface.onnx";
  const std::string cmd = "'" + test::cli_path() + "' export onnx '" +
                          test::converted_model("openface").string() + "' -o '" + onnx.string() +
                          "' 2>'" + (dir / "stderr.txt").string() + "'";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << test::slurp(dir / "stderr.txt");
  expect_runtimes_match(load_model(test::converted_model("openface")), onnx, 3);
  fs::remove_all(dir);
}

TEST(OnnxExport, Nn4Small2Coursera) {
  const fs::path dir = scratch_dir();
  expect_runtimes_match(load_model(test::converted_model("coursera")), dir / "nn4-coursera.onnx",
                        3);
  fs::remove_all(dir);
}

TEST(OnnxExport, DlibResnet) {
  const Model* m = test::dlib_model();
  if (!m)
    GTEST_SKIP() << "dlib_face_recognition_resnet_model_v1.dat not in the dlib models folder: run "
                    "weights/fetch_dlib_models.sh to check the dlib ResNet export";
  const fs::path dir = scratch_dir();
  expect_runtimes_match(*m, dir / "dlib-resnet.onnx", 2);
  fs::remove_all(dir);
}

// Every op with the cases the published graphs may not reach: padded max/avg/L2 pools over
// negative values, concat over an odd size gap (centred: 1 before, 2 after), add of a smaller
// map (zero beyond its channels, rows and columns), BatchNorm, LRN, affine, dense, l2norm.
Model edge_case_model() {
  Model m;
  Graph& g = m.graph;
  g.name = "onnx-edge-cases";
  g.input = "pixels";
  g.input_shape = {3, 11, 11};
  g.output = "out";
  auto add = [&](Node n) { g.nodes.push_back(std::move(n)); };
  add(make_conv("c1", "pixels", 4, 3, 1, 1));                        // 4 x 11 x 11
  add(make_conv("c2", "pixels", 2, 5, 3, 0));                        // 2 x 3 x 3
  add(make_node(OpType::kMaxPool, "mp", {"c1"}, 3, 2, 1));           // 4 x 6 x 6
  add(make_node(OpType::kAvgPool, "ap", {"c1"}, 3, 2, 1));           // 4 x 6 x 6
  add(make_node(OpType::kL2Pool, "lp", {"c1"}, 3, 2, 1));            // 4 x 6 x 6
  add(make_node(OpType::kConcat, "cat", {"mp", "c2", "ap", "lp"}));  // 14 x 6 x 6
  Node bn = make_node(OpType::kBatchNorm, "bn", {"cat"});
  bn.gamma = "bn_g", bn.beta = "bn_b", bn.mean = "bn_m", bn.var = "bn_v", bn.eps = 1e-3;
  add(bn);
  Node lrn = make_node(OpType::kLrn, "lrn", {"bn"});
  lrn.size = 5, lrn.alpha = 0.3, lrn.beta_pow = 0.75, lrn.k = 2.0;
  add(lrn);
  Node af = make_node(OpType::kAffine, "af", {"lrn"});
  af.gamma = "af_g", af.beta = "af_b";
  add(af);
  add(make_node(OpType::kAdd, "sum", {"c2", "af"}));  // c2 zero-extended to 14 x 6 x 6
  add(make_node(OpType::kRelu, "relu", {"sum"}));
  add(make_dense("fc", "relu", 8));
  add(make_node(OpType::kL2Norm, "out", {"fc"}));
  unsigned seed = 11;
  auto tensor = [&](const std::string& name, Shape shape, float lo, float hi) {
    m.tensors[name] = HostTensor(shape, uniform(element_count(shape), seed++, lo, hi));
  };
  tensor("c1_w", {4, 3, 3, 3}, -0.5f, 0.5f);
  tensor("c1_b", {4}, -1.0f, 0.0f);  // mostly negative maps: max pooling must skip padding
  tensor("c2_w", {2, 3, 5, 5}, -0.3f, 0.3f);
  tensor("c2_b", {2}, -0.2f, 0.2f);
  for (const char* p : {"bn_g", "bn_b", "bn_m", "af_g", "af_b"}) tensor(p, {14}, -1.0f, 1.0f);
  tensor("bn_v", {14}, 0.1f, 2.0f);
  tensor("fc_w", {8, 14 * 6 * 6}, -0.1f, 0.1f);
  tensor("fc_b", {8}, -0.1f, 0.1f);
  validate_model(m);
  return m;
}

TEST(OnnxExport, EveryOpsEdgeCases) {
  const fs::path dir = scratch_dir();
  expect_runtimes_match(edge_case_model(), dir / "edge-cases.onnx", 3);
  fs::remove_all(dir);
}

TEST(OnnxExport, RefusesEvenLrnNamingFileAndNode) {
  Model m = edge_case_model();
  for (Node& n : m.graph.nodes)
    if (n.op == OpType::kLrn) n.size = 4;
  test::expect_error([&] { export_onnx(m); }, {"'lrn'", "even size 4"});
  const fs::path dir = scratch_dir();
  save_model(dir / "even-lrn.safetensors", m);
  test::expect_error([&] { export_onnx_file(dir / "even-lrn.safetensors", dir / "even-lrn.onnx"); },
                     {"even-lrn.safetensors", "'lrn'"});
  EXPECT_FALSE(fs::exists(dir / "even-lrn.onnx"));
  fs::remove_all(dir);
}

// Node names are free text; one that clashes with a helper value the export makes is named.
TEST(OnnxExport, RefusesClashingValueNames) {
  Model m = edge_case_model();
  for (Node& n : m.graph.nodes) {
    if (n.name == "ap") n.name = "cat/pad1";  // the name of concat's padded second input (c2)
    for (auto& in : n.inputs)
      if (in == "ap") in = "cat/pad1";
  }
  test::expect_error([&] { export_onnx(m); }, {"'cat/pad1'", "taken twice"});
}

TEST(OnnxExport, MissingModelFileIsNamed) {
  test::expect_error([] { export_onnx_file("/nonexistent/m.safetensors", "/tmp/never.onnx"); },
                     {"/nonexistent/m.safetensors"});
  const fs::path dir = scratch_dir();
  const std::string cmd = "'" + test::cli_path() +
                          "' export onnx /nonexistent/m.safetensors -o never.onnx 2>'" +
                          (dir / "stderr.txt").string() + "'";
  const int raw = std::system(cmd.c_str());
  EXPECT_EQ(WIFEXITED(raw) ? WEXITSTATUS(raw) : -1, 2) << "exit status: nothing could be done";
  EXPECT_NE(test::slurp(dir / "stderr.txt").find("/nonexistent/m.safetensors"), std::string::npos);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace facenet
