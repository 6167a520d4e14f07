// `facenet bench triplet`: our triplet loss + gradient against the PyTorch peer, same inputs.
#include "tools/bench/triplet_bench.h"

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <random>
#include <sstream>

#include "engine/core/blas.h"
#include "engine/core/error.h"
#include "engine/core/gpu.h"
#include "engine/core/npy.h"
#include "tools/bench/bench_util.h"

#ifdef FACENET_HAS_CUDA
#include "engine/core/cuda_util.h"
#endif

namespace facenet {
namespace {

struct Inputs {
  std::vector<float> e;
  std::vector<int32_t> labels;
};

// Unit-length N(0, 1) rows (embeddings live on the hypersphere) and labels i / per_class,
// shuffled, so every identity has per_class samples.
Inputs make_inputs(int64_t batch, int64_t dim, int per_class, uint64_t seed) {
  std::mt19937_64 rng(seed * 1000003u + static_cast<uint64_t>(batch));
  std::normal_distribution<float> normal;
  Inputs in;
  in.e.resize(batch * dim);
  for (int64_t i = 0; i < batch; ++i) {
    float* row = in.e.data() + i * dim;
    double norm = 0;
    for (int64_t k = 0; k < dim; ++k) {
      row[k] = normal(rng);
      norm += static_cast<double>(row[k]) * row[k];
    }
    const float inv = static_cast<float>(1.0 / std::sqrt(norm));
    for (int64_t k = 0; k < dim; ++k) row[k] *= inv;
  }
  in.labels.resize(batch);
  for (int64_t i = 0; i < batch; ++i) in.labels[i] = static_cast<int32_t>(i / per_class);
  std::shuffle(in.labels.begin(), in.labels.end(), rng);
  return in;
}

std::string join(const std::vector<std::string>& parts) {
  std::string s;
  for (const auto& p : parts) s += (s.empty() ? "" : ",") + p;
  return s;
}

// Times one configuration on our side; returns timing and the result of the last run.
struct OurRun {
  TimingStats timing;
  TripletResult result;
};

OurRun time_cpu(const Inputs& in, int64_t batch, int64_t dim, Mining mode, const TripletOptions& o,
                const TripletBenchOptions& b) {
  OurRun r;
  r.timing =
      time_repeats([&] { r.result = triplet_loss(in.e.data(), batch, dim, in.labels, mode, o); },
                   b.warmup, b.repeats);
  return r;
}

#ifdef FACENET_HAS_CUDA
// CUDA events around run() on the context's stream: device time of the whole loss + gradient,
// inputs already resident (set_batch is outside the timed region, as the peer's upload is).
OurRun time_cuda(TripletLossCuda& gpu, const Inputs& in, int64_t batch, int64_t dim, Mining mode,
                 const TripletOptions& o, const TripletBenchOptions& b) {
  gpu.set_batch(in.e.data(), batch, dim, in.labels);
  const cudaStream_t s = gpu.context().stream();
  UniqueEvent start = make_event(), stop = make_event();
  for (int i = 0; i < b.warmup; ++i) gpu.run(mode, o);
  std::vector<double> seconds;
  for (int i = 0; i < b.repeats; ++i) {
    FN_GPU_CHECK(cudaEventRecord(start.get(), s));
    gpu.run(mode, o);
    FN_GPU_CHECK(cudaEventRecord(stop.get(), s));
    FN_GPU_CHECK(cudaEventSynchronize(stop.get()));
    float ms = 0;
    FN_GPU_CHECK(cudaEventElapsedTime(&ms, start.get(), stop.get()));
    seconds.push_back(ms * 1e-3);
  }
  OurRun r;
  r.timing = summarize(std::move(seconds));
  r.result = gpu.fetch();
  return r;
}
#endif

nlohmann::json result_json(const TripletResult& r) {
  return {{"loss_sum", r.loss_sum},
          {"loss_mean", r.loss_mean},
          {"active", r.active},
          {"count", r.count}};
}

double rel_diff(double ours, double theirs) {
  return std::abs(ours - theirs) / std::max(std::abs(theirs), 1e-12);
}

// Loss, active count and gradient of ours against the peer's (its gradient from an .npy).
nlohmann::json agreement_json(const TripletResult& ours, const nlohmann::json& peer,
                              const std::filesystem::path& grad_file) {
  nlohmann::json a = {{"loss_rel_diff", rel_diff(ours.loss_sum, peer.value("loss_sum", 0.0))},
                      {"active_ours", ours.active},
                      {"active_peer", peer.value("active", int64_t{-1})},
                      {"count_equal", ours.count == peer.value("count", int64_t{-1})}};
  if (!std::filesystem::exists(grad_file)) return a;
  const NpyMatrix g = read_npy(grad_file);
  if (g.data.size() != ours.grad.size()) {
    a["grad"] = "size mismatch";
    return a;
  }
  double diff2 = 0, ref2 = 0, max_abs = 0;
  for (size_t i = 0; i < g.data.size(); ++i) {
    const double d = static_cast<double>(ours.grad[i]) - g.data[i];
    diff2 += d * d;
    ref2 += static_cast<double>(g.data[i]) * g.data[i];
    max_abs = std::max(max_abs, std::abs(d));
  }
  a["grad_rel_l2"] = std::sqrt(diff2 / std::max(ref2, 1e-300));
  a["grad_max_abs_diff"] = max_abs;
  return a;
}

// Our result against the CPU reference on the same inputs (--check on cuda).
[[maybe_unused]] nlohmann::json check_json(const TripletResult& ours, const Inputs& in,
                                           int64_t batch, int64_t dim, Mining mode,
                                           const TripletOptions& o) {
  const TripletResult ref = triplet_loss(in.e.data(), batch, dim, in.labels, mode, o);
  double diff2 = 0, ref2 = 0;
  for (size_t i = 0; i < ref.grad.size() && i < ours.grad.size(); ++i) {
    const double d = static_cast<double>(ours.grad[i]) - ref.grad[i];
    diff2 += d * d;
    ref2 += static_cast<double>(ref.grad[i]) * ref.grad[i];
  }
  return {{"loss_rel_diff", rel_diff(ours.loss_sum, ref.loss_sum)},
          {"active_ours", ours.active},
          {"active_reference", ref.active},
          {"grad_rel_l2", std::sqrt(diff2 / std::max(ref2, 1e-300))}};
}

void validate(const TripletBenchOptions& b) {
  if (b.device != "cpu" && b.device != "cuda")
    fail("bench triplet: device must be cpu or cuda, got '", b.device, "'");
  if (b.batches.empty() || b.modes.empty()) fail("bench triplet: no batch sizes or no modes");
  for (int64_t batch : b.batches)
    if (batch < 2) fail("bench triplet: batch sizes must be >= 2, got ", batch);
  if (b.dim < 1 || b.per_class < 2 || b.repeats < 1 || b.warmup < 0 || b.threads < 0)
    fail("bench triplet: need dim >= 1, per_class >= 2, repeats >= 1, warmup >= 0, threads >= 0");
  if (b.device == "cuda") require_gpu("bench triplet --device cuda");
}

}  // namespace

nlohmann::json run_triplet_bench(const TripletBenchOptions& b) {
  validate(b);
  if (b.threads > 0) omp_set_num_threads(b.threads);
  const int threads = omp_get_max_threads();
  const bool cuda = b.device == "cuda";
  const int64_t peer_max_ba = b.peer_max_batch_all > 0 ? b.peer_max_batch_all : cuda ? 4096 : 1024;
  TripletOptions o;
  o.margin = b.margin;
  o.deterministic = b.deterministic;

  const std::filesystem::path dir = std::filesystem::temp_directory_path() /
                                    ("facenet_triplet_bench_" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);

  std::vector<std::string> mode_names, batch_names;
  for (Mining m : b.modes) mode_names.push_back(to_string(m));
  for (int64_t batch : b.batches) batch_names.push_back(std::to_string(batch));

#ifdef FACENET_HAS_CUDA
  std::unique_ptr<TripletLossCuda> gpu;
  if (cuda) gpu = std::make_unique<TripletLossCuda>();
#endif

  struct Row {
    int64_t batch;
    Mining mode;
    OurRun ours;
    nlohmann::json check;
  };
  std::vector<Row> rows;
  for (int64_t batch : b.batches) {
    const Inputs in = make_inputs(batch, b.dim, b.per_class, b.seed);
    std::vector<float> labels_f(in.labels.begin(), in.labels.end());  // exact for |l| < 2^24
    write_npy(dir / ("e_" + std::to_string(batch) + ".npy"), in.e.data(), batch, b.dim);
    write_npy(dir / ("labels_" + std::to_string(batch) + ".npy"), labels_f.data(), batch, 1);
    for (Mining mode : b.modes) {
      Row row{batch, mode, {}, nullptr};
#ifdef FACENET_HAS_CUDA
      if (cuda) {
        row.ours = time_cuda(*gpu, in, batch, b.dim, mode, o, b);
        if (b.check) row.check = check_json(row.ours.result, in, batch, b.dim, mode, o);
      }
#endif
      if (!cuda) row.ours = time_cpu(in, batch, b.dim, mode, o, b);
      rows.push_back(std::move(row));
    }
  }

  nlohmann::json peer = {{"available", false}, {"reason", "not requested"}};
  if (b.peer) {
    std::ostringstream margin;
    margin << b.margin;
    peer =
        run_python_peer("peer_triplet_torch.py", {"--dir",           dir.string(),
                                                  "--batches",       join(batch_names),
                                                  "--dim",           std::to_string(b.dim),
                                                  "--modes",         join(mode_names),
                                                  "--device",        b.device,
                                                  "--warmup",        std::to_string(b.warmup),
                                                  "--repeats",       std::to_string(b.repeats),
                                                  "--threads",       std::to_string(threads),
                                                  "--margin",        margin.str(),
                                                  "--max-batch-all", std::to_string(peer_max_ba)});
  }
  auto peer_entry = [&](int64_t batch, Mining mode) -> nlohmann::json {
    if (!peer.contains("results")) return nullptr;
    for (const auto& r : peer["results"])
      if (r.value("batch", int64_t{0}) == batch && r.value("mode", "") == to_string(mode)) return r;
    return nullptr;
  };

  nlohmann::json results = nlohmann::json::array();
  for (const Row& row : rows) {
    nlohmann::json j = {{"batch", row.batch},
                        {"mode", to_string(row.mode)},
                        {"ours", timing_json(row.ours.timing)}};
    j["ours"].update(result_json(row.ours.result));
    if (!row.check.is_null()) j["check_vs_cpu_reference"] = row.check;
    const nlohmann::json p = peer_entry(row.batch, row.mode);
    if (!p.is_null()) {
      j["peer"] = p;
      if (p.contains("median_ms") && row.ours.timing.median_s > 0)
        j["speedup_vs_peer"] = p["median_ms"].get<double>() / (row.ours.timing.median_s * 1e3);
      if (p.contains("loss_sum"))
        j["agreement"] = agreement_json(
            row.ours.result, p,
            dir / ("grad_" + to_string(row.mode) + "_" + std::to_string(row.batch) + ".npy"));
    }
    results.push_back(std::move(j));
  }
  std::filesystem::remove_all(dir);

  nlohmann::json peer_info = peer;
  peer_info.erase("results");
  return {{"what", "triplet loss sum + gradient dJ/dE (squared L2, online mining)"},
          {"dtype", "float32"},
          {"dim", b.dim},
          {"margin", b.margin},
          {"per_class", b.per_class},
          {"device", b.device},
          {"device_name", cuda ? gpu_status() : machine_json().value("cpu", "unknown")},
          {"threads", threads},
          {"deterministic", b.deterministic},
          {"timing", cuda ? "CUDA events around run() (inputs resident), warm-up then repeats"
                          : "steady_clock around triplet_loss(), warm-up then repeats"},
          {"speedup", "peer median / our median"},
          {"machine", machine_json()},
          {"peer", peer_info},
          {"results", results}};
}

}  // namespace facenet
