// The engine's CNN face detector: dlib's MMOD network (mmod_human_face_detector.dat, converted
// by engine/model/dlib_mmod.h) on our backends (CPU on oneDNN, CUDA on cuDNN), with dlib's
// detection around it reproduced exactly: the RGB image doubled `upsample` times by dlib's
// pyramid_up, the tiled pyramid_down<6> pyramid with its padding (dlib's layout and bilinear
// resize), the score map mapped back to image rectangles, the threshold, and dlib's non-max
// suppression. Boxes and scores equal dlib's cnn_face_detection_model_v1 (tests/test_cnn_detector).
#pragma once

#include <filesystem>
#include <memory>
#include <vector>

#include "engine/backend/backend.h"
#include "engine/face/detector.h"
#include "engine/model/dlib_mmod.h"
#include "kernels/mmod_pyramid_rule.h"

namespace facenet {

// A detector's network input for photos of one size: the tiled pyramid's size and where each
// level lies in it (dlib's rectangles: left, top, right, bottom, inclusive).
struct PyramidLayout {
  long rows = 0, cols = 0;          // of the tiled pyramid image (the network's input H x W)
  std::vector<PyramidRect> levels;  // level 0 is the photo itself
};
PyramidLayout pyramid_layout(const MmodSettings& s, long rows, long cols);

// Builds the network input of `n` RGB photos of rows x cols (8-bit, packed, one after the
// other) into x (n x 3 x layout.rows x layout.cols float32, overwritten): level 0 is
// (pixel - mean) * scale, each further level dlib's bilinear resize of the one before, zeros
// elsewhere (as dlib's input_rgb_image_pyramid). Exposed for tests and the CUDA comparison.
void build_pyramid_input(const MmodSettings& s, const PyramidLayout& layout,
                         const unsigned char* rgb, int64_t n, long rows, long cols, float* x);

struct CnnDetectorOptions {
  BackendOptions backend;  // device, threads, precision
  // Photos of one size share a forward up to this many input pixels (all photos' pyramids
  // together): bounds the activation memory of a batch.
  int64_t max_batch_pixels = int64_t{24} << 20;
  // The CPU runs one photo per forward (measured faster); true batches there too (tests).
  bool batch_on_cpu = false;
};

class CnnDetector final : public Detector {
 public:
  // `model`: a converted MMOD detector (throws facenet::Error naming `origin` otherwise).
  CnnDetector(Model model, const std::string& origin, const CnnDetectorOptions& options);
  ~CnnDetector() override;
  const char* name() const override { return "cnn"; }
  std::vector<Detection> detect(const Bgr8Image& image, int upsample) const override;
  // Photos of the same size (after upsampling) run together, in forwards of up to
  // options.max_batch_pixels; results in the order given.
  std::vector<std::vector<Detection>> detect_batch(const std::vector<const Bgr8Image*>& images,
                                                   int upsample) const override;
  const MmodSettings& settings() const { return settings_; }

 private:
  struct Impl;
  MmodSettings settings_;
  std::unique_ptr<Impl> impl_;
};

// The CNN detector from `file`: dlib's .dat (converted in memory) or a model file written by
// `facenet convert dlib-mmod`. Read on the first detect() (throws there, naming the file,
// when it is missing or not that network), so that building the detectors costs nothing when
// the CNN detector is not used.
std::unique_ptr<Detector> make_cnn_detector(const std::filesystem::path& file,
                                            const CnnDetectorOptions& options = {});

}  // namespace facenet
