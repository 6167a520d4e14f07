// Raw photos -> aligned face chips: dlib's HOG frontal face detector (CPU), dlib's 68- and
// 5-point landmark predictors, and the two alignments our encoders were trained with.
#pragma once

#include <filesystem>
#include <opencv2/core.hpp>
#include <string>
#include <vector>

#include "engine/model/graph.h"

namespace facenet {

// A box in dlib's convention: inclusive pixel corners (width = right - left + 1).
struct FaceBox {
  long left = 0, top = 0, right = -1, bottom = -1;
  long width() const { return right - left + 1; }
  long height() const { return bottom - top + 1; }
  long area() const { return width() * height(); }
};

struct Face {
  FaceBox box;
  double score = 0;                     // HOG detector confidence (0 for a given box)
  std::vector<cv::Point2f> landmarks;   // 68 points (iBUG 300-W order)
  std::vector<cv::Point2f> landmarks5;  // 5 points (dlib's 5-point model order)
};

enum class Alignment {
  // dlib::get_face_chip_details(5-point shape, 150, padding 0.25) + extract_image_chip:
  // what dlib's ResNet was trained on (dlib's example and face_recognition use the same).
  kDlibChip150,
  // OpenFace AlignDlib.align(96, landmarkIndices=OUTER_EYES_AND_NOSE): affine map of 68-point
  // landmarks 36, 45, 33 onto the MODEL doc's template, bilinear warp to 96x96.
  kOpenFace96,
};

// "dlib-chip-150-0.25" | "openface-outer-eyes-and-nose-96"; throws on anything else.
Alignment parse_alignment(const std::string& s);
const char* alignment_name(Alignment a);
// The alignment a model's preprocess asks for ("alignment"); throws when it names none.
Alignment model_alignment(const Graph& g);

// Where the dlib .dat files live: $FACENET_DLIB_MODELS, else weights/cache/dlib of the source
// tree (filled by weights/fetch_dlib_models.sh).
std::filesystem::path default_dlib_models_dir();

class FaceAligner {
 public:
  // Loads shape_predictor_68_face_landmarks.dat and shape_predictor_5_face_landmarks.dat
  // from `models_dir`; throws facenet::Error naming a missing file.
  explicit FaceAligner(const std::filesystem::path& models_dir = default_dlib_models_dir());
  ~FaceAligner();
  FaceAligner(const FaceAligner&) = delete;
  FaceAligner& operator=(const FaceAligner&) = delete;

  // Faces in an 8-bit BGR image, largest box first, with both landmark sets. `upsample`
  // doubles the image that many times first (dlib's pyramid_up; 0 finds faces of about
  // 80x80 px and more, 1 about 40x40). Thread-safe (one detector per thread).
  std::vector<Face> detect(const cv::Mat& bgr, int upsample = 0) const;

  // The same with dlib's CNN face detector (mmod_human_face_detector.dat, loaded on first use
  // from the models folder): finds faces the HOG detector misses (profile, occlusion, blur),
  // ~100x slower on a CPU, so meant as a second try. Thread-safe (serialised).
  std::vector<Face> detect_cnn(const cv::Mat& bgr, int upsample = 0) const;

  // Landmarks for a given box (no detection), e.g. a fixed box when the detector fails.
  Face landmarks(const cv::Mat& bgr, const FaceBox& box) const;

  // The aligned 8-bit BGR chip: 150x150 (dlib_chip_150) or 96x96 (openface_96).
  static cv::Mat align(const cv::Mat& bgr, const Face& face, Alignment a);

  // `n` copies of a square chip, each randomly rotated (+-3 deg), zoomed (0.97-1.0), shifted
  // (+-2%) and mirrored with probability 1/2: dlib's jitter_image, the test-time augmentation
  // dlib's compute_face_descriptor(num_jitters) averages over. The random stream is seeded
  // with `seed`, so equal seeds give equal copies.
  static std::vector<cv::Mat> jitter(const cv::Mat& chip, int n, const std::string& seed);

 private:
  struct Impl;
  Impl* impl_;
};

}  // namespace facenet
