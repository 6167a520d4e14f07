// Encoder benchmark: synthetic inputs in [0, 1], warm-up, median/min of repeats.
#include "engine/encode_bench.h"

#include <omp.h>

#include <random>

#include "engine/bench_util.h"
#include "engine/error.h"
#include "engine/model.h"

namespace facenet {

nlohmann::json run_encode_bench(const EncodeBenchOptions& o) {
  if (o.batches.empty()) fail("--batch needs at least one batch size");
  for (int b : o.batches)
    if (b < 1) fail("--batch sizes must be >= 1 (got ", b, ")");
  const Model model = load_model(o.model_path);
  BackendOptions bo;
  bo.device = o.device;
  bo.threads = o.threads;
  auto backend = make_backend(model, bo);
  const int threads = o.threads > 0 ? o.threads : omp_get_num_procs();
  const int64_t per_image = element_count(model.graph.input_shape);
  const int64_t dim = model.embedding_dim();

  nlohmann::json results = nlohmann::json::array();
  std::mt19937 rng(1234);
  std::uniform_real_distribution<float> uni(0.0f, 1.0f);
  for (int b : o.batches) {
    std::vector<float> x(per_image * b), y(dim * b);
    for (auto& v : x) v = uni(rng);
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
                        {"dtype", "fp32"},
                        {"machine", machine_json()},
                        {"results", results}};
  if (o.peer && o.device != Device::cuda) {
    std::string batches;
    for (int b : o.batches) batches += (batches.empty() ? "" : ",") + std::to_string(b);
    nlohmann::json peer = run_python_peer(
        "peer_torch.py", {"--model", o.model_path.string(), "--device", "cpu", "--batch", batches,
                          "--threads", std::to_string(threads), "--repeats",
                          std::to_string(o.repeats), "--warmup", std::to_string(o.warmup)});
    out["peer"] = peer;
    if (peer.contains("results")) {
      for (auto& r : out["results"])
        for (const auto& p : peer["results"])
          if (p.value("batch", -1) == r["batch"].get<int>() && p.contains("img_per_s"))
            r["ratio_vs_peer"] = r["img_per_s"].get<double>() / p["img_per_s"].get<double>();
    }
  }
  return out;
}

}  // namespace facenet
