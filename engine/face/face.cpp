// Names of alignments, detectors and face choices, and where dlib's model files are looked for
// (built with or without dlib).
#include "engine/face/face.h"

#include <cstdlib>

#include "engine/core/error.h"
#include "engine/face/find_faces.h"

namespace facenet {

Alignment parse_alignment(const std::string& s) {
  if (s == "dlib-chip-150-0.25") return Alignment::kDlibChip150;
  if (s == "dlib-chip-150-0.25-68") return Alignment::kDlibChip150From68;
  if (s == "openface-outer-eyes-and-nose-96") return Alignment::kOpenFace96;
  fail("unknown alignment '", s,
       "' (expected dlib-chip-150-0.25, dlib-chip-150-0.25-68 or openface-outer-eyes-and-nose-96)");
}

const char* alignment_name(Alignment a) {
  switch (a) {
    case Alignment::kDlibChip150:
      return "dlib-chip-150-0.25";
    case Alignment::kDlibChip150From68:
      return "dlib-chip-150-0.25-68";
    case Alignment::kOpenFace96:
      return "openface-outer-eyes-and-nose-96";
  }
  return "?";
}

Alignment model_alignment(const Graph& g) {
  if (!g.preprocess.contains("alignment"))
    fail("model '", g.name, "' does not say which face alignment it needs (preprocess.alignment)");
  const auto& a = g.preprocess.at("alignment");
  if (!a.is_string()) fail("model '", g.name, "': preprocess.alignment must be a string");
  return parse_alignment(a.get<std::string>());
}

FacePick parse_face_pick(const std::string& s) {
  if (s == "largest") return FacePick::kLargest;
  if (s == "all") return FacePick::kAll;
  if (s == "all-as-detected") return FacePick::kAllAsDetected;
  if (s == "centre" || s == "center") return FacePick::kCentre;
  fail("unknown face choice '", s, "' (expected largest, all, all-as-detected or centre)");
}

DetectorKind parse_detector(const std::string& s) {
  if (s == "none") return DetectorKind::kNone;
  if (s == "hog") return DetectorKind::kHog;
  if (s == "cnn") return DetectorKind::kCnn;
  if (s == "hog+cnn-retry") return DetectorKind::kHogCnnRetry;
  fail("unknown detector '", s, "' (expected none, hog, cnn or hog+cnn-retry)");
}

const char* detector_name(DetectorKind k) {
  switch (k) {
    case DetectorKind::kNone:
      return "none";
    case DetectorKind::kHog:
      return "hog";
    case DetectorKind::kCnn:
      return "cnn";
    case DetectorKind::kHogCnnRetry:
      return "hog+cnn-retry";
  }
  return "?";
}

std::filesystem::path default_dlib_models_dir() {
  if (const char* env = std::getenv("FACENET_DLIB_MODELS"); env && *env) return env;
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg)
    return std::filesystem::path(xdg) / "facenet" / "dlib";
  if (const char* home = std::getenv("HOME"); home && *home)
    return std::filesystem::path(home) / ".cache" / "facenet" / "dlib";
  return std::filesystem::path(".cache") / "facenet" / "dlib";
}

}  // namespace facenet
