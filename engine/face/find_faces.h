// Which faces of a photo to encode, and how hard to look for them: the detection tries
// (upsampling, the CNN retry), the choice among several faces, and a fallback box.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "engine/face/cnn_detector.h"
#include "engine/face/detector.h"

namespace facenet {

enum class FacePick {
  kLargest,        // the largest detected box (OpenFace's getLargestFaceBoundingBox)
  kAll,            // every detected face, largest first
  kAllAsDetected,  // every detected face, in the detector's order (face_recognition's)
  kCentre,         // the box whose centre is nearest the image centre (LFW: the labelled person)
};
// "largest" | "all" | "all-as-detected" | "centre"
FacePick parse_face_pick(const std::string& s);

struct FaceOptions {
  DetectorKind detector = DetectorKind::kHog;
  FacePick pick = FacePick::kLargest;
  int upsample = 0;              // dlib pyramid_up count for the first detection try (0-3)
  bool retry_upsampled = false;  // no face: try once more with upsample + 1
  // With pick centre: only a box containing the image centre counts (LFW's definition of the
  // labelled face: each image is centred on it); other detections are set aside as if no
  // face were found, so the retries run.
  bool centre_only = false;
  std::optional<FaceBox> fallback;  // still none: use this box (landmarks still predicted)
  bool mirror = false;              // also encode the mirrored chip and average the two embeddings
  // > 0: encode this many jittered copies of the chip instead (dlib's jitter_image) and
  // average them; the random stream is seeded by the input's file name and the face's index,
  // so results do not depend on batching or threads.
  int jitter = 0;
};

// Chips a face is encoded from: 1, 2 with mirror, or `jitter`.
inline int views_per_face(const FaceOptions& opt) {
  return opt.jitter > 0 ? opt.jitter : opt.mirror ? 2 : 1;
}

struct FoundFace {
  Face face;
  bool fallback = false;  // the box is FaceOptions::fallback, not a detection
  bool cnn = false;       // found by the CNN detector
};

struct FoundFaces {
  std::vector<FoundFace> faces;  // empty: no face
  bool off_centre_seen = false;  // centre_only: a try found faces, none at the centre
};

// The detectors and landmark model a FaceFinder draws on, loaded once and shared by threads.
class FaceModels {
 public:
  // The CNN detector is the engine's (engine/face/cnn_detector.h) on `cnn`'s backend, read
  // from mmod_human_face_detector.dat in `dir` on first use.
  explicit FaceModels(const std::filesystem::path& dir = default_dlib_models_dir(),
                      const CnnDetectorOptions& cnn = {});
  const Detector& hog() const { return *hog_; }
  const Detector& cnn() const { return *cnn_; }
  const LandmarkModel& landmarks() const { return landmarks_; }
  const std::filesystem::path& dir() const { return dir_; }

 private:
  std::filesystem::path dir_;
  LandmarkModel landmarks_;
  std::unique_ptr<Detector> hog_, cnn_;
};

// The faces of one photo that `opt` asks for, with their landmarks (thread-safe).
// opt.detector must not be kNone.
FoundFaces find_faces(const FaceModels& models, const Bgr8Image& image, const FaceOptions& opt);

// Faces at known boxes (no detection): the landmarks located in each, in the given order.
// Throws facenet::Error naming `what` and the box when a box is empty.
FoundFaces faces_in_boxes(const LandmarkModel& landmarks, const Bgr8Image& image,
                          const std::vector<FaceBox>& boxes, const std::string& what);

// The chips to encode for a found face: the aligned chip, + its mirror, or `opt.jitter`
// jittered copies seeded by `seed`.
std::vector<Bgr8Image> face_chips(const Bgr8Image& image, const Face& face, Alignment alignment,
                                  const FaceOptions& opt, const std::string& seed);

}  // namespace facenet
