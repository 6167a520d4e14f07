// Raw photos -> faces -> embeddings: decode, detect, align (as the model's preprocess says),
// encode in batches. Per-photo results; a photo without a face is a result, not an error.
#pragma once

#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "engine/backend/backend.h"
#include "engine/face/face_align.h"

namespace facenet {

enum class FacePick {
  kLargest,  // the largest detected box (OpenFace's getLargestFaceBoundingBox)
  kAll,      // every detected face
  kCentre,   // the box whose centre is nearest the image centre (LFW: the labelled person)
};
FacePick parse_face_pick(const std::string& s);  // "largest" | "all" | "centre"

struct FaceOptions {
  FacePick pick = FacePick::kLargest;
  // With pick centre: only a box containing the image centre counts (LFW's definition of the
  // labelled face: each image is centred on it); other detections are set aside as if no
  // face were found, so the retries below run.
  bool centre_only = false;
  int upsample = 0;                 // dlib pyramid_up count for the first detection try
  bool retry_upsampled = false;     // no face: try once more with upsample + 1
  bool retry_cnn = false;           // still none: try dlib's CNN detector (same upsampling as
                                    // the last HOG try)
  std::optional<FaceBox> fallback;  // still none: use this box (landmarks still predicted)
  bool mirror = false;              // also encode the mirrored chip and average the two embeddings
                                    // (re-normalised when the model ends in an L2 normalisation)
  int jitter = 0;  // > 0: encode this many randomly jittered copies of the chip instead (dlib's
                   // jitter_image: +-3 deg rotation, 0.97-1.0 scale, +-2% shift, random mirror)
                   // and average them; the random stream is seeded by the photo's path and the
                   // face's index, so results do not depend on batching or threads
};

// The chips a face is encoded from under `opt` (views_per_face(opt) of them): the chip
// itself, + its mirror image, or `opt.jitter` jittered copies (seeded by `seed`).
int views_per_face(const FaceOptions& opt);
std::vector<cv::Mat> augment_chip(const cv::Mat& chip, const FaceOptions& opt,
                                  const std::string& seed);

struct EncodedFace {
  Face face;
  bool fallback = false;         // the box is FaceOptions::fallback, not a detection
  bool cnn = false;              // found by the CNN detector (FaceOptions::retry_cnn)
  bool off_centre_seen = false;  // centre_only: a detection try found faces, none at the centre
  std::vector<float> embedding;
};

struct PhotoResult {
  std::filesystem::path path;
  std::string error;               // non-empty: unreadable / undecodable (faces is empty)
  std::vector<EncodedFace> faces;  // empty and no error: no face found
};

struct PhotoCallbacks {
  std::function<void(const PhotoResult&)> on_photo;  // in input order
  std::function<void(size_t done, size_t total)> on_progress;
};

struct PhotoStats {
  size_t photos = 0, faces = 0, no_face = 0, failed = 0, fallback = 0, cnn = 0;
};

// Photos are processed `batch` at a time: decode + detect + align on all cores (OpenMP), then
// one forward pass over the batch's chips.
PhotoStats encode_photos(Backend& backend, const Model& model, const FaceAligner& aligner,
                         const std::vector<std::filesystem::path>& files, const FaceOptions& opt,
                         int batch, const PhotoCallbacks& callbacks);

}  // namespace facenet
