// The options shared by every command that reads images (see cli_common.h).
#include "apps/cli_common.h"

namespace facenet::cli {

PipelineOptions PipelineArgs::options() const {
  PipelineOptions o;
  o.backend.device = parse_device(device);
  o.backend.threads = threads;
  o.backend.precision = precision;
  o.max_batch = batch;
  o.workers = threads;  // --threads bounds the preparing threads too (0: one per core)
  o.dlib_models = dlib_models;
  o.defaults = request();
  return o;
}

RequestOptions PipelineArgs::request() const {
  RequestOptions r;
  r.faces.detector = align == "none" ? DetectorKind::kNone : parse_detector(detector);
  if (align != "none") r.faces.pick = parse_face_pick(align);
  r.faces.upsample = upsample;
  r.faces.jitter = jitter;
  r.max_pixels = max_pixels;
  return r;
}

void add_pipeline_options(CLI::App* c, PipelineArgs& a, const char* default_align,
                          bool with_model) {
  if (with_model) c->add_option("--model", a.model, "Model file (.safetensors)")->required();
  c->add_option("--device", a.device, "cpu | cuda | cpu-reference (slow oracle)")
      ->check(CLI::IsMember({"cpu", "cuda", "cpu-reference"}))
      ->capture_default_str();
  c->add_option("--precision", a.precision,
                "fp32 | bf16 (cpu: where the CPU has bf16 instructions) | fp16 (cuda)")
      ->check(CLI::IsMember({"fp32", "fp16", "bf16"}))
      ->capture_default_str();
  c->add_option("--batch", a.batch, "Face chips per forward pass (at most)")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  c->add_option("--threads", a.threads, "CPU threads (0 = all cores)")
      ->check(CLI::Range(0, 4096))
      ->capture_default_str();
  a.align = default_align;
  c->add_option("--align", a.align,
                std::string("none: inputs are aligned face crops; largest | all: inputs are raw "
                            "photos, faces are detected and aligned as the model file says "
                            "(default here: ") +
                    default_align + ")")
      ->check(CLI::IsMember({"none", "largest", "all"}));
  c->add_option("--detector", a.detector,
                "With --align: hog (dlib's HOG), cnn (dlib's CNN face detector network run by "
                "the engine, boxes equal to dlib's: finds profile, blurred and occluded faces "
                "HOG misses; 12-17 ms for a 250x250 photo on 2 cores, ~9-10x faster than dlib's "
                "own, ~1.5x one HOG thread's time) or hog+cnn-retry (the CNN detector where HOG "
                "finds nothing)")
      ->check(CLI::IsMember({"hog", "cnn", "hog+cnn-retry"}))
      ->capture_default_str();
  c->add_option("--upsample", a.upsample, "With --align: detector upsampling (0-3)")
      ->check(CLI::Range(0, 3))
      ->capture_default_str();
  c->add_option("--jitter", a.jitter, kJitterHelp)->check(CLI::Range(0, 1000));
  c->add_option("--max-pixels", a.max_pixels,
                "Images above this many pixels (width x height, read from the file's header "
                "before decoding) are skipped, named on stderr; detection whose --upsample "
                "would make an image above it too")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40))
      ->capture_default_str();
  c->add_option("--dlib-models", a.dlib_models,
                "With --align: folder of dlib's models (default: $FACENET_DLIB_MODELS, else "
                "~/.cache/facenet/dlib)");
}

}  // namespace facenet::cli
