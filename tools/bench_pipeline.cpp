// Benchmark of the front door (engine/pipeline/pipeline.h) on raw LFW photos: decode + detect +
// landmarks + align + encode, JSON out. Photos/s with 1, 2, 4 and 16 concurrent submitters (each
// submits one photo, waits for it, repeats) against the batch path (Pipeline::run over the same
// photos, what the CLI uses), with the ratio; and the latency of a single-photo request, p50 and
// p99, when the pipeline is idle (one submitter) and when it runs at half of its saturation
// throughput (open-loop arrivals at 0.5 x the 16-submitter photos/s; latency = completion -
// scheduled arrival, so queueing behind a late generator counts too).
//
//   facenet_bench_pipeline --photos 256 --repeats 3 -o bench/results/pipeline-cpu.json
#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "apps/openmp_defaults.h"
#include "engine/core/error.h"
#include "engine/image/image_io.h"
#include "engine/model/convert_openface.h"
#include "engine/pipeline/pipeline.h"
#include "tools/bench/bench_util.h"

namespace facenet {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string model;  // empty: nn4.small2 (openface) converted from the shared CSV weights
  std::string device = "cpu";
  std::string shared = FACENET_DEFAULT_SHARED_DIR;
  std::string images;  // empty: <shared>/data/lfw/lfw-deepfunneled
  int photos = 256;
  int repeats = 3;
  int max_batch = 64;
  double max_delay_ms = -1;  // the pipeline's automatic choice
  int threads = 0;           // backend CPU threads; 0 = every core
  int workers = 0;           // preparing threads; 0 = one per core
  std::vector<int> submitters = {1, 2, 4, 16};
  std::string arrivals = "poisson";  // poisson | fixed
  uint64_t seed = 1;
  std::string out;
};

// The first `n` photos of `dir` (recursive, sorted).
std::vector<ImageInput> first_photos(const fs::path& dir, int n) {
  std::vector<ImageInput> inputs;
  for (const InputEntry& e : expand_inputs({dir.string()})) {
    if (static_cast<int>(inputs.size()) == n) break;
    if (e.ok()) inputs.push_back(ImageInput::file(e.path));
  }
  if (inputs.empty()) fail(dir.string(), ": no images");
  return inputs;
}

double ms(Clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

// Nearest-rank percentile of `v` (sorted here), in the units of v.
double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(v.size())));
  return v[std::clamp<size_t>(rank, 1, v.size()) - 1];
}

json latency_json(const std::vector<double>& latencies_ms) {
  return {{"p50_ms", percentile(latencies_ms, 0.50)},
          {"p99_ms", percentile(latencies_ms, 0.99)},
          {"max_ms", percentile(latencies_ms, 1.0)},
          {"requests", latencies_ms.size()}};
}

// Counts what a measurement's requests did, and the batches the pipeline ran meanwhile.
class Tally {
 public:
  explicit Tally(const Pipeline& pipe) : pipe_(pipe), start_(pipe.stats()) {}
  void add(const ImageResult& r) {
    std::lock_guard<std::mutex> lock(mu_);
    if (r.status == InputStatus::kBusy)
      ++busy_;
    else if (!r.ok())
      ++failed_;
    else if (r.faces.empty())
      ++no_face_;
  }
  json to_json() const {
    const PipelineStats now = pipe_.stats();
    const int64_t batches = now.batches - start_.batches, chips = now.chips - start_.chips;
    return {{"batches", batches},
            {"mean_batch", batches ? double(chips) / double(batches) : 0.0},
            {"busy", busy_},
            {"failed", failed_},
            {"no_face", no_face_}};
  }

 private:
  const Pipeline& pipe_;
  PipelineStats start_;
  std::mutex mu_;
  int64_t busy_ = 0, failed_ = 0, no_face_ = 0;
};

json rate_json(const TimingStats& t, size_t photos) {
  json j = timing_json(t);
  j["photos_per_s"] = double(photos) / t.median_s;
  return j;
}

// Pipeline::run over every photo, `repeats` times.
json batch_path(Pipeline& pipe, const std::vector<ImageInput>& photos, int repeats) {
  Tally tally(pipe);
  std::vector<double> seconds;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = Clock::now();
    pipe.run(photos, pipe.options().defaults, [&](ImageResult& res) { tally.add(res); });
    seconds.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  json j = rate_json(summarize(seconds), photos.size());
  j.update(tally.to_json());
  return j;
}

