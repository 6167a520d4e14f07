// Benchmark: bulk enrolment of synthetic embeddings into a fresh SQLite gallery, and load_all of
// them back, against writing/reading the same matrix as one flat file (the I/O floor), and the
// search snapshot: its write, its checked read and the cost of hashing the matrix. JSON out.
// With --build-gallery PATH it only writes a gallery of --rows unit-length synthetic embeddings
// under --model-name (one identity per --per-person rows), for timing `facenet identify`
// against it.
//
// Options: facenet_bench_gallery --help.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "engine/core/error.h"
#include "engine/search/gallery.h"
#include "tools/bench/bench_util.h"

namespace {

namespace fs = std::filesystem;
using facenet::BulkOptions;
using facenet::EmbeddingSpec;
using facenet::Gallery;
using facenet::GalleryMode;
using facenet::summarize;
using facenet::TimingStats;

struct Args {
  int64_t rows = 1000000;
  int dim = 128;
  int per_person = 10;
  int64_t commit_rows = 8192;
  int repeats = 3;
  std::string dir = fs::temp_directory_path().string();
  bool fsync = false;
  bool check = false;
  std::string build_gallery, model_name = "synthetic";
};

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void remove_gallery(const std::string& path) {
  std::error_code ec;
  for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(path + suffix, ec);
}

// One timed enrolment into a new gallery; returns seconds (create + all commits).
double enroll_once(const Args& a, const std::string& path, const std::vector<float>& x) {
  remove_gallery(path);
  const EmbeddingSpec spec{a.model_name, a.dim};
  const double t0 = now_s();
  facenet::GalleryOptions options;
  options.spec = spec;
  options.fsync_every_commit = a.fsync;
  Gallery g = Gallery::create(path, options);
  BulkOptions opts;
  opts.commit_rows = a.commit_rows;
  auto bulk = g.bulk_enroller(spec, opts);
  char name[32];
  for (int64_t row = 0, person = 0; row < a.rows; row += a.per_person, ++person) {
    const size_t n = static_cast<size_t>(std::min<int64_t>(a.per_person, a.rows - row));
    std::snprintf(name, sizeof name, "person%08lld", static_cast<long long>(person));
    bulk.add(name, x.data() + row * a.dim, n);
  }
  bulk.finish();
  return now_s() - t0;
}

// The peer: the same matrix written to one flat file and read back, no index, no transactions.
std::pair<double, double> flat_file_once(const std::string& path, const std::vector<float>& x) {
  const size_t bytes = x.size() * sizeof(float);
  double t0 = now_s();
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(x.data()), static_cast<std::streamsize>(bytes));
  }
  const double write_s = now_s() - t0;
  std::vector<float> back(x.size());
  t0 = now_s();
  {
    std::ifstream in(path, std::ios::binary);
    in.read(reinterpret_cast<char*>(back.data()), static_cast<std::streamsize>(bytes));
  }
  const double read_s = now_s() - t0;
  fs::remove(path);
  return {write_s, read_s};
}

// Unit-length rows, as the encoder's embeddings are.
std::vector<float> synthetic_rows(const Args& a) {
  std::vector<float> x(static_cast<size_t>(a.rows) * a.dim);
  std::mt19937 rng(1234);
  std::normal_distribution<float> normal;
  for (float& v : x) v = normal(rng);
  for (int64_t r = 0; r < a.rows; ++r) {
    float* row = x.data() + r * a.dim;
    double ss = 0;
    for (int d = 0; d < a.dim; ++d) ss += double(row[d]) * row[d];
    for (int d = 0; d < a.dim; ++d) row[d] = static_cast<float>(row[d] / std::sqrt(ss));
  }
  return x;
}

// The snapshot path of identify: write it once, then time the checked read and the hash alone.
nlohmann::json snapshot_timings(const Args& a, const std::string& path) {
  Gallery g = Gallery::open(path, GalleryMode::kRead);
  const facenet::GalleryMatrix m = g.load_all();
  const int64_t gen = g.generation(), created = g.snapshot_key();
  double t0 = now_s();
  facenet::write_gallery_snapshot(g.snapshot_path(), m, gen, created);
  const double write_s = now_s() - t0;
  std::vector<double> read_s, hash_s, load_s;
  for (int r = 0; r <= a.repeats; ++r) {
    t0 = now_s();
    const auto snap = facenet::read_gallery_snapshot(g.snapshot_path(), gen, created);
    const double rs = now_s() - t0;
    if (!snap) facenet::fail("the snapshot just written was not accepted");
    t0 = now_s();
    volatile uint64_t h =
        facenet::gallery_hash64(m.vectors.data(), m.vectors.size() * sizeof(float), 1);
    (void)h;
    const double hs = now_s() - t0;
    t0 = now_s();
    (void)g.load_for_search();
    const double ls = now_s() - t0;
    if (r == 0) continue;
    read_s.push_back(rs);
    hash_s.push_back(hs);
    load_s.push_back(ls);
  }
  std::error_code ec;
  fs::remove(g.snapshot_path(), ec);
  const TimingStats rd = summarize(read_s), hs = summarize(hash_s), ls = summarize(load_s);
  return {{"snapshot_write_s", write_s},
          {"snapshot_read_checked_s", {{"median", rd.median_s}, {"min", rd.min_s}}},
          {"load_for_search_s", {{"median", ls.median_s}, {"min", ls.min_s}}},
          {"hash_matrix_s", {{"median", hs.median_s}, {"min", hs.min_s}}},
          {"hash_matrix_gb_per_s", m.vectors.size() * sizeof(float) / hs.median_s / 1e9}};
}

