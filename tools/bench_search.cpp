// Benchmark of exact L2 k-NN search on synthetic unit-norm galleries, JSON out. CPU runs time
// our fp32 and split-bf16 indexes against FAISS IndexFlatL2 twice on the same data and threads:
// Debian's (linked C++) and the faiss-cpu wheel from PyPI (tools/peer_search_faiss.py, its own
// venv); CUDA runs time PyTorch matmul + topk (tools/peer_search_torch.py) and report fractions
// of the HBM and fp16 tensor-core peaks.
//
//   facenet_bench_search --device cpu --n 1e4,1e5,1e6 --q 1,16,256 --k 1,10,100 --threads 2
//   facenet_bench_search --device cuda --dtype fp16 --algo all --n 1e6,1e7 --q 1,1024,4096
#include <omp.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/core/blas.h"
#include "engine/core/error.h"
#include "engine/core/gpu.h"
#include "engine/search/knn.h"
#include "tests/knn_agreement.h"
#include "tools/bench/bench_util.h"

#ifdef FACENET_HAVE_FAISS
#include <faiss/IndexFlat.h>
#include <faiss/utils/utils.h>
#endif

namespace facenet {
namespace {

using nlohmann::json;
using test::compare_knn;
using test::KnnAgreement;

struct Options {
  std::string device = "cpu";
  std::vector<std::string> n = {"1e4", "1e5", "1e6"};
  std::vector<std::string> q = {"1", "16", "256"};
  std::vector<int> k = {1, 10, 100};
  int dim = 128;
  int threads = 2;
  int warmup = 1;
  int repeats = 3;
  std::string algo = "auto";  // auto | fused | gemm | all
  std::string dtype = "fp16";
  std::vector<std::string> storage = {"fp32", "bf16"};
  std::string faiss_cpu_venv;  // empty: the peer's default
  bool check = false;
  bool peer = true;
};

int64_t parse_count(const std::string& text) {
  const double v = std::stod(text);  // accepts 1e6
  if (!(v >= 1) || v != std::floor(v)) fail("size '", text, "': expected a positive integer");
  return static_cast<int64_t>(v);
}

// Unit vectors from a counter-based hash (splitmix64), so generation is parallel and the
// same seed gives the same data whatever the thread count.
std::vector<float> unit_vectors(int64_t n, int dim, uint64_t seed) {
  std::vector<float> x(static_cast<size_t>(n) * dim);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    float* row = &x[i * dim];
    double s = 0;
    for (int c = 0; c < dim; ++c) {
      uint64_t z = seed * 0x9e3779b97f4a7c15ull + static_cast<uint64_t>(i * dim + c);
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
      z ^= z >> 31;
      row[c] = static_cast<float>((z >> 40) * (2.0 / 16777216.0) - 1.0);
      s += double(row[c]) * row[c];
    }
    const float inv = static_cast<float>(1.0 / std::sqrt(s));
    for (int c = 0; c < dim; ++c) row[c] *= inv;
  }
  return x;
}

std::vector<KnnAlgorithm> algorithms(const std::string& algo) {
  if (algo == "all") return {KnnAlgorithm::kFused, KnnAlgorithm::kGemm};
  return {parse_knn_algorithm(algo)};
}

json rates(const TimingStats& t, int64_t n, int64_t q) {
  json j = timing_json(t);
  j["queries_per_s"] = q / t.median_s;
  j["distances_per_s"] = double(n) * q / t.median_s;
  return j;
}

// The fields that name one measurement.
json shape_json(const char* device, int64_t n, int64_t q, int k, int dim, const std::string& dtype,
                KnnAlgorithm algorithm) {
  return {{"device", device},
          {"n", n},
          {"q", q},
          {"k", k},
          {"d", dim},
          {"dtype", dtype},
          {"algorithm", to_string(algorithm)}};
}

json agreement_json(const KnnAgreement& a) {
  return {{"max_distance_error", a.max_distance_error},
          {"label_mismatches", a.label_mismatches},
          {"unexplained_mismatches", a.unexplained},
          {"ranks_compared", a.compared}};
}

// ---- CPU ----------------------------------------------------------------------------------

// The faiss-cpu wheel runs in a Python peer (its own venv, tools/peer_search_faiss.py) over the
// same gallery and queries, written to a scratch folder as raw float32.
class ScratchDir {
 public:
  ScratchDir() {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern = std::string(tmp ? tmp : "/tmp") + "/facenet_bench_search.XXXXXX";
    if (!mkdtemp(pattern.data())) fail("cannot create a scratch folder from ", pattern);
    path_ = pattern;
  }
  ~ScratchDir() { std::filesystem::remove_all(path_); }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

template <typename T>
void write_raw(const std::string& path, const std::vector<T>& v) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(v.data()),
            static_cast<std::streamsize>(v.size() * sizeof(T)));
  if (!out) fail("cannot write ", path);
}

