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
#include "apps/face_json.h"
#include "engine/core/error.h"
#include "engine/eval/lfw_eval.h"
#include "engine/model/dlib_mmod.h"
#include "engine/model/dlib_resnet.h"
#include "engine/model/model.h"
#include "engine/pipeline/pipeline.h"

namespace fs = std::filesystem;

namespace facenet::cli {

namespace {

// ---- convert dlib-resnet, convert dlib-mmod ----------------------------------------------
// `facenet convert <name> <dat> -o <model>` for one of dlib's networks.
void add_convert_dlib(CLI::App& app, const char* name, const char* description,
                      Model (*convert)(const std::filesystem::path&)) {
  auto* sub = app.get_subcommand("convert")->add_subcommand(name, description);
  auto dat = std::make_shared<std::string>();
  auto out = std::make_shared<std::string>();
  sub->add_option("dat", *dat, "The .dat file (weights/fetch_dlib_models.sh fetches it)")
      ->required();
  sub->add_option("-o,--output", *out, "Model file to write (.safetensors)")->required();
  sub->callback([dat, out, convert] {
    const Model m = convert(*dat);
    save_model(*out, m);
    std::cerr << "wrote " << *out << ": " << m.graph.name << ", " << m.tensors.size()
              << " tensors, " << count_params(m).learned << " learned parameters\n";
  });
}

// ---- detect --------------------------------------------------------------------------------
struct DetectArgs {
  PipelineArgs p;
  std::vector<std::string> inputs;
};

int run_detect(const DetectArgs& a) {
  PipelineOptions po = a.p.options();
  Pipeline pipeline(a.p.model.empty() ? Model{} : load_model(a.p.model), po);
  RequestOptions ro = a.p.request();
  ro.task = Task::kDetect;
  ro.faces.pick = FacePick::kAll;
  auto inputs = file_inputs(a.inputs);
  if (inputs.empty()) fail("no images found in the given inputs");
  const int total = static_cast<int>(inputs.size());
  int failed = 0;
  pipeline.run(std::move(inputs), ro, [&](ImageResult& r) {
    if (!r.ok()) {
      std::cerr << "facenet detect: skipped " << r.error << "\n";
      ++failed;
      return;
    }
    nlohmann::json faces = nlohmann::json::array();
    for (const FaceResult& f : r.faces) faces.push_back(detected_face_json(f));
    std::cout << dump_json({{"image", r.name},
                            {"width", r.width},
                            {"height", r.height},
                            {"faces", faces}})
              << "\n";
  });
  if (failed && failed == total) return 2;  // nothing could be done
  return failed ? 1 : 0;
}

void add_detect(CLI::App& app, int& exit_code) {
  auto* det = app.add_subcommand(
      "detect", "Detect faces in photos and print boxes and landmarks as JSON lines");
  auto a = std::make_shared<DetectArgs>();
  det->add_option("--model", a->p.model, "Model file (optional: detection needs none)");
  add_pipeline_options(det, a->p, "all", false);
  det->add_option("inputs", a->inputs, "Image files and/or directories")->required();
  det->footer(
      "One line per image: {\"image\", \"width\", \"height\", \"faces\": [{\"box\": [left, top,\n"
      "right, bottom] (inclusive pixels), \"score\", \"landmarks68\": [[x, y] x 68],\n"
      "\"landmarks5\": [[x, y] x 5]}]}, largest face first. An image without faces has\n"
      "\"faces\": []. Unreadable files are named on stderr and the exit status is 1.\n"
      "--align, --batch and --jitter do not change what detect does.");
  det->callback([a, &exit_code] { exit_code = run_detect(*a); });
}

// ---- eval lfw ------------------------------------------------------------------------------
struct EvalArgs {
  PipelineArgs p;
  std::string pairs, images, output, plot;
  bool mirror = false, no_cnn = false, nearest_face = false;
};

int run_eval_lfw(const EvalArgs& a) {
  Pipeline pipeline(a.p.model, a.p.options());
  LfwOptions opt;
  opt.mirror = a.mirror;
  opt.jitter = a.p.jitter;
  opt.upsample = a.p.upsample;
  opt.detector = a.no_cnn ? DetectorKind::kHog : parse_detector(a.p.detector);
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
  const nlohmann::json report = evaluate_lfw(pipeline, a.pairs, a.images, opt);
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
      report.at("model").at("name").get<std::string>().c_str(), pipeline.backend_name().c_str(),
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
  a->p.detector = "hog+cnn-retry";
  add_pipeline_options(lfw, a->p, "centre");
  lfw->add_option("--pairs", a->pairs, "LFW View 2 pairs.txt")->required();
  lfw->add_option("--images", a->images, "Folder of <name>/<name>_NNNN.jpg images")->required();
  lfw->add_option("-o,--output", a->output, "JSON report to write");
  lfw->add_option("--plot", a->plot, "ROC curve PNG to write");
  lfw->add_flag("--mirror", a->mirror,
                "Average each face's embedding with its mirror image's (2x the encoding work)");
  lfw->add_flag("--nearest-face", a->nearest_face,
                "Take the detection nearest the image centre even when its box misses the centre "
                "(by default such a detection is another person: ignored, and the retries run)");
  lfw->add_flag("--no-cnn", a->no_cnn,
                "Do not retry with dlib's CNN detector where the HOG detector finds no face");
  lfw->footer(
      "Accuracy: threshold on the L2 distance chosen on the other 9 folds, mean +- std over\n"
      "the 10 test folds; ROC/AUC/EER/TAR over all 6000 pairs. Learned similarity: logistic\n"
      "regression on |f_i - f_j| fitted on each split's 9 training folds. With the default\n"
      "--detector hog+cnn-retry a photo where the HOG detector finds no face (even after\n"
      "upsampling) is retried with the CNN detector (--detector cnn: the CNN detector first);\n"
      "if that fails too it is aligned from a fixed central box; both are counted and named.");
  lfw->callback([a, &exit_code] { exit_code = run_eval_lfw(*a); });
}

}  // namespace

void add_face_commands(CLI::App& app, int& exit_code) {
  add_convert_dlib(app, "dlib-resnet",
                   "dlib_face_recognition_resnet_model_v1.dat (dlib's 128-d face ResNet, 150x150 "
                   "chips) -> safetensors model",
                   convert_dlib_resnet);
  add_convert_dlib(app, "dlib-mmod",
                   "mmod_human_face_detector.dat (dlib's CNN face detector) -> safetensors model "
                   "(--detector cnn reads the .dat itself; the model file is for inspection and "
                   "other runtimes)",
                   convert_dlib_mmod);
  add_detect(app, exit_code);
  add_eval(app, exit_code);
}

}  // namespace facenet::cli