// `submitters` threads, each submitting the next photo and waiting for it, until all are done;
// `repeats` times. Latency = completion - submit.
json closed_loop(Pipeline& pipe, const std::vector<ImageInput>& photos, int submitters,
                 int repeats) {
  Tally tally(pipe);
  std::vector<double> seconds, latencies;
  std::mutex mu;
  for (int r = 0; r < repeats; ++r) {
    std::atomic<size_t> next{0};
    const auto t0 = Clock::now();
    std::vector<std::thread> threads;
    for (int s = 0; s < submitters; ++s)
      threads.emplace_back([&] {
        std::vector<double> mine;
        for (size_t i; (i = next++) < photos.size();) {
          const auto sent = Clock::now();
          const ImageResult res = pipe.submit(photos[i]).get();
          mine.push_back(ms(Clock::now() - sent));
          tally.add(res);
        }
        std::lock_guard<std::mutex> lock(mu);
        latencies.insert(latencies.end(), mine.begin(), mine.end());
      });
    for (auto& t : threads) t.join();
    seconds.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  json j = rate_json(summarize(seconds), photos.size());
  j["submitters"] = submitters;
  j["latency"] = latency_json(latencies);
  j.update(tally.to_json());
  return j;
}

// Open-loop arrivals at `rate` photos/s from one generator thread (Poisson: exponential gaps;
// fixed: 1 / rate), each a callback submit; latency = completion - scheduled arrival.
json open_loop(Pipeline& pipe, const std::vector<ImageInput>& photos, double rate, int repeats,
               const std::string& arrivals, uint64_t seed) {
  Tally tally(pipe);
  std::vector<double> latencies, achieved;
  std::mt19937_64 rng(seed);
  std::exponential_distribution<double> gap(rate);
  for (int r = 0; r < repeats; ++r) {
    const size_t n = photos.size();
    std::vector<Clock::time_point> scheduled(n), done(n);
    std::vector<char> counted(n, 0);
    std::mutex mu;
    std::condition_variable cv;
    size_t completed = 0;
    const auto t0 = Clock::now() + std::chrono::milliseconds(10);
    double at_s = 0;
    for (size_t i = 0; i < n; ++i) {
      at_s += arrivals == "fixed" ? 1.0 / rate : gap(rng);
      scheduled[i] =
          t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(at_s));
    }
    std::thread generator([&] {
      for (size_t i = 0; i < n; ++i) {
        std::this_thread::sleep_until(scheduled[i]);
        pipe.submit(photos[i], pipe.options().defaults, [&, i](ImageResult res) {
          const auto now = Clock::now();
          tally.add(res);
          std::lock_guard<std::mutex> lock(mu);
          done[i] = now;
          counted[i] = res.status != InputStatus::kBusy;
          if (++completed == n) cv.notify_all();
        });
      }
    });
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return completed == n; });
    }
    generator.join();
    for (size_t i = 0; i < n; ++i)
      if (counted[i]) latencies.push_back(ms(done[i] - scheduled[i]));
    const auto last = *std::max_element(done.begin(), done.end());
    achieved.push_back(double(n) / std::chrono::duration<double>(last - t0).count());
  }
  json j = {{"arrivals", arrivals},
            {"arrival_rate_per_s", rate},
            {"achieved_photos_per_s", summarize(achieved).median_s},
            {"latency", latency_json(latencies)}};
  j.update(tally.to_json());
  return j;
}

// /proc/loadavg's 1-, 5- and 15-minute figures: other work on the machine skews every number
// here (a forward's OpenMP barriers spin while a core is taken), so the JSON says how busy it
// was.
json load_average() {
  std::ifstream in("/proc/loadavg");
  double one = 0, five = 0, fifteen = 0;
  if (!(in >> one >> five >> fifteen)) return nullptr;
  return {one, five, fifteen};
}

std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v ? v : fallback;
}

Model bench_model(const Options& o) {
  if (!o.model.empty()) return load_model(o.model);
  return convert_openface_csv(fs::path(o.shared) / "weights/openface-nn4.small2.v1-csv-5-standins",
                              parse_nn4_variant("openface"));
}

