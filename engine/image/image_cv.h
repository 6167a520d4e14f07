// OpenCV views of the image input (builds with FACENET_IMAGE_IO=opencv only): what the face
// detection and alignment code, which works on cv::Mat, needs from image_io.h.
#pragma once

#include <filesystem>
#include <opencv2/core.hpp>
#include <string>

#include "engine/core/error.h"
#include "engine/image/image_io.h"

namespace facenet {

// Decodes a file as 8-bit BGR (alpha dropped); throws facenet::Error naming the file.
cv::Mat read_image(const std::filesystem::path& path);

// An 8-bit BGR image (e.g. an aligned face chip) -> C*H*W floats by the input rule.
inline void image_to_input(const cv::Mat& bgr, const std::string& what, const InputSpec& spec,
                           float* out) {
  if (bgr.empty() || bgr.type() != CV_8UC3) fail(what, ": not an 8-bit BGR image");
  const cv::Mat packed = bgr.isContinuous() ? bgr : bgr.clone();
  bgr8_to_input(packed.ptr<unsigned char>(0), packed.rows, packed.cols, spec, out);
}

}  // namespace facenet
