// Benchmark of face detection on raw photos, JSON out, every detector in the same run:
//   - ours: the engine's CNN detector (engine/face/cnn_detector.h) on the CPU backend (and on
//     CUDA with --device cuda), batched (detect_batch over the set) and one photo at a time;
//   - dlib_cnn: dlib's own CNN detector (cnn_face_detection_model_v1's code: dlib's network);
//   - dlib_hog: dlib's HOG detector, one thread and one per core (photos split between them).
// On three photo sets: LFW (250x250; --photos of them) and the openface examples resized to 1
// and 4 megapixels. Each set also reports how many photos' detections agree with dlib's CNN
// detector (same count, boxes within 1 px, scores within 1e-3) and the largest differences.
// With --model, also the end-to-end raw photo -> embedding throughput through the front door
// (decode, detect, landmarks, align, encode) with each --detector choice.
//
//   facenet_bench_detect --photos 60 -o bench/results/detect-cpu.json
#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <opencv2/imgproc.hpp>
#include <string>
#include <thread>
#include <vector>

#include "apps/openmp_defaults.h"
#include "engine/core/error.h"
#include "engine/eval/lfw_eval.h"
#include "engine/face/cnn_detector.h"
#include "engine/image/image_io.h"
#include "engine/model/convert_openface.h"
#include "engine/pipeline/pipeline.h"
#include "tools/bench/bench_util.h"

namespace facenet {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct Options {
  std::string shared = FACENET_DEFAULT_SHARED_DIR;
  std::string device = "cpu";
  int photos = 60;
  int repeats = 3;
  int large_repeats = 1;
  int upsample = 0;
  bool end_to_end = true;
  bool skip_dlib_cnn_large = false;
  std::string out;
};

struct PhotoSet {
  std::string name;
  std::vector<Bgr8Image> images;
  std::vector<std::string> files;
};

// The openface examples scaled (aspect kept, bilinear) to about `megapixels`.
PhotoSet scaled_examples(const fs::path& dir, double megapixels) {
  PhotoSet s;
  s.name = std::to_string(static_cast<int>(megapixels)) + "mp";
  for (const char* f : {"lennon-2.jpg", "adams.jpg", "clapton-1.jpg", "carell.jpg"}) {
    const Bgr8Image img = read_bgr8_image(dir / f);
    const double k = std::sqrt(megapixels * 1e6 / (double(img.width) * img.height));
    const cv::Mat src(img.height, img.width, CV_8UC3,
                      const_cast<unsigned char*>(img.pixels.data()));
    cv::Mat dst;
    cv::resize(src, dst,
               cv::Size(static_cast<int>(img.width * k), static_cast<int>(img.height * k)), 0, 0,
               cv::INTER_LINEAR);
    Bgr8Image out;
    out.width = dst.cols;
    out.height = dst.rows;
    out.pixels.assign(dst.data, dst.data + dst.total() * 3);
    s.images.push_back(std::move(out));
    s.files.push_back(f);
  }
  return s;
}

using Dets = std::vector<std::vector<Detection>>;

json time_detector(const std::string& name, const std::function<Dets()>& run, int photos,
                   int repeats, Dets* result) {
  std::vector<double> seconds;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    Dets d = run();
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    if (result && r == 0) *result = std::move(d);
  }
  const TimingStats t = summarize(seconds);
  std::cerr << "  " << name << ": " << photos / t.median_s << " photos/s\n";
  return {{"photos_per_s", photos / t.median_s},
          {"ms_per_photo", 1e3 * t.median_s / photos},
          {"pass", timing_json(t)}};
}

// Per photo: same count, boxes within 1 px, scores within 1e-3.
json agreement(const Dets& ours, const Dets& dlib) {
  int same = 0, faces = 0;
  long max_px = 0;
  double max_score = 0;
  std::vector<int> differing;
  for (size_t i = 0; i < ours.size(); ++i) {
    bool ok = ours[i].size() == dlib[i].size();
    faces += static_cast<int>(dlib[i].size());
    for (size_t j = 0; ok && j < ours[i].size(); ++j) {
      const FaceBox &a = ours[i][j].box, &b = dlib[i][j].box;
      const long px = std::max({std::abs(a.left - b.left), std::abs(a.top - b.top),
                                std::abs(a.right - b.right), std::abs(a.bottom - b.bottom)});
      const double ds = std::abs(ours[i][j].score - dlib[i][j].score);
      max_px = std::max(max_px, px);
      max_score = std::max(max_score, ds);
      ok = px <= 1 && ds <= 1e-3;
    }
    if (ok)
      ++same;
    else
      differing.push_back(static_cast<int>(i));
  }
  return {{"photos", ours.size()},       {"identical_within_1px_1e-3", same},
          {"dlib_faces", faces},         {"max_box_diff_px", max_px},
          {"max_score_diff", max_score}, {"differing_photo_indices", differing}};
}

// Lets the thread pools of the previous detector go idle (OpenBLAS, under dlib's CNN
// detector, and OpenMP spin after their last call and would take cores from the next one).
void settle() {
  std::this_thread::sleep_for(std::chrono::seconds(1));
}