template <typename T>
bool read_raw(const std::string& path, std::vector<T>& v) {
  std::ifstream in(path, std::ios::binary);
  in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(T)));
  return static_cast<bool>(in);
}

std::string joined(const std::vector<std::string>& items) {
  std::string out;
  for (const std::string& s : items)
    out += (out.empty() ? "" : ",") + std::to_string(parse_count(s));
  return out;
}

// Runs the faiss-cpu peer over every q and k of one gallery; its JSON (with "results").
json faiss_cpu_peer(const Options& o, const ScratchDir& dir, int64_t n) {
  std::vector<std::string> ks;
  for (int k : o.k) ks.push_back(std::to_string(k));
  std::vector<std::string> args = {"--gallery", dir.file("gallery.f32"),
                                   "--queries", dir.file("queries.f32"),
                                   "--n",       std::to_string(n),
                                   "--d",       std::to_string(o.dim),
                                   "--q",       joined(o.q),
                                   "--k",       joined(ks),
                                   "--threads", std::to_string(o.threads),
                                   "--warmup",  std::to_string(o.warmup),
                                   "--repeats", std::to_string(o.repeats),
                                   "--out",     dir.file("")};
  if (!o.faiss_cpu_venv.empty()) args.insert(args.end(), {"--venv", o.faiss_cpu_venv});
  return run_python_peer("peer_search_faiss.py", args);
}

json faiss_cpu_result(const json& peer, int64_t q, int k) {
  if (peer.value("available", false))
    for (const json& r : peer["results"])
      if (r["q"] == q && r["k"] == k) return r;
  return {{"available", false}};
}

// Debian's FAISS (linked C++), with its own OpenMP and OpenBLAS threads at --threads.
#ifdef FACENET_HAVE_FAISS
json faiss_debian_info() {
  return {
      {"name", "faiss.IndexFlatL2 (Debian, linked C++)"},
      {"faiss", std::to_string(FAISS_VERSION_MAJOR) + "." + std::to_string(FAISS_VERSION_MINOR) +
                    "." + std::to_string(FAISS_VERSION_PATCH)},
      {"compile_options", faiss::get_compile_options()}};
}
#endif

