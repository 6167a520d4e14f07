// Encoder benchmark: synthetic inputs in [0, 1], warm-up, median/min of repeats; the peers
// (PyTorch, ONNX Runtime, OpenVINO) timed in the same run.
#include "tools/bench/encode_bench.h"

#include <omp.h>

#include <unistd.h>

#include <algorithm>
#include <random>

#include "engine/core/error.h"
#include "engine/core/gpu.h"
#include "engine/core/npy.h"
#include "engine/image/image_io.h"
#include "engine/model/model.h"
#include "engine/model/onnx_export.h"
#include "engine/pipeline/pipeline.h"
#include "tools/bench/bench_util.h"
#ifdef FACENET_HAS_CUDA
#include "engine/backend/cuda/cuda_backend.h"
#include "engine/core/cuda_util.h"
#endif

namespace facenet {

namespace {

// Pixels uniform in [0, 1]: the model-only benchmarks need no real faces.
std::vector<float> synthetic_input(int64_t count, std::mt19937& rng) {
  std::uniform_real_distribution<float> uni(0.0f, 1.0f);
  std::vector<float> x(count);
  for (auto& v : x) v = uni(rng);
  return x;
}

std::string batch_list(const std::vector<int>& batches) {
  std::string s;
  for (int b : batches) s += (s.empty() ? "" : ",") + std::to_string(b);
  return s;
}

// Per result (one batch size): r["peers"][name] = the peer's best configuration at that batch
// {img_per_s, latency_ms, config, ratio (ours / its)}, and r["ratio_vs_best_peer"] = ours / the
// fastest of all peers, named by r["best_peer"] and r["best_peer_config"].
void add_peer_ratios(nlohmann::json& results, const nlohmann::json& peers) {
  for (auto& r : results) {
    const double ours = r["img_per_s"].get<double>();
    double best = 0;
    for (const auto& [name, peer] : peers.items()) {
      if (!peer.contains("results")) continue;
      nlohmann::json fastest;
      for (const auto& p : peer["results"])
        if (p.value("batch", -1) == r["batch"].get<int>() && p.contains("img_per_s") &&
            (fastest.is_null() || p["img_per_s"] > fastest["img_per_s"]))
          fastest = p;
      if (fastest.is_null()) continue;
      const double theirs = fastest["img_per_s"].get<double>();
      r["peers"][name] = {{"img_per_s", theirs},
                          {"latency_ms", fastest.value("latency_ms", 0.0)},
                          {"config", fastest.value("config", "")},
                          {"ratio", ours / theirs}};
      if (theirs > best) {
        best = theirs;
        r["best_peer"] = name;
        r["best_peer_config"] = fastest.value("config", "");
        r["ratio_vs_best_peer"] = ours / theirs;
      }
    }
  }
}

// {peer name: version} of the peers that ran, from their JSON.
nlohmann::json peer_versions(const nlohmann::json& peers) {
  nlohmann::json v = nlohmann::json::object();
  for (const auto& [name, peer] : peers.items()) {
    const char* key = name == "pytorch" ? "torch" : name.c_str();
    if (peer.contains(key)) v[name] = peer[key];
  }
  return v;
}

bool wants(const EncodeBenchOptions& o, const std::string& peer) {
  return std::find(o.peers.begin(), o.peers.end(), peer) != o.peers.end();
}

// Runs the chosen CPU peers on the same batch sizes, threads and repeats as ours: PyTorch on the
// model file, ONNX Runtime and OpenVINO on our own ONNX export of it (a temporary file). Each
// also runs two seeded images once and reports its max abs difference from our output.
nlohmann::json run_cpu_peers(const EncodeBenchOptions& o, const Model& model, Backend& backend,
                             int threads) {
  namespace fs = std::filesystem;
  const fs::path dir =
      fs::temp_directory_path() / ("facenet-bench-encode-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  constexpr int64_t kCheckImages = 2;
  const int64_t per_image = element_count(model.graph.input_shape), dim = model.embedding_dim();
  std::mt19937 rng(99);
  const std::vector<float> x = synthetic_input(per_image * kCheckImages, rng);
  std::vector<float> y(dim * kCheckImages);
  backend.forward(x.data(), kCheckImages, y.data());
  write_npy(dir / "check-input.npy", x.data(), kCheckImages, per_image);
  write_npy(dir / "check-output.npy", y.data(), kCheckImages, dim);
  const std::vector<std::string> common = {"--batch",        batch_list(o.batches),
                                           "--threads",      std::to_string(threads),
                                           "--repeats",      std::to_string(o.repeats),
                                           "--warmup",       std::to_string(o.warmup),
                                           "--check-input",  (dir / "check-input.npy").string(),
                                           "--check-output", (dir / "check-output.npy").string()};
  auto with = [&](std::vector<std::string> args) {
    args.insert(args.end(), common.begin(), common.end());
    return args;
  };

  nlohmann::json peers = nlohmann::json::object();
  if (wants(o, "pytorch"))
    peers["pytorch"] = run_python_peer("peer_torch.py",
                                       with({"--model", o.model_path.string(), "--device", "cpu"}));
  const fs::path onnx = dir / "model.onnx";
  std::string export_error;
  if (wants(o, "onnxruntime") || wants(o, "openvino")) {
    try {
      export_onnx_file(o.model_path, onnx);
    } catch (const Error& e) {
      export_error = e.what();
    }
  }
  for (const char* runtime : {"onnxruntime", "openvino"}) {
    if (!wants(o, runtime)) continue;
    peers[runtime] =
        export_error.empty()
            ? run_python_peer("peer_onnx.py", with({"--onnx", onnx.string(), "--runtime", runtime}))
            : nlohmann::json{{"available", false},
                             {"reason", "ONNX export failed: " + export_error}};
  }
  fs::remove_all(dir);
  return peers;
}

#ifdef FACENET_HAS_CUDA
// End to end through the front door (engine/pipeline): `count` aligned crops as JPEG bytes in
// memory, decoded on the pipeline's worker threads while its batcher keeps two pinned staging
// slots on the GPU, embeddings delivered on the host. At least 8 batches, so the pipeline's
// fill and drain weigh little. Decoding alone is timed too: the CPU's ceiling.
nlohmann::json time_pipeline(const Model& model, const InputSpec& spec,
                             const std::vector<std::vector<unsigned char>>& jpegs, int b,
                             const EncodeBenchOptions& o) {
  const size_t count = static_cast<size_t>(b) * std::max(8, (512 + b - 1) / b);
  PipelineOptions po;
  po.backend.device = Device::kCuda;
  po.backend.precision = o.precision;
  po.backend.layout = o.layout;
  po.max_batch = b;
  Pipeline pipeline(model, po);
  RequestOptions ro;
  ro.faces.detector = DetectorKind::kNone;
  auto inputs = [&] {
    std::vector<ImageInput> in;
    for (size_t i = 0; i < count; ++i)
      in.push_back(ImageInput::bytes(jpegs[i % jpegs.size()], "synthetic"));
    return in;
  };
  const TimingStats e =
      time_repeats([&] { pipeline.run(inputs(), ro, [](ImageResult&) {}); }, o.warmup, o.repeats);
  const int64_t image_bytes = int64_t{3} * spec.height * spec.width;
  std::vector<unsigned char> decoded(count * image_bytes);
  const TimingStats d = time_repeats(
      [&] {
#pragma omp parallel for schedule(dynamic)
        for (int64_t i = 0; i < static_cast<int64_t>(count); ++i)
          decode_image_bgr8(jpegs[i % jpegs.size()], "synthetic", spec,
                            decoded.data() + i * image_bytes);
      },
      o.warmup, o.repeats);
  const std::string threads = std::to_string(omp_get_max_threads());
  return {{"img_per_s", count / e.median_s},
          {"images", count},
          {"timing", timing_json(e)},
          {"decode_img_per_s", count / d.median_s},
          {"decode_timing", timing_json(d)},
          {"what",
           "JPEG bytes in memory -> embeddings on host through the front door (Pipeline::run: "
           "decode on its worker threads, two pinned staging slots overlapped with H2D and the "
           "GPU); the timing includes copying the bytes into the inputs; decode_img_per_s: "
           "decoding alone on " +
               threads + " OpenMP threads"}};
}

// GPU benchmark: per batch size, model-only (CUDA events around a replay of the captured
// forward on device-resident input) and end-to-end (time_pipeline).
nlohmann::json run_cuda_bench(const EncodeBenchOptions& o, const Model& model) {
  BackendOptions bo;
  bo.device = Device::kCuda;
  bo.precision = o.precision;
  bo.layout = o.layout;
  auto backend = make_cuda_backend(model, bo);
  const int64_t per_image = element_count(model.graph.input_shape);
  const InputSpec spec = input_spec(model.graph);
  std::vector<std::vector<unsigned char>> jpegs;
  for (unsigned i = 0; i < 64; ++i) jpegs.push_back(synthetic_jpeg(spec.height, spec.width, i));

  cudaDeviceProp prop{};
  FN_GPU_CHECK(cudaGetDeviceProperties(&prop, 0));
  UniqueEvent start = make_event(), stop = make_event();
  nlohmann::json results = nlohmann::json::array();
  std::mt19937 rng(1234);
  for (int b : o.batches) {
    std::vector<float> x = synthetic_input(per_image * b, rng);
    backend->prepare(b, x.data());
    for (int i = 0; i < o.warmup; ++i) backend->forward_resident(b);
    std::vector<double> seconds;
    for (int r = 0; r < o.repeats; ++r) {
      FN_GPU_CHECK(cudaEventRecord(start.get(), backend->stream()));
      backend->forward_resident(b);
      FN_GPU_CHECK(cudaEventRecord(stop.get(), backend->stream()));
      FN_GPU_CHECK(cudaEventSynchronize(stop.get()));
      float ms = 0;
      FN_GPU_CHECK(cudaEventElapsedTime(&ms, start.get(), stop.get()));
      seconds.push_back(ms * 1e-3);
    }
    const TimingStats t = summarize(seconds);
    size_t free_b = 0, total_b = 0;
    FN_GPU_CHECK(cudaMemGetInfo(&free_b, &total_b));
    nlohmann::json r = {{"batch", b},
                        {"img_per_s", b / t.median_s},
                        {"latency_ms", t.median_s * 1e3},
                        {"timing", timing_json(t)},
                        {"backend_device_bytes", backend->device_bytes()},
                        {"gpu_used_bytes", total_b - free_b}};
    if (o.end_to_end) r["end_to_end"] = time_pipeline(model, spec, jpegs, b, o);
    results.push_back(r);
  }
  nlohmann::json out = {{"what", "encode (model only: CUDA events, device-resident input)"},
                        {"model", model.graph.name + " (" + model.graph.variant + ")"},
                        {"model_file", o.model_path.string()},
                        {"device", "cuda"},
                        {"gpu", prop.name},
                        {"backend", backend->name()},
                        {"dtype", o.precision},
                        {"machine", machine_json()},
                        {"results", results}};
  if (wants(o, "pytorch")) {  // the ONNX peers here are CPU builds
    const nlohmann::json peers = {
        {"pytorch", run_python_peer("peer_torch.py", {"--model", o.model_path.string(), "--device",
                                                      "cuda", "--batch", batch_list(o.batches),
                                                      "--repeats", std::to_string(o.repeats),
                                                      "--warmup", std::to_string(o.warmup)})}};
    add_peer_ratios(out["results"], peers);
    out["peers"] = peers;
  }
  return out;
}
#endif

}  // namespace

nlohmann::json run_encode_bench(const EncodeBenchOptions& o) {
  if (o.batches.empty()) fail("--batch needs at least one batch size");
  for (int b : o.batches)
    if (b < 1) fail("--batch sizes must be >= 1 (got ", b, ")");
  const Model model = load_model(o.model_path);
  if (o.device == Device::kCuda) {
    require_gpu("--device cuda");
#ifdef FACENET_HAS_CUDA
    return run_cuda_bench(o, model);
#endif
  }
  BackendOptions bo;
  bo.device = o.device;
  bo.threads = o.threads;
  bo.precision = o.precision;
  bo.micro_batch = o.micro_batch;
  auto backend = make_backend(model, bo);
  const int threads = o.threads > 0 ? o.threads : omp_get_num_procs();
  const int64_t per_image = element_count(model.graph.input_shape);
  const int64_t dim = model.embedding_dim();

  nlohmann::json results = nlohmann::json::array();
  std::mt19937 rng(1234);
  for (int b : o.batches) {
    std::vector<float> x = synthetic_input(per_image * b, rng), y(dim * b);
    const TimingStats t =
        time_repeats([&] { backend->forward(x.data(), b, y.data()); }, o.warmup, o.repeats);
    results.push_back({{"batch", b},
                       {"img_per_s", b / t.median_s},
                       {"latency_ms", t.median_s * 1e3},
                       {"timing", timing_json(t)}});
  }
  nlohmann::json out = {{"what", "encode (model only, synthetic input)"},
                        {"model", model.graph.name + " (" + model.graph.variant + ")"},
                        {"model_file", o.model_path.string()},
                        {"device", device_name(o.device)},
                        {"backend", backend->name()},
                        {"threads", threads},
                        {"dtype", o.precision},
                        {"micro_batch", o.micro_batch},
                        {"machine", machine_json()},
                        {"results", results}};
  if (!o.peers.empty()) {
    const nlohmann::json peers = run_cpu_peers(o, model, *backend, threads);
    add_peer_ratios(out["results"], peers);
    out["peers"] = peers;
    out["machine"]["peer_versions"] = peer_versions(peers);
  }
  return out;
}

}  // namespace facenet
