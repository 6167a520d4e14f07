// Face detectors behind one interface, and the landmark model that places points in a box.
#pragma once

#include <filesystem>
#include <memory>
#include <vector>

#include "engine/face/face.h"
#include "engine/image/image.h"

namespace facenet {

struct Detection {
  FaceBox box;
  double score = 0;
};

class Detector {
 public:
  virtual ~Detector() = default;
  virtual const char* name() const = 0;
  // The faces in `image`, in image coordinates. `upsample` doubles the image that many times
  // first (dlib's pyramid_up: 0 finds faces of about 80x80 px and more, 1 about 40x40).
  // Thread-safe.
  virtual std::vector<Detection> detect(const Bgr8Image& image, int upsample) const = 0;
  // The faces in each of `images` (the same as detect() on each); a detector that runs
  // several photos per forward overrides it.
  virtual std::vector<std::vector<Detection>> detect_batch(
      const std::vector<const Bgr8Image*>& images, int upsample) const {
    std::vector<std::vector<Detection>> out;
    for (const Bgr8Image* image : images) out.push_back(detect(*image, upsample));
    return out;
  }
};

// dlib's HOG frontal face detector (one detector object per calling thread).
std::unique_ptr<Detector> make_hog_detector();
// dlib's own CNN face detector (dlib's network code) from mmod_human_face_detector.dat, read on
// the first detect() (throws there, naming the file, when it is missing or not that network):
// the peer and oracle of the engine's CNN detector (engine/face/cnn_detector.h). Calls are
// serialised.
std::unique_ptr<Detector> make_dlib_cnn_detector(const std::filesystem::path& dat_file);

// dlib's 68- and 5-point landmark predictors (shape_predictor_68_face_landmarks.dat and
// shape_predictor_5_face_landmarks.dat from `models_dir`). Thread-safe.
class LandmarkModel {
 public:
  // Throws facenet::Error naming a missing or unreadable file.
  explicit LandmarkModel(const std::filesystem::path& models_dir = default_dlib_models_dir());
  ~LandmarkModel();
  LandmarkModel(const LandmarkModel&) = delete;
  LandmarkModel& operator=(const LandmarkModel&) = delete;
  // Both landmark sets for a box (detected or given).
  Face locate(const Bgr8Image& image, const FaceBox& box) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace facenet
