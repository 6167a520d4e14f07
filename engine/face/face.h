// Face data as plain values (boxes, scores, landmarks) and the names of the alignments and
// detectors the engine knows. No OpenCV or dlib types: those stay inside engine/face/*.cpp.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "engine/model/graph.h"

namespace facenet {

struct Point2f {
  float x = 0, y = 0;
};

// A box in dlib's convention: inclusive pixel corners (width = right - left + 1).
struct FaceBox {
  long left = 0, top = 0, right = -1, bottom = -1;
  long width() const { return right - left + 1; }
  long height() const { return bottom - top + 1; }
  long area() const { return width() * height(); }
  bool contains(double x, double y) const {
    return left <= x && x <= right && top <= y && y <= bottom;
  }
};

struct Face {
  FaceBox box;
  double score = 0;                 // detector confidence (0 for a given box)
  std::vector<Point2f> landmarks;   // 68 points (iBUG 300-W order)
  std::vector<Point2f> landmarks5;  // 5 points (dlib's 5-point model order)
};

enum class Alignment {
  // dlib::get_face_chip_details(5-point shape, 150, padding 0.25) + extract_image_chip:
  // what dlib's ResNet was trained on (dlib's example and face_recognition use the same).
  kDlibChip150,
  // The same dlib chip (150, padding 0.25) fitted to the 68-point landmarks instead: what
  // face_recognition's face_encodings(model="large") hands dlib's ResNet.
  kDlibChip150From68,
  // OpenFace AlignDlib.align(96, landmarkIndices=OUTER_EYES_AND_NOSE): affine map of 68-point
  // landmarks 36, 45, 33 onto the MODEL doc's template, bilinear warp to 96x96.
  kOpenFace96,
};

// "dlib-chip-150-0.25" | "dlib-chip-150-0.25-68" | "openface-outer-eyes-and-nose-96"; throws
// on anything else.
Alignment parse_alignment(const std::string& s);
const char* alignment_name(Alignment a);
// The alignment a model's preprocess asks for ("alignment"); throws when it names none.
Alignment model_alignment(const Graph& g);

enum class DetectorKind {
  kNone,         // the inputs are aligned face crops: no detection, no alignment
  kHog,          // dlib's HOG frontal face detector
  kCnn,          // dlib's CNN face detector (mmod_human_face_detector.dat)
  kHogCnnRetry,  // HOG, and dlib's CNN detector where HOG finds nothing
};
// "none" | "hog" | "cnn" | "hog+cnn-retry"; throws naming the choices otherwise.
DetectorKind parse_detector(const std::string& s);
const char* detector_name(DetectorKind k);

// Where the dlib .dat files live: $FACENET_DLIB_MODELS, else $XDG_CACHE_HOME/facenet/dlib,
// else ~/.cache/facenet/dlib (weights/fetch_dlib_models.sh fills the same folder).
std::filesystem::path default_dlib_models_dir();

}  // namespace facenet