int build_only(const Args& a) {
  if (fs::exists(a.build_gallery)) facenet::fail(a.build_gallery, " exists; not overwriting it");
  Args one = a;
  one.commit_rows = int64_t{1} << 40;  // one transaction
  const double s = enroll_once(one, a.build_gallery, synthetic_rows(a));
  std::printf("%s\n", nlohmann::json({{"gallery", a.build_gallery},
                                      {"rows", a.rows},
                                      {"dim", a.dim},
                                      {"model", a.model_name},
                                      {"build_s", s}})
                          .dump()
                          .c_str());
  return 0;
}

int run(const Args& a) {
  if (!a.build_gallery.empty()) return build_only(a);
  const std::vector<float> x = synthetic_rows(a);

  const std::string path =
      (fs::path(a.dir) / ("bench_gallery_" + std::to_string(getpid()) + ".db")).string();
  std::vector<double> enroll_s, load_s, flat_write_s, flat_read_s;
  uint64_t file_bytes = 0;
  bool check_ok = true;
  nlohmann::json snapshot;
  for (int r = 0; r <= a.repeats; ++r) {  // run 0 warms the page cache and is not counted
    const double e = enroll_once(a, path, x);
    Gallery g = Gallery::open(path, GalleryMode::kRead);
    const double t0 = now_s();
    const auto m = g.load_all();
    const double l = now_s() - t0;
    file_bytes = g.stats().file_bytes;
    if (a.check) check_ok = check_ok && m.vectors == x;
    const auto [fw, fr] = flat_file_once(path + ".flat", x);
    if (r == a.repeats) snapshot = snapshot_timings(a, path);
    if (r == 0) continue;
    enroll_s.push_back(e);
    load_s.push_back(l);
    flat_write_s.push_back(fw);
    flat_read_s.push_back(fr);
  }
  remove_gallery(path);

  const TimingStats e = summarize(enroll_s), l = summarize(load_s);
  const TimingStats fw = summarize(flat_write_s), fr = summarize(flat_read_s);
  nlohmann::json out = {
      {"what", "gallery bulk enrolment + load_all (SQLite WAL)"},
      {"rows", a.rows},
      {"dim", a.dim},
      {"per_person", a.per_person},
      {"commit_rows", a.commit_rows},
      {"synchronous", a.fsync ? "FULL" : "NORMAL"},
      {"dtype", "float32"},
      {"device", "cpu"},
      {"machine", facenet::machine_json()},
      {"dir", a.dir},
      {"repeats", a.repeats},
      {"enroll_s", {{"median", e.median_s}, {"min", e.min_s}}},
      {"enroll_rows_per_s", a.rows / e.median_s},
      {"load_all_s", {{"median", l.median_s}, {"min", l.min_s}}},
      {"load_all_rows_per_s", a.rows / l.median_s},
      {"file_bytes", file_bytes},
      {"peer", "flat float32 file write/read of the same matrix"},
      {"peer_write_s", {{"median", fw.median_s}, {"min", fw.min_s}}},
      {"peer_read_s", {{"median", fr.median_s}, {"min", fr.min_s}}},
      {"enroll_vs_peer_write", e.median_s / fw.median_s},
      {"load_vs_peer_read", l.median_s / fr.median_s},
  };
  out.update(snapshot);
  if (a.check) out["check"] = check_ok ? "ok: load_all returned the enrolled matrix" : "FAILED";
  std::printf("%s\n", out.dump(2).c_str());
  return check_ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Gallery benchmark: bulk enrolment of synthetic embeddings into a new SQLite "
      "gallery and load_all of them, vs a flat-file write/read of the same matrix "
      "(JSON on stdout)"};
  Args a;
  app.add_option("--rows", a.rows, "Embeddings to enrol")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--dim", a.dim, "Embedding dimension")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--per-person", a.per_person, "Embeddings per identity")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--commit-rows", a.commit_rows, "Bulk enrolment batch size")
      ->capture_default_str();
  app.add_option("--repeats", a.repeats, "Timed repeats (after one untimed)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--dir", a.dir, "Folder for the temporary gallery")->capture_default_str();
  app.add_flag("--fsync", a.fsync, "synchronous=FULL (survives power loss); default NORMAL");
  app.add_flag("--check", a.check, "Check that load_all returns the enrolled matrix");
  app.add_option("--build-gallery", a.build_gallery,
                 "Only write a gallery of --rows synthetic embeddings to this new file");
  app.add_option("--model-name", a.model_name,
                 "Model name of the synthetic embeddings (as `facenet gallery stats` shows a "
                 "real gallery's, so `facenet identify` accepts the gallery)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  try {
    return run(a);
  } catch (const facenet::Error& e) {
    std::fprintf(stderr, "facenet_bench_gallery: %s\n", e.what());
    return 2;
  }
}
