// The PyTorch peer (tools/peer_torch.py) that `bench encode` times ours against builds the
// network from the same model file: it must compute the same embeddings from the same pixels,
// or the speed ratio would compare different work. Both models, CPU; skips where PyTorch is
// not importable (tools/setup.sh installs it, so CI runs these). The same holds for the
// ONNX Runtime and OpenVINO peers, checked through the bench's own report.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <opencv2/imgcodecs.hpp>
#include <random>

#include "engine/backend/backend.h"
#include "engine/image/image_io.h"
#include "engine/model/dlib_resnet.h"
#include "tests/dlib_fixture.h"
#include "tests/model_fixture.h"
#include "tools/bench/bench_util.h"
#include "tools/bench/encode_bench.h"

namespace facenet {
namespace {

// Writes `images` as PNG (lossless), runs the peer's
// --embed on them and compares with our CPU backend on the same pixels. Returns the largest
// difference; skipped (returns -1) when the peer cannot run here.
double peer_vs_cpu(const std::filesystem::path& model_file, const std::vector<cv::Mat>& images) {
  const Model m = load_model(model_file);
  const auto dir = model_file.parent_path();
  std::vector<std::string> args = {"--model", model_file.string(), "--batch", "1",      "--warmup",
                                   "0",       "--repeats",         "1",       "--embed"};
  std::vector<std::string> files;
  for (size_t i = 0; i < images.size(); ++i) {
    files.push_back((dir / ("image" + std::to_string(i) + ".png")).string());
    EXPECT_TRUE(cv::imwrite(files.back(), images[i]));
    args.push_back(files.back());
  }
  const nlohmann::json peer = run_python_peer("peer_torch.py", args);
  if (!peer.value("available", true)) {
    std::printf("no PyTorch peer: %s\n", peer.dump().c_str());
    return -1;
  }
  EXPECT_TRUE(peer.contains("embeddings")) << peer.dump();
  if (!peer.contains("embeddings")) return 1e9;

  const InputSpec spec = input_spec(m.graph);
  const int64_t per = element_count(m.graph.input_shape), dim = m.embedding_dim();
  const auto n = static_cast<int64_t>(images.size());
  std::vector<float> x(per * n), ours(dim * n);
  for (int64_t i = 0; i < n; ++i)
    bgr8_to_input(images[i].data, images[i].rows, images[i].cols, spec, x.data() + i * per);
  make_backend(m, {})->forward(x.data(), n, ours.data());
  double err = 0;
  for (int64_t i = 0; i < n; ++i) {
    const auto theirs = peer["embeddings"].value(files[i], std::vector<float>{});
    EXPECT_EQ(theirs.size(), static_cast<size_t>(dim)) << files[i];
    err = std::max(err, test::max_abs_diff(theirs.data(), ours.data() + i * dim,
                                           std::min<size_t>(dim, theirs.size())));
  }
  return err;
}

std::filesystem::path scratch_dir(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("facenet-test-peer-" + name + "-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return dir;
}

TEST(TorchPeer, RunsTheSameDlibResnet) {
  if (!std::filesystem::exists(test::resnet_dat()))
    GTEST_SKIP() << test::resnet_dat() << " missing: run weights/fetch_dlib_models.sh first";
  const auto dir = scratch_dir("dlib");
  save_model(dir / "dlib.safetensors", convert_dlib_resnet(test::resnet_dat()));
  const std::vector<cv::Mat> chips = test::lfw_chips(3);
  ASSERT_EQ(chips.size(), 3u);
  const double err = peer_vs_cpu(dir / "dlib.safetensors", chips);
  std::filesystem::remove_all(dir);
  if (err < 0) GTEST_SKIP() << "PyTorch not importable";
  std::printf("[ measured ] torch peer vs cpu backend, dlib ResNet: max abs diff %.3g\n", err);
  EXPECT_LE(err, 1e-5);
}

// nn4.small2 (stand-in weights: numerics only) on noise images, 96x96 as the model takes.
TEST(TorchPeer, RunsTheSameNn4Small2) {
  const auto dir = scratch_dir("nn4");
  std::filesystem::copy_file(test::converted_model("openface"), dir / "nn4.safetensors");
  std::mt19937 rng(5);
  std::vector<cv::Mat> images;
  for (int i = 0; i < 3; ++i) {
    cv::Mat img(96, 96, CV_8UC3);
    for (auto it = img.begin<cv::Vec3b>(); it != img.end<cv::Vec3b>(); ++it)
      for (int c = 0; c < 3; ++c) (*it)[c] = static_cast<uint8_t>(rng() & 0xff);
    images.push_back(img);
  }
  const double err = peer_vs_cpu(dir / "nn4.safetensors", images);
  std::filesystem::remove_all(dir);
  if (err < 0) GTEST_SKIP() << "PyTorch not importable";
  std::printf("[ measured ] torch peer vs cpu backend, nn4.small2: max abs diff %.3g\n", err);
  EXPECT_LE(err, 1e-5);
}

// `bench encode` on the CPU: every peer (PyTorch on the model file, ONNX Runtime and OpenVINO
// on our ONNX export of it) reports its difference from our output on the same two images,
// and each result names the fastest peer with our ratio to it.
TEST(EncodeBenchPeers, EveryPeerComputesOurEmbeddingsAndTheBestIsNamed) {
  EncodeBenchOptions o;
  o.model_path = test::converted_model("openface");
  o.batches = {1, 2};
  o.warmup = 0;
  o.repeats = 1;
  const nlohmann::json j = run_encode_bench(o);
  int ran = 0;
  for (const char* name : {"pytorch", "onnxruntime", "openvino"}) {
    const nlohmann::json& p = j.at("peers").at(name);
    if (!p.contains("results")) {  // only a runtime that is not installed may be missing
      EXPECT_EQ(p.value("reason", "").rfind("import", 0), 0u) << name << ": " << p.dump();
      continue;
    }
    ++ran;
    const double err = p.at("check").at("max_abs_diff").get<double>();
    std::printf("[ measured ] %s peer vs cpu backend, nn4.small2: max abs diff %.3g\n", name, err);
    EXPECT_LE(err, 1e-5) << name;
  }
  if (ran == 0) GTEST_SKIP() << "no peer importable (tools/setup.sh installs them)";
  for (const auto& r : j.at("results")) {
    double best = 0;
    for (const auto& [name, p] : r.at("peers").items())
      best = std::max(best, p.at("img_per_s").get<double>());
    ASSERT_TRUE(r.contains("best_peer")) << r.dump();
    EXPECT_EQ(r["peers"][r["best_peer"].get<std::string>()]["img_per_s"].get<double>(), best);
    EXPECT_NEAR(r["ratio_vs_best_peer"].get<double>(), r["img_per_s"].get<double>() / best, 1e-9);
  }
  EXPECT_FALSE(j.at("machine").value("onednn_isa", "").empty());
}

}  // namespace
}  // namespace facenet
