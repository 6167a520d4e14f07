// facenet CLI: the commands that take raw photos (detection, alignment, LFW evaluation).
#include "apps/cli_faces.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "apps/cli_common.h"
#include "apps/embedding_writer.h"
#include "engine/model/dlib_resnet.h"
#include "engine/pipeline/encode_faces.h"
#include "engine/core/error.h"
#include "engine/image/image_cv.h"
#include "engine/eval/lfw_eval.h"
#include "engine/model/model.h"

namespace fs = std::filesystem;

namespace facenet::cli {

namespace {

nlohmann::json points_json(const std::vector<cv::Point2f>& pts) {
  nlohmann::json a = nlohmann::json::array();
  for (const auto& p : pts) a.push_back({p.x, p.y});
  return a;
}

nlohmann::json box_json(const FaceBox& b) {
  return {b.left, b.top, b.right, b.bottom};
}

fs::path models_dir(const std::string& given) {
  return given.empty() ? default_dlib_models_dir() : fs::path(given);
}

// ---- convert dlib-resnet -------------------------------------------------------------------
void add_convert_dlib(CLI::App& app) {
  CLI::App* convert = app.get_subcommand("convert");
  auto* sub = convert->add_subcommand(
      "dlib-resnet",
      "dlib_face_recognition_resnet_model_v1.dat (dlib's 128-d face ResNet, 150x150 chips) -> "
      "safetensors model");
  auto dat = std::make_shared<std::string>();
  auto out = std::make_shared<std::string>();
  sub->add_option("dat", *dat, "The .dat file (weights/fetch_dlib_models.sh fetches it)")
      ->required();
  sub->add_option("-o,--output", *out, "Model file to write (.safetensors)")->required();
  sub->callback([dat, out] {
    const Model m = convert_dlib_resnet(*dat);
    save_model(*out, m);
    std::cerr << "wrote " << *out << ": " << m.graph.name << ", " << m.tensors.size()
              << " tensors, " << count_params(m).learned << " learned parameters\n";
  });
}

// ---- detect --------------------------------------------------------------------------------
struct DetectArgs {
  std::string dlib_models;
  int upsample = 0;
  std::vector<std::string> inputs;
};

int run_detect(const DetectArgs& a) {
  const FaceAligner aligner(models_dir(a.dlib_models));
  const auto files = expand_inputs(a.inputs);
  if (files.empty()) fail("no images found in the given inputs");
  std::vector<nlohmann::json> lines(files.size());
  std::vector<std::string> errors(files.size());
#pragma omp parallel for schedule(dynamic)
  for (size_t i = 0; i < files.size(); ++i) {
    try {
      const cv::Mat img = read_image(files[i]);
      nlohmann::json faces = nlohmann::json::array();
      for (const Face& f : aligner.detect(img, a.upsample))
        faces.push_back({{"box", box_json(f.box)},
                         {"score", f.score},
                         {"landmarks68", points_json(f.landmarks)},
                         {"landmarks5", points_json(f.landmarks5)}});
      lines[i] = {{"image", files[i].string()},
                  {"width", img.cols},
                  {"height", img.rows},
                  {"faces", faces}};
    } catch (const std::exception& e) {
      errors[i] = e.what();
    }
  }
  int failed = 0;
  for (size_t i = 0; i < files.size(); ++i) {
    if (!errors[i].empty()) {
      std::cerr << "facenet detect: skipped " << errors[i] << "\n";
      ++failed;
      continue;
    }
    std::cout << lines[i].dump() << "\n";
  }
  return failed ? 1 : 0;
}

void add_detect(CLI::App& app, int& exit_code) {
  auto* det = app.add_subcommand(
      "detect", "Detect faces in photos (dlib HOG) and print boxes and landmarks as JSON lines");
  auto a = std::make_shared<DetectArgs>();
  det->add_option("--dlib-models", a->dlib_models,
                  "Folder with the dlib .dat files (default: $FACENET_DLIB_MODELS or "
                  "weights/cache/dlib)");
  det->add_option("--upsample", a->upsample,
                  "Double the image this many times before detecting (finds smaller faces; "
                  "slower)")
      ->check(CLI::Range(0, 3))
      ->capture_default_str();
  det->add_option("inputs", a->inputs, "Image files and/or directories")->required();
  det->footer(
      "One line per image: {\"image\", \"width\", \"height\", \"faces\": [{\"box\": [left, top,\n"
      "right, bottom] (inclusive pixels), \"score\", \"landmarks68\": [[x, y] x 68],\n"
      "\"landmarks5\": [[x, y] x 5]}]}, largest face first. An image without faces has\n"
      "\"faces\": []. Unreadable files are named on stderr and the exit status is 1.");
  det->callback([a, &exit_code] { exit_code = run_detect(*a); });
}

// ---- eval lfw ------------------------------------------------------------------------------
struct EvalArgs {
  std::string model, pairs, images, output, plot, dlib_models, device = "cpu", precision = "fp32";
  int batch = 64, threads = 0, jitter = 0, upsample = 0;
  bool mirror = false, no_cnn = false, nearest_face = false;
};

int run_eval_lfw(const EvalArgs& a) {
  const Model model = load_model(a.model);
  BackendOptions bo;
  bo.device = parse_device(a.device);
  bo.threads = a.threads;
  bo.precision = a.precision;
  auto backend = make_backend(model, bo);
  const FaceAligner aligner(models_dir(a.dlib_models));
  LfwOptions opt;
  opt.batch = a.batch;
  opt.mirror = a.mirror;
  opt.jitter = a.jitter;
  opt.upsample = a.upsample;
  opt.retry_cnn = !a.no_cnn;
  opt.centre_only = !a.nearest_face;
  const bool tty = isatty(fileno(stderr));
  int last_decile = -1;
  const auto t0 = std::chrono::steady_clock::now();
  opt.on_progress = [&](size_t done, size_t total) {
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const int decile = static_cast<int>(10 * done / std::max<size_t>(total, 1));
    if (!tty && decile == last_decile) return;
    last_decile = decile;
    std::fprintf(stderr, "%simages %zu/%zu (%.0f%%), %.0f s, ~%.0f s left%s", tty ? "\r" : "", done,
                 total, 100.0 * done / total, s, s / done * (total - done), tty ? "" : "\n");
  };
  const nlohmann::json report = evaluate_lfw(*backend, model, aligner, a.pairs, a.images, opt);
  if (tty) std::fputc('\n', stderr);
  if (!a.output.empty()) {
    std::ofstream out(a.output, std::ios::trunc);
    out << report.dump(2) << "\n";
    if (!out) fail("cannot write ", a.output);
  }
  if (!a.plot.empty()) write_roc_png(a.plot, report);
  const auto& d = report.at("distance");
  const auto& l = report.at("learned_similarity");
  const auto& im = report.at("images");
  std::printf(
      "LFW View 2, %s (%s)\n"
      "  images: %d total, %d detected (%d by the CNN detector), %d fallback box, %d failed; "
      "%d where a detector found only off-centre faces\n"
      "  L2 distance:       accuracy %.2f%% +- %.2f%%, AUC %.5f, EER %.2f%%, TAR@FAR=1e-3 %.2f%%\n"
      "  learned |fi - fj|: accuracy %.2f%% +- %.2f%%, AUC %.5f, EER %.2f%%, TAR@FAR=1e-3 %.2f%%\n"
      "  time: %.1f s (encode %.1f s)\n",
      report.at("model").at("name").get<std::string>().c_str(), backend->name().c_str(),
      im.at("total").get<int>(), im.at("detected").get<int>(), im.at("by_cnn_detector").get<int>(),
      im.at("fallback_box").get<int>(), im.at("failed").get<int>(),
      im.at("only_off_centre_detections").get<int>(),
      100 * d.at("accuracy").at("mean").get<double>(),
      100 * d.at("accuracy").at("std").get<double>(), d.at("roc").at("auc").get<double>(),
      100 * d.at("roc").at("eer").get<double>(),
      100 * d.at("roc").at("tar_at_far_1e-3").get<double>(),
      100 * l.at("accuracy").at("mean").get<double>(),
      100 * l.at("accuracy").at("std").get<double>(), l.at("roc").at("auc").get<double>(),
      100 * l.at("roc").at("eer").get<double>(),
      100 * l.at("roc").at("tar_at_far_1e-3").get<double>(),
      report.at("seconds").at("total").get<double>(),
      report.at("seconds").at("encode").get<double>());
  return 0;
}

void add_eval(CLI::App& app, int& exit_code) {
  auto* eval = app.add_subcommand("eval", "Evaluate a model on a benchmark");
  eval->require_subcommand(1);
  auto* lfw = eval->add_subcommand(
      "lfw", "LFW View 2 verification from raw photos: detect, align, encode, 10-fold protocol");
  auto a = std::make_shared<EvalArgs>();
  lfw->add_option("--model", a->model, "Model file (.safetensors)")->required();
  lfw->add_option("--pairs", a->pairs, "LFW View 2 pairs.txt")->required();
  lfw->add_option("--images", a->images, "Folder of <name>/<name>_NNNN.jpg images")->required();
  lfw->add_option("-o,--output", a->output, "JSON report to write");
  lfw->add_option("--plot", a->plot, "ROC curve PNG to write");
  lfw->add_option("--device", a->device, "cpu | cuda | cpu-reference")
      ->check(CLI::IsMember({"cpu", "cuda", "cpu-reference"}))
      ->capture_default_str();
  lfw->add_option("--precision", a->precision,
                  "fp32 | bf16 (cpu with bf16 instructions) | fp16 (cuda)")
      ->check(CLI::IsMember({"fp32", "fp16", "bf16"}))
      ->capture_default_str();
  lfw->add_option("--batch", a->batch, "Photos per forward pass")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  lfw->add_flag("--mirror", a->mirror,
                "Average each face's embedding with its mirror image's (2x the encoding work)");
  lfw->add_option("--jitter", a->jitter, kJitterHelp)->check(CLI::Range(0, 1000));
  lfw->add_option("--upsample", a->upsample,
                  "HOG detector upsampling for the first try (0-3); a photo without a face is "
                  "retried with one more")
      ->check(CLI::Range(0, 3))
      ->capture_default_str();
  lfw->add_flag("--nearest-face", a->nearest_face,
                "Take the detection nearest the image centre even when its box misses the centre "
                "(by default such a detection is another person: ignored, and the retries run)");
  lfw->add_flag("--no-cnn", a->no_cnn,
                "Do not retry with dlib's CNN detector where the HOG detector finds no face");
  lfw->add_option("--threads", a->threads, "CPU threads (0 = all cores)")->capture_default_str();
  lfw->add_option("--dlib-models", a->dlib_models, "Folder of dlib's landmark models");
  lfw->footer(
      "Accuracy: threshold on the L2 distance chosen on the other 9 folds, mean +- std over\n"
      "the 10 test folds; ROC/AUC/EER/TAR over all 6000 pairs. Learned similarity: logistic\n"
      "regression on |f_i - f_j| fitted on each split's 9 training folds. A photo where the HOG\n"
      "detector finds no face (even after upsampling) is retried with dlib's CNN detector, and\n"
      "if that fails too it is aligned from a fixed central box; both are counted and named.");
  lfw->callback([a, &exit_code] { exit_code = run_eval_lfw(*a); });
}

}  // namespace

// ---- encode --align ------------------------------------------------------------------------
int run_encode_photos(const PhotoEncodeArgs& a) {
  EmbeddingWriter writer(a.format, a.output);
  const Model model = load_model(a.model);
  model_alignment(model.graph);  // fail early when the model names no alignment
  auto backend = make_backend(model, a.backend);
  const FaceAligner aligner(models_dir(a.dlib_models));
  const auto files = expand_inputs(a.inputs);
  if (files.empty()) fail("no images found in the given inputs");
  FaceOptions opt;
  opt.pick = parse_face_pick(a.align);
  opt.upsample = a.upsample;
  opt.jitter = a.jitter;
  opt.retry_cnn = a.retry_cnn;
  Progress progress("encoding photos", true);
  PhotoCallbacks cb;
  cb.on_photo = [&](const PhotoResult& r) {
    if (!r.error.empty() || r.faces.empty()) progress.break_line();
    if (!r.error.empty()) {
      std::cerr << "facenet encode: skipped " << r.error << "\n";
      return;
    }
    if (r.faces.empty())
      std::cerr << "facenet encode: no face found in " << r.path.string() << "\n";
    for (size_t i = 0; i < r.faces.size(); ++i) {
      const EncodedFace& f = r.faces[i];
      writer.add({{"image", r.path.string()}, {"face", i}, {"box", box_json(f.face.box)}},
                 r.path.string() + "#" + std::to_string(i), f.embedding.data(),
                 static_cast<int64_t>(f.embedding.size()));
    }
    writer.flush();
  };
  cb.on_progress = [&](size_t done, size_t total) { progress.update(done, total); };
  const PhotoStats s = encode_photos(*backend, model, aligner, files, opt, a.batch, cb);
  progress.break_line();
  writer.finish(model.embedding_dim());
  std::cerr << "facenet encode: " << s.photos << " photo(s), " << s.faces << " face(s) encoded, "
            << s.no_face << " without a face, " << s.failed << " unreadable\n";
  return s.failed ? 1 : 0;
}

void add_face_commands(CLI::App& app, int& exit_code) {
  add_convert_dlib(app);
  add_detect(app, exit_code);
  add_eval(app, exit_code);
}

}  // namespace facenet::cli