int run(int argc, char** argv) {
  Options o;
  CLI::App app{"Front-door benchmark on raw LFW photos: detect + align + encode (JSON on stdout)"};
  app.add_option("--model", o.model,
                 "model file (default: nn4.small2 openface from the shared CSV weights)");
  app.add_option("--device", o.device, "cpu | cpu-reference | cuda");
  app.add_option("--shared", o.shared, "shared data folder (LFW, the nn4 CSV weights)");
  app.add_option("--images", o.images,
                 "photo folder (default: <shared>/data/lfw/lfw-deepfunneled)");
  app.add_option("--photos", o.photos, "photos: the first N of the folder, sorted")
      ->check(CLI::PositiveNumber);
  app.add_option("--repeats", o.repeats, "timed passes per measurement (median and min reported)")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-batch", o.max_batch, "PipelineOptions::max_batch")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-delay-ms", o.max_delay_ms,
                 "PipelineOptions::max_delay_ms (< 0: automatic)");
  app.add_option("--threads", o.threads, "backend CPU threads (0: every core)");
  app.add_option("--workers", o.workers, "threads preparing requests (0: one per core)");
  app.add_option("--submitters", o.submitters, "concurrent closed-loop submitters")->delimiter(',');
  app.add_option("--arrivals", o.arrivals, "open-loop arrivals at half load: poisson | fixed")
      ->check(CLI::IsMember({"poisson", "fixed"}));
  app.add_option("--seed", o.seed, "seed of the Poisson arrivals");
  app.add_option("-o,--out", o.out, "also write the JSON here");
  CLI11_PARSE(app, argc, argv);

  const fs::path images =
      o.images.empty() ? fs::path(o.shared) / "data/lfw/lfw-deepfunneled" : fs::path(o.images);
  const std::vector<ImageInput> photos = first_photos(images, o.photos);

  PipelineOptions po;
  po.backend.device = parse_device(o.device);
  po.backend.threads = o.threads;
  po.max_batch = o.max_batch;
  po.max_delay_ms = o.max_delay_ms;
  po.workers = o.workers;
  po.max_queue = std::max(1024, 4 * o.photos);  // the half-load run must never see kBusy
  po.defaults.task = Task::kEncode;
  po.defaults.faces.detector = DetectorKind::kHog;
  Pipeline pipe(bench_model(o), po);

  // Warm-up: the dlib models load on first use, the page cache fills, the backend settles.
  const json load_before = load_average();
  Tally warm(pipe);
  pipe.run(photos, po.defaults, [&](ImageResult& r) { warm.add(r); });
  const json warmup = warm.to_json();

  const json batch = batch_path(pipe, photos, o.repeats);
  const double batch_rate = batch["photos_per_s"];
  // Saturation: the photos/s of the most submitters; idle latency: that of one submitter.
  json concurrent = json::array(), idle;
  double saturation = 0;
  int most = 0;
  for (int s : o.submitters) {
    json c = closed_loop(pipe, photos, s, o.repeats);
    c["ratio_to_batch"] = c["photos_per_s"].get<double>() / batch_rate;
    if (s >= most) most = s, saturation = c["photos_per_s"];
    if (s == 1) idle = c["latency"];
    concurrent.push_back(std::move(c));
  }
  if (idle.is_null()) idle = closed_loop(pipe, photos, 1, o.repeats)["latency"];
  const json half = open_loop(pipe, photos, 0.5 * saturation, o.repeats, o.arrivals, o.seed);

  json out = {{"what",
               "raw photos through the front door: decode + HOG detect + landmarks + "
               "align + encode, one face per photo (largest)"},
              {"machine", machine_json()},
              {"model", pipe.spec().model},
              {"dim", pipe.dim()},
              {"backend", pipe.backend_name()},
              {"device", o.device},
              {"threads", o.threads ? o.threads : int(std::thread::hardware_concurrency())},
              {"workers", o.workers},
              {"max_batch", o.max_batch},
              {"max_delay_ms", pipe.options().max_delay_ms},
              {"images", images.string()},
              {"photos", photos.size()},
              {"omp_wait_policy", env_or("OMP_WAIT_POLICY", "unset")},
              {"gomp_spincount", env_or("GOMP_SPINCOUNT", "unset")},
              {"load_average", {{"before", load_before}, {"after", load_average()}}},
              {"warmup", warmup},
              {"batch_path", batch},
              {"concurrent", concurrent},
              {"latency_idle", idle},
              {"saturation_submitters", most},
              {"latency_half_load", half}};
  std::cout << out.dump(2) << std::endl;
  if (!o.out.empty()) {
    std::ofstream f(o.out);
    f << out.dump(2) << "\n";
    if (!f) fail(o.out, ": cannot write");
  }
  return 0;
}

}  // namespace
}  // namespace facenet

int main(int argc, char** argv) {
  facenet::cli::apply_openmp_defaults(argv);  // the CLI's OpenMP setting, so these are its figures
  try {
    return facenet::run(argc, argv);
  } catch (const facenet::Error& e) {
    std::cerr << "facenet_bench_pipeline: " << e.what() << "\n";
    return 1;
  }
}
