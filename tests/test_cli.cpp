// The facenet CLI as a user meets it: good and bad inputs, output formats, exit codes.
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/core/npy.h"
#include "tests/cli_fixture.h"

namespace facenet {
namespace {

namespace fs = std::filesystem;
using test::Cli;
using test::CliResult;
using test::slurp;

TEST_F(Cli, BadFilesAreNamedAndTheRestIsStillEncoded) {
  std::ofstream(dir_ / "notes.jpg") << "this is text, not a JPEG";
  std::ofstream(dir_ / "empty.png");
  const std::string missing = (dir_ / "missing.jpg").string();
  const CliResult r = run("encode --model " + model() + " " + happy("andrew.jpg") + " " +
                          (dir_ / "notes.jpg").string() + " " + (dir_ / "empty.png").string() +
                          " " + missing + " " + happy("younes.jpg"));
  EXPECT_EQ(r.status, 1) << r.err;
  EXPECT_NE(r.err.find("notes.jpg"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("empty.png: empty file"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("missing.jpg"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("3 of 5"), std::string::npos) << r.err;
  std::istringstream lines(r.out);
  std::vector<nlohmann::json> rows;
  for (std::string line; std::getline(lines, line);) rows.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_NE(rows[0]["image"].get<std::string>().find("andrew.jpg"), std::string::npos);
  EXPECT_NE(rows[1]["image"].get<std::string>().find("younes.jpg"), std::string::npos);
  for (const auto& row : rows) {
    const auto e = row["embedding"].get<std::vector<double>>();
    ASSERT_EQ(e.size(), 128u);
    double ss = 0;
    for (double v : e) ss += v * v;
    EXPECT_NEAR(ss, 1.0, 1e-5);
  }
}

TEST_F(Cli, NpyOutputHasOneRowPerImageAndAPathList) {
  const fs::path out = dir_ / "emb.npy";
  const CliResult r =
      run("encode --model " + model() + " --format npy --batch 5 -o " + out.string() + " " +
          test::shared_path("data/happy-house/images").string());
  ASSERT_EQ(r.status, 0) << r.err;
  const NpyMatrix m = read_npy(out);
  EXPECT_EQ(m.rows, 18);
  EXPECT_EQ(m.cols, 128);
  std::istringstream paths(slurp(dir_ / "emb.paths.jsonl"));
  std::vector<std::string> lines;
  for (std::string l; std::getline(paths, l);) lines.push_back(l);
  ASSERT_EQ(lines.size(), 18u);
  EXPECT_NE(lines[0].find("andrew.jpg"), std::string::npos);  // sorted directory listing
  // The same image through jsonl gives the same numbers (up to GEMM blocking, which depends
  // on the batch size).
  const CliResult j = run("encode --model " + model() + " " + happy("andrew.jpg"));
  const auto e = nlohmann::json::parse(j.out)["embedding"].get<std::vector<float>>();
  for (int d = 0; d < 128; ++d) EXPECT_NEAR(e[d], m.data[d], 1e-6);
}

TEST_F(Cli, CudaWithoutGpuIsAClearError) {
  if (gpu_available()) GTEST_SKIP() << "a GPU is present; this checks the no-GPU message";
  const CliResult r = run("encode --device cuda --model " + model() + " " + happy("andrew.jpg"));
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("--device cuda"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("GPU"), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty());
}

TEST_F(Cli, MissingModelAndBadWeightsDirAreNamed) {
  const CliResult r =
      run("encode --model " + (dir_ / "nope.safetensors").string() + " " + happy("andrew.jpg"));
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("nope.safetensors"), std::string::npos) << r.err;
  const CliResult c = run("convert openface-csv " + (dir_ / "no-such-dir").string() + " -o " +
                          (dir_ / "m.safetensors").string());
  EXPECT_EQ(c.status, 2);
  EXPECT_NE(c.err.find("no-such-dir"), std::string::npos) << c.err;
}

TEST_F(Cli, InfoAndHelpAreReadable) {
  const CliResult info = run("info " + model());
  ASSERT_EQ(info.status, 0) << info.err;
  EXPECT_NE(info.out.find("learned parameters:           3733968"), std::string::npos);
  EXPECT_NE(info.out.find("with BatchNorm running stats: 3743280"), std::string::npos);
  const CliResult help = run("encode --help");
  EXPECT_EQ(help.status, 0);
  EXPECT_NE(help.out.find("--format"), std::string::npos);
  const CliResult bad = run("encode --format xml --model " + model() + " x.jpg");
  EXPECT_EQ(bad.status, 2) << "an argument error is 'nothing could be done'";
  EXPECT_NE(bad.err.find("xml"), std::string::npos) << bad.err;
}

// README's exit codes: 2 for argument errors (not CLI11's 105/106/109) and when no input at
// all could be used; 1 when some were skipped.
TEST_F(Cli, ExitCodesAreTheReadmes) {
  for (const std::string& args : std::vector<std::string>{
           "encode --batch 0 --model " + model() + " x.jpg", "encode --model", "encode --no-such",
           "identify --gallery g --model m --threshold nan x.jpg",
           "identify --gallery g --model m --threshold -1 x.jpg", "frobnicate"}) {
    const CliResult r = run(args);
    EXPECT_EQ(r.status, 2) << args << ": " << r.err;
    EXPECT_FALSE(r.err.empty()) << args;
  }
  const CliResult none = run("encode --model " + model() + " " + (dir_ / "missing.jpg").string());
  EXPECT_EQ(none.status, 2) << none.err;
  EXPECT_NE(none.err.find("missing.jpg"), std::string::npos) << none.err;
  const CliResult some = run("encode --model " + model() + " " + (dir_ / "missing.jpg").string() +
                             " " + happy("andrew.jpg"));
  EXPECT_EQ(some.status, 1) << some.err;
}

// A model file whose graph asks for impossible arithmetic is refused when it loads, naming the
// file and the field: a stride of 0 (a division by zero in shape inference), an LRN size of
// -5 (a read outside the window), a non-numeric preprocess.scale.
TEST_F(Cli, ModelFieldsAreCheckedBeforeUse) {
  const Model good = load_model(model());
  struct Case {
    const char* what;
    std::function<void(Model&)> damage;
    const char* named;
  };
  const std::vector<Case> cases = {
      {"stride 0",
       [](Model& m) {
         for (auto& n : m.graph.nodes)
           if (n.op == OpType::kMaxPool) {
             n.stride = 0;
             break;
           }
       },
       "stride 0"},
      {"LRN size -5",
       [](Model& m) {
         for (auto& n : m.graph.nodes)
           if (n.op == OpType::kLrn) n.size = -5;
       },
       "LRN size -5"},
      {"LRN size 0",
       [](Model& m) {
         for (auto& n : m.graph.nodes)
           if (n.op == OpType::kLrn) n.size = 0;
       },
       "LRN size 0"},
      {"scale string", [](Model& m) { m.graph.preprocess["scale"] = "big"; }, "preprocess.scale"},
      {"input 0x96",
       [](Model& m) {
         m.graph.input_shape = {3, 0, 96};
       },
       "input shape"},
  };
  for (const Case& c : cases) {
    Model m = good;
    c.damage(m);
    const fs::path file = dir_ / "damaged.safetensors";
    save_model(file, m);
    const CliResult r = run("encode --model " + file.string() + " " + happy("andrew.jpg"));
    EXPECT_EQ(r.status, 2) << c.what << ": " << r.err;
    EXPECT_NE(r.err.find(file.string()), std::string::npos) << c.what << ": " << r.err;
    EXPECT_NE(r.err.find(c.named), std::string::npos) << c.what << ": " << r.err;
    EXPECT_TRUE(r.out.empty()) << c.what << ": no embedding may be printed";
  }
}

}  // namespace
}  // namespace facenet