json bench_set(const PhotoSet& set, const Options& o, const Detector& ours_cpu,
               const Detector* ours_cuda, const Detector& dlib_cnn, const Detector& hog,
               int repeats, bool with_dlib_cnn) {
  std::cerr << set.name << " (" << set.images.size() << " photos)\n";
  std::vector<const Bgr8Image*> ptrs;
  int64_t pixels = 0;
  for (const auto& i : set.images) {
    ptrs.push_back(&i);
    pixels += int64_t{i.width} * i.height;
  }
  const int n = static_cast<int>(ptrs.size());
  auto one_by_one = [&](const Detector& d) {
    return [&]() {
      Dets out;
      for (const auto* p : ptrs) out.push_back(d.detect(*p, o.upsample));
      return out;
    };
  };
  json j = {{"photos", n},
            {"mean_megapixels", pixels / 1e6 / n},
            {"upsample", o.upsample},
            {"order", "dlib_hog (1 thread, all cores), ours, dlib_cnn; 1 s idle between"}};
  settle();
  hog.detect(*ptrs.front(), o.upsample);  // this thread's HOG detector object
  j["dlib_hog_1_thread"] = time_detector("dlib hog 1 thread", one_by_one(hog), n, repeats, nullptr);
  // One thread per core, photos split between them. dlib's HOG detector object is per thread
  // (built on a thread's first call, ~10 ms): each thread warms up, then all start together.
  const int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::vector<double> seconds;
  for (int r = 0; r < repeats; ++r) {
    std::atomic<int> ready{0};
    std::chrono::steady_clock::time_point t0;
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&, t] {
        hog.detect(*ptrs[0], o.upsample);
        if (++ready == threads) t0 = std::chrono::steady_clock::now();
        while (ready < threads) std::this_thread::yield();
        for (size_t i = t; i < ptrs.size(); i += threads) hog.detect(*ptrs[i], o.upsample);
      });
    for (auto& th : pool) th.join();
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  const TimingStats hog_all = summarize(seconds);
  std::cerr << "  dlib hog " << threads << " threads: " << n / hog_all.median_s << " photos/s\n";
  j["dlib_hog_all_cores"] = {{"photos_per_s", n / hog_all.median_s},
                             {"ms_per_photo", 1e3 * hog_all.median_s / n},
                             {"pass", timing_json(hog_all)}};
  j["dlib_hog_all_cores"]["threads"] = threads;
  settle();
  Dets ours_dets, dlib_dets;
  // The first pass builds a backend per photo size (oneDNN primitives, activation memory):
  // timed on its own, then the warm passes.
  j["ours_cpu_first_pass"] = time_detector(
      "ours cpu first pass", [&] { return ours_cpu.detect_batch(ptrs, o.upsample); }, n, 1,
      nullptr);
  j["ours_cpu_batched"] = time_detector(
      "ours cpu batched", [&] { return ours_cpu.detect_batch(ptrs, o.upsample); }, n, repeats,
      &ours_dets);
  j["ours_cpu_one_by_one"] =
      time_detector("ours cpu 1-by-1", one_by_one(ours_cpu), n, repeats, nullptr);
  if (ours_cuda) {
    ours_cuda->detect(*ptrs.front(), o.upsample);
    Dets cuda_dets;
    j["ours_cuda_batched"] = time_detector(
        "ours cuda batched", [&] { return ours_cuda->detect_batch(ptrs, o.upsample); }, n, repeats,
        &cuda_dets);
    j["ours_cuda_one_by_one"] =
        time_detector("ours cuda 1-by-1", one_by_one(*ours_cuda), n, repeats, nullptr);
    j["cuda_vs_cpu_agreement"] = agreement(cuda_dets, ours_dets);
  }
  if (with_dlib_cnn) {
    settle();
    j["dlib_cnn"] = time_detector("dlib cnn", one_by_one(dlib_cnn), n, 1, &dlib_dets);
    j["agreement_with_dlib_cnn"] = agreement(ours_dets, dlib_dets);
    j["ours_cpu_vs_dlib_cnn"] = j["ours_cpu_batched"]["photos_per_s"].get<double>() /
                                j["dlib_cnn"]["photos_per_s"].get<double>();
  }
  j["ours_cpu_vs_hog_1_thread"] = j["ours_cpu_batched"]["photos_per_s"].get<double>() /
                                  j["dlib_hog_1_thread"]["photos_per_s"].get<double>();
  j["ours_cpu_vs_hog_all_cores"] = j["ours_cpu_batched"]["photos_per_s"].get<double>() /
                                   j["dlib_hog_all_cores"]["photos_per_s"].get<double>();
  return j;
}

