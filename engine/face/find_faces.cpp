// The detection tries of one photo (see find_faces.h), then the chips of each face.
#include "engine/face/find_faces.h"

#include <algorithm>

#include "engine/core/error.h"
#include "engine/face/align.h"
#include "engine/face/cnn_detector.h"

namespace facenet {

FaceModels::FaceModels(const std::filesystem::path& dir, const CnnDetectorOptions& cnn)
    : dir_(dir),
      landmarks_(dir),
      hog_(make_hog_detector()),
      cnn_(make_cnn_detector(dir / "mmod_human_face_detector.dat", cnn)) {}

namespace {

// Landmarks for each detection, largest box first (ties keep the detector's order) unless
// `as_detected`.
std::vector<Face> located(const FaceModels& models, const Bgr8Image& image,
                          const std::vector<Detection>& dets, bool as_detected) {
  std::vector<Face> faces;
  for (const Detection& d : dets) {
    Face f = models.landmarks().locate(image, d.box);
    f.score = d.score;
    faces.push_back(std::move(f));
  }
  if (!as_detected)
    std::stable_sort(faces.begin(), faces.end(),
                     [](const Face& a, const Face& b) { return a.box.area() > b.box.area(); });
  return faces;
}

}  // namespace

FoundFaces find_faces(const FaceModels& models, const Bgr8Image& image, const FaceOptions& opt) {
  if (opt.detector == DetectorKind::kNone) fail("find_faces: no detector (the inputs are crops)");
  if (opt.upsample < 0 || opt.upsample > 3)
    fail("upsample ", opt.upsample, " is out of range (0-3)");
  const double cx = image.width / 2.0, cy = image.height / 2.0;
  FoundFaces out;
  // centre_only: drops the boxes that miss the image centre, and remembers a try whose every
  // box missed it (the detector found only other people there).
  auto usable = [&](std::vector<Face> faces) {
    if (opt.pick != FacePick::kCentre || !opt.centre_only) return faces;
    const size_t found = faces.size();
    faces.erase(std::remove_if(faces.begin(), faces.end(),
                               [&](const Face& f) { return !f.box.contains(cx, cy); }),
                faces.end());
    out.off_centre_seen |= found > 0 && faces.empty();
    return faces;
  };
  const int last_upsample = opt.upsample + (opt.retry_upsampled ? 1 : 0);
  const bool as_detected = opt.pick == FacePick::kAllAsDetected;
  const bool cnn_first = opt.detector == DetectorKind::kCnn;
  const Detector& first = cnn_first ? models.cnn() : models.hog();
  std::vector<Face> faces =
      usable(located(models, image, first.detect(image, opt.upsample), as_detected));
  if (faces.empty() && opt.retry_upsampled)
    faces = usable(located(models, image, first.detect(image, last_upsample), as_detected));
  bool cnn = cnn_first && !faces.empty();
  if (faces.empty() && opt.detector == DetectorKind::kHogCnnRetry) {
    faces = usable(located(models, image, models.cnn().detect(image, last_upsample), as_detected));
    cnn = !faces.empty();
  }
  if (faces.empty()) {
    if (opt.fallback) out.faces.push_back({models.landmarks().locate(image, *opt.fallback), true});
    return out;
  }
  if (opt.pick == FacePick::kAll || as_detected) {
    for (auto& f : faces) out.faces.push_back({std::move(f), false, cnn});
  } else if (opt.pick == FacePick::kLargest) {
    out.faces.push_back({std::move(faces.front()), false, cnn});
  } else {
    auto dist = [&](const Face& f) {
      const double x = (f.box.left + f.box.right) / 2.0 - cx;
      const double y = (f.box.top + f.box.bottom) / 2.0 - cy;
      return x * x + y * y;
    };
    out.faces.push_back(
        {*std::min_element(faces.begin(), faces.end(),
                           [&](const Face& a, const Face& b) { return dist(a) < dist(b); }),
         false, cnn});
  }
  return out;
}

FoundFaces faces_in_boxes(const LandmarkModel& landmarks, const Bgr8Image& image,
                          const std::vector<FaceBox>& boxes, const std::string& what) {
  FoundFaces out;
  for (size_t i = 0; i < boxes.size(); ++i) {
    const FaceBox& b = boxes[i];
    if (b.width() <= 0 || b.height() <= 0)
      fail(what, ": face box ", i, " (left ", b.left, ", top ", b.top, ", right ", b.right,
           ", bottom ", b.bottom, ") is empty");
    out.faces.push_back({landmarks.locate(image, b)});
  }
  return out;
}

std::vector<Bgr8Image> face_chips(const Bgr8Image& image, const Face& face, Alignment alignment,
                                  const FaceOptions& opt, const std::string& seed) {
  Bgr8Image chip = align_face(image, face, alignment);
  if (opt.jitter > 0) return jitter_chip(chip, opt.jitter, seed);
  std::vector<Bgr8Image> out;
  if (opt.mirror) {
    Bgr8Image flipped = mirror_chip(chip);
    out.push_back(std::move(chip));
    out.push_back(std::move(flipped));
  } else {
    out.push_back(std::move(chip));
  }
  return out;
}

}  // namespace facenet