void run_cpu(const Options& o, json& results, json& peers) {
  omp_set_num_threads(o.threads);
  std::vector<CpuStorage> storages;
  for (const std::string& s : o.storage) storages.push_back(parse_cpu_storage(s));
  int64_t max_q = 0;
  for (const std::string& q_text : o.q) max_q = std::max(max_q, parse_count(q_text));
  const std::vector<float> all_queries = unit_vectors(max_q, o.dim, 2);
#ifdef FACENET_HAVE_FAISS
  peers["faiss_debian"] = faiss_debian_info();
#endif
  for (const std::string& n_text : o.n) {
    const int64_t n = parse_count(n_text);
    std::cerr << "bench_search: cpu gallery n=" << n << "\n";
    std::vector<std::unique_ptr<CpuFlatIndex>> ours;
    for (CpuStorage storage : storages) {
      ours.push_back(std::make_unique<CpuFlatIndex>(o.dim, storage));
      ours.back()->set_threads(o.threads);
    }
#ifdef FACENET_HAVE_FAISS
    faiss::IndexFlatL2 faiss_index(o.dim);
#endif
    const ScratchDir dir;
    json pypi = {{"name", "faiss-cpu IndexFlatL2"}, {"available", false}, {"reason", "--no-peer"}};
    {
      const std::vector<float> gallery = unit_vectors(n, o.dim, 1);
      for (auto& index : ours) index->add(gallery.data(), n, o.dim);
#ifdef FACENET_HAVE_FAISS
      if (o.peer) faiss_index.add(n, gallery.data());
#endif
      if (o.peer) {
        write_raw(dir.file("gallery.f32"), gallery);
        write_raw(dir.file("queries.f32"), all_queries);
      }
    }
    if (o.peer) {
      std::cerr << "bench_search: faiss-cpu peer n=" << n << "\n";
      pypi = faiss_cpu_peer(o, dir, n);
      std::remove(dir.file("gallery.f32").c_str());
      json about = pypi;
      about.erase("results");
      peers["faiss_cpu"] = about;
    }
    for (const std::string& q_text : o.q) {
      const int64_t nq = parse_count(q_text);
      const float* queries = all_queries.data();
      for (int k : o.k) {
        std::vector<float> dist(nq * k), debian_dist(nq * k), pypi_dist(nq * k);
        std::vector<int64_t> labels(nq * k), debian_labels(nq * k), pypi_labels(nq * k);
        json debian = {{"available", false}};
        double debian_median_s = 0;
#ifdef FACENET_HAVE_FAISS
        if (o.peer) {
          set_blas_num_threads(o.threads);  // FAISS's GEMMs (q >= 20) run on the CBLAS
          const TimingStats faiss_t = time_repeats(
              [&] { faiss_index.search(nq, queries, k, debian_dist.data(), debian_labels.data()); },
              o.warmup, o.repeats);
          set_blas_num_threads(1);
          debian = rates(faiss_t, n, nq);
          debian_median_s = faiss_t.median_s;
        }
#endif
        json pypi_r = faiss_cpu_result(pypi, nq, k);
        const std::string stem = "q" + std::to_string(nq) + "_k" + std::to_string(k);
        const bool pypi_results = pypi_r.contains("median_ms") &&
                                  read_raw(dir.file(stem + ".labels"), pypi_labels) &&
                                  read_raw(dir.file(stem + ".dist"), pypi_dist);
        for (size_t si = 0; si < ours.size(); ++si) {
          const CpuFlatIndex& index = *ours[si];
          for (KnnAlgorithm algorithm : algorithms(o.algo)) {
            CpuSearchStats stats;
            const TimingStats t = time_repeats(
                [&] {
                  index.search(queries, nq, o.dim, k, dist.data(), labels.data(), algorithm,
                               &stats);
                },
                o.warmup, o.repeats);
            json r = shape_json("cpu", n, nq, k, o.dim, to_string(index.storage()), algorithm);
            r["threads"] = o.threads;
            r["ours"] = rates(t, n, nq);
            // Single-probe scans are bound by reading the gallery once: report the rate.
            r["ours"]["scan_bytes_per_s"] = double(index.scan_bytes()) / t.median_s;
            r["ours"]["gallery_bytes"] = index.gallery_bytes();
            if (index.storage() == CpuStorage::kBFloat16)
              r["ours"]["reranked_per_query"] = double(stats.reranked) / nq;
            r["faiss_debian"] = debian;
            r["faiss_cpu"] = pypi_r;
            if (debian_median_s > 0) {
              r["speedup_vs_faiss_debian"] = debian_median_s / t.median_s;
              if (o.check)
                r["check_vs_faiss_debian"] =
                    agreement_json(compare_knn(dist.data(), labels.data(), debian_dist.data(),
                                               debian_labels.data(), nq, k, 1e-4));
            }
            if (pypi_r.contains("median_ms"))
              r["speedup_vs_faiss_cpu"] = pypi_r["median_ms"].get<double>() / (t.median_s * 1e3);
            if (o.check && pypi_results)
              r["check_vs_faiss_cpu"] = agreement_json(compare_knn(
                  dist.data(), labels.data(), pypi_dist.data(), pypi_labels.data(), nq, k, 1e-4));
            std::cerr << r.dump() << "\n";
            results.push_back(r);
          }
        }
      }
    }
  }
}

// ---- CUDA ----------------------------------------------------------------------------------

#ifdef FACENET_HAS_CUDA

