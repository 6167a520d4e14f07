// Aligned face chips: the two alignments our encoders were trained with, and dlib's jitter.
#pragma once

#include <string>
#include <vector>

#include "engine/face/face.h"
#include "engine/image/image.h"

namespace facenet {

// The aligned chip: 150x150 (kDlibChip150, from the 5-point landmarks) or 96x96 (kOpenFace96,
// from the 68-point ones). Throws when the face lacks the landmarks the alignment needs.
Bgr8Image align_face(const Bgr8Image& image, const Face& face, Alignment a);

// The chip mirrored left to right.
Bgr8Image mirror_chip(const Bgr8Image& chip);

// `n` copies of a square chip, each randomly rotated (+-3 deg), zoomed (0.97-1.0), shifted
// (+-2%) and mirrored with probability 1/2: dlib's jitter_image, the test-time augmentation
// dlib's compute_face_descriptor(num_jitters) averages over. The random stream is seeded
// with `seed`, so equal seeds give equal copies.
std::vector<Bgr8Image> jitter_chip(const Bgr8Image& chip, int n, const std::string& seed);

}  // namespace facenet