// Raw photo -> embeddings through the front door with each detector choice.
json end_to_end(const Options& o, const std::vector<fs::path>& files) {
  const Model model =
      convert_openface_csv(fs::path(o.shared) / "weights/openface-nn4.small2.v1-csv-5-standins",
                           parse_nn4_variant("openface"));
  PipelineOptions po;
  po.backend.device = parse_device(o.device);
  Pipeline pipeline(model, po);
  json j = {{"photos", files.size()}, {"model", "nn4.small2.v1 (openface), from the shared CSV"}};
  for (const char* det : {"hog", "cnn", "hog+cnn-retry"}) {
    RequestOptions ro;
    ro.task = Task::kEncode;
    ro.faces.detector = parse_detector(det);
    ro.faces.upsample = o.upsample;
    auto inputs = [&] {
      std::vector<ImageInput> in;
      for (const auto& f : files) in.push_back(ImageInput::file(f));
      return in;
    };
    int faces = 0;
    pipeline.run(inputs(), ro, [&](ImageResult&) {});  // warm-up
    std::vector<double> seconds;
    for (int r = 0; r < o.repeats; ++r) {
      faces = 0;
      const auto t0 = std::chrono::steady_clock::now();
      pipeline.run(inputs(), ro,
                   [&](ImageResult& res) { faces += static_cast<int>(res.faces.size()); });
      seconds.push_back(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    const TimingStats t = summarize(seconds);
    std::cerr << "  end-to-end " << det << ": " << files.size() / t.median_s << " photos/s, "
              << faces << " faces\n";
    j[det] = {
        {"photos_per_s", files.size() / t.median_s}, {"faces", faces}, {"pass", timing_json(t)}};
  }
  return j;
}

int run(int argc, char** argv) {
  Options o;
  CLI::App app{
      "Face detection benchmark: the engine's CNN detector vs dlib's CNN and HOG "
      "detectors, same photos, same run (JSON on stdout)"};
  app.add_option("--shared", o.shared, "shared material (LFW, openface examples)");
  app.add_option("--device", o.device, "also run ours on this device: cpu | cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--photos", o.photos, "LFW photos (250x250)")->check(CLI::Range(1, 100000));
  app.add_option("--repeats", o.repeats, "timed passes over the LFW set (median)")
      ->check(CLI::Range(1, 100));
  app.add_option("--large-repeats", o.large_repeats, "timed passes over the 1 and 4 MP sets")
      ->check(CLI::Range(1, 100));
  app.add_option("--upsample", o.upsample, "dlib pyramid_up count for every detector")
      ->check(CLI::Range(0, 2));
  app.add_flag("!--no-end-to-end", o.end_to_end, "skip the raw photo -> embedding runs");
  app.add_flag("--skip-dlib-cnn-large", o.skip_dlib_cnn_large,
               "do not time dlib's CNN detector on the 1 and 4 MP sets (seconds per photo)");
  app.add_option("-o,--output", o.out, "also write the JSON here");
  CLI11_PARSE(app, argc, argv);

  const fs::path shared(o.shared);
  const fs::path dat = default_dlib_models_dir() / "mmod_human_face_detector.dat";
  CnnDetectorOptions cpu;
  const auto ours_cpu = make_cnn_detector(dat, cpu);
  std::unique_ptr<Detector> ours_cuda;
  if (o.device == "cuda") {
    CnnDetectorOptions cuda;
    cuda.backend.device = Device::kCuda;
    ours_cuda = make_cnn_detector(dat, cuda);
  }
  const auto dlib_cnn = make_dlib_cnn_detector(dat);
  const auto hog = make_hog_detector();

  PhotoSet lfw;
  lfw.name = "lfw_250x250";
  const auto files = lfw_first_images(shared / "data/lfw/lfw-deepfunneled", o.photos);
  for (const auto& f : files) {
    lfw.images.push_back(read_bgr8_image(f));
    lfw.files.push_back(f.filename().string());
  }
  const fs::path examples = shared / "data/openface-examples/images/examples";
  json sets = json::object();
  sets["lfw_250x250"] =
      bench_set(lfw, o, *ours_cpu, ours_cuda.get(), *dlib_cnn, *hog, o.repeats, true);
  for (double mp : {1.0, 4.0}) {
    const PhotoSet s = scaled_examples(examples, mp);
    sets[s.name] = bench_set(s, o, *ours_cpu, ours_cuda.get(), *dlib_cnn, *hog, o.large_repeats,
                             !o.skip_dlib_cnn_large);
  }
  json report = {{"benchmark", "face detection on raw photos"},
                 {"machine", machine_json()},
                 {"detector_model", dat.filename().string()},
                 {"ours_backend", "cpu: oneDNN, float32 (cuda with --device cuda)"},
                 {"sets", sets}};
  if (o.end_to_end) report["end_to_end_lfw"] = end_to_end(o, files);
  const std::string text = report.dump(2);
  std::cout << text << "\n";
  if (!o.out.empty()) {
    std::ofstream f(o.out);
    f << text << "\n";
    if (!f) fail(o.out, ": cannot write");
  }
  return 0;
}

}  // namespace
}  // namespace facenet

int main(int argc, char** argv) {
  facenet::cli::apply_openmp_defaults(argv);
  try {
    return facenet::run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "facenet_bench_detect: " << e.what() << "\n";
    return 2;
  }
}