// Device limits: HBM bandwidth from the memory clock and bus width; the dense fp16 tensor-core
// peak is not queryable, so it comes from the datasheet for the parts we run on.
json device_limits(int device) {
  cudaDeviceProp prop{};
  FN_GPU_CHECK(cudaGetDeviceProperties(&prop, device));
  int clock_khz = 0, bus_bits = 0;
  FN_GPU_CHECK(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, device));
  FN_GPU_CHECK(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, device));
  const std::string name = prop.name;
  double tensor_fp16 = 0;  // dense FLOP/s
  if (name.find("H100") != std::string::npos)
    tensor_fp16 = name.find("PCIe") != std::string::npos ? 756e12 : 989e12;
  if (name.find("H200") != std::string::npos) tensor_fp16 = 989e12;
  json j = {{"name", name},
            {"hbm_bytes_per_s", 2.0 * clock_khz * 1e3 * bus_bits / 8},
            {"memory_bytes", prop.totalGlobalMem}};
  j["tensor_fp16_flops"] = tensor_fp16 > 0 ? json(tensor_fp16) : json(nullptr);
  return j;
}

// Times search_device with CUDA events on the context's stream.
TimingStats time_gpu(GpuContext& context, const std::function<void()>& fn, int warmup,
                     int repeats) {
  for (int i = 0; i < warmup; ++i) fn();
  UniqueEvent start = make_event(), stop = make_event();
  std::vector<double> seconds;
  for (int i = 0; i < repeats; ++i) {
    FN_GPU_CHECK(cudaEventRecord(start.get(), context.stream()));
    fn();
    FN_GPU_CHECK(cudaEventRecord(stop.get(), context.stream()));
    FN_GPU_CHECK(cudaEventSynchronize(stop.get()));
    float ms = 0;
    FN_GPU_CHECK(cudaEventElapsedTime(&ms, start.get(), stop.get()));
    seconds.push_back(ms * 1e-3);
  }
  return summarize(std::move(seconds));
}

void run_cuda(const Options& o, json& results, json& limits) {
  require_gpu("--device cuda");
  GpuContext context;
  limits = device_limits(context.device());
  const GpuStorage storage = parse_gpu_storage(o.dtype);
  const size_t elem = storage == GpuStorage::kFloat16 ? 2 : 4;
  for (const std::string& n_text : o.n) {
    const int64_t n = parse_count(n_text);
    std::cerr << "bench_search: cuda gallery n=" << n << " " << o.dtype << "\n";
    const std::vector<float> gallery = unit_vectors(n, o.dim, 1);
    GpuFlatIndex index(context, o.dim, storage);
    index.reserve(n);
    index.add(gallery.data(), n, o.dim);
    std::unique_ptr<CpuFlatIndex> reference;
    if (o.check) {
      reference = std::make_unique<CpuFlatIndex>(o.dim);
      reference->add(gallery.data(), n, o.dim);
    }
    for (const std::string& q_text : o.q) {
      const int64_t nq = parse_count(q_text);
      const std::vector<float> queries = unit_vectors(nq, o.dim, 2);
      DeviceBuffer<float> d_queries(queries.size());
      d_queries.upload(queries.data(), queries.size(), context.stream());
      for (int k : o.k) {
        DeviceBuffer<float> d_dist(nq * k);
        DeviceBuffer<int64_t> d_labels(nq * k);
        json peer = {{"available", false}, {"reason", "--no-peer"}};
        if (o.peer)
          peer = run_python_peer(
              "peer_search_torch.py",
              {"--n", std::to_string(n), "--q", std::to_string(nq), "--k", std::to_string(k), "--d",
               std::to_string(o.dim), "--dtype", o.dtype, "--warmup", std::to_string(o.warmup),
               "--repeats", std::to_string(o.repeats)});
        for (KnnAlgorithm algorithm : algorithms(o.algo)) {
          index.prepare_search(nq, k, algorithm);
          const TimingStats t = time_gpu(
              context,
              [&] {
                index.search_device(d_queries.data(), nq, k, d_dist.data(), d_labels.data(),
                                    algorithm);
              },
              o.warmup, o.repeats);
          json r = shape_json("cuda", n, nq, k, o.dim, o.dtype, algorithm);
          r["resolved"] =
              to_string(algorithm == KnnAlgorithm::kAuto ? index.choose(nq, k) : algorithm);
          r["gallery_device_bytes"] = index.gallery_bytes();
          r["ours"] = rates(t, n, nq);
          r["peer"] = peer;
          const double bytes_per_s = double(n) * o.dim * elem / t.median_s;
          r["ours"]["hbm_fraction_one_pass"] =
              bytes_per_s / limits["hbm_bytes_per_s"].get<double>();
          if (!limits["tensor_fp16_flops"].is_null())
            r["ours"]["tensor_fp16_fraction"] = 2.0 * o.dim * double(n) * nq / t.median_s /
                                                limits["tensor_fp16_flops"].get<double>();
          if (peer.contains("median_ms"))
            r["speedup_vs_peer"] = peer["median_ms"].get<double>() / (t.median_s * 1e3);
          if (reference) {
            const int64_t checked = std::min<int64_t>(nq, 32);
            std::vector<float> dist(nq * k), want_dist(checked * k);
            std::vector<int64_t> labels(nq * k), want_labels(checked * k);
            d_dist.download(dist.data(), dist.size(), context.stream());
            d_labels.download(labels.data(), labels.size(), context.stream());
            context.synchronize();
            reference->search(queries.data(), checked, o.dim, k, want_dist.data(),
                              want_labels.data());
            r["check_vs_cpu"] = agreement_json(compare_knn(dist.data(), labels.data(),
                                                           want_dist.data(), want_labels.data(),
                                                           checked, k, elem == 2 ? 4e-3 : 1e-4));
          }
          std::cerr << r.dump() << "\n";
          results.push_back(r);
        }
      }
    }
  }
}

#endif  // FACENET_HAS_CUDA

int run(int argc, char** argv) {
  Options o;
  CLI::App app{"Exact L2 k-NN search benchmark (JSON on stdout)"};
  app.add_option("--device", o.device, "cpu | cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--n", o.n, "gallery sizes (1e6 accepted)")->delimiter(',');
  app.add_option("--q", o.q, "query batch sizes")->delimiter(',');
  app.add_option("--k", o.k, "neighbour counts")->delimiter(',');
  app.add_option("--dim", o.dim, "embedding dimension");
  app.add_option("--threads", o.threads, "CPU threads for ours and FAISS (OpenMP and BLAS)");
  app.add_option("--warmup", o.warmup, "untimed runs before timing");
  app.add_option("--repeats", o.repeats, "timed runs (median and min reported)");
  app.add_option("--algo", o.algo, "auto | fused | gemm | all");
  app.add_option("--dtype", o.dtype, "GPU gallery storage: fp16 | fp32");
  app.add_option("--storage", o.storage, "CPU gallery storages: fp32,bf16")->delimiter(',');
  app.add_option("--faiss-cpu-venv", o.faiss_cpu_venv,
                 "venv holding the faiss-cpu wheel (default: tools/peer_search_faiss.py's)");
  app.add_flag("--check", o.check, "compare results with both FAISS (cpu) or the CPU index (cuda)");
  app.add_flag("!--no-peer", o.peer, "skip the peers (cpu: both FAISS; cuda: PyTorch)");
  CLI11_PARSE(app, argc, argv);

  json results = json::array();
  json limits = nullptr;
  json peers = json::object();
  if (o.device == "cpu") {
    run_cpu(o, results, peers);
  } else {
#ifdef FACENET_HAS_CUDA
    run_cuda(o, results, limits);
#else
    fail("--device cuda: this build has no CUDA (", gpu_status(), ")");
#endif
  }
  json out = {{"what", "exact L2 k-NN search (squared distances)"},
              {"machine", machine_json()},
              {"device_limits", limits},
              {"peers", peers},
              {"threads", o.threads},
              {"results", results}};
  std::cout << out.dump(2) << std::endl;
  return 0;
}

}  // namespace
}  // namespace facenet

int main(int argc, char** argv) {
  try {
    return facenet::run(argc, argv);
  } catch (const facenet::Error& e) {
    std::cerr << "facenet_bench_search: " << e.what() << "\n";
    return 1;
  }
}
