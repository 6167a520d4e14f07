// The image decoder behind image_io.h, one implementation per build (FACENET_IMAGE_IO):
// image_decode_opencv.cpp (OpenCV) or image_decode_libjpeg.cpp (libjpeg-turbo + libpng).
#pragma once

#include <string>
#include <vector>

#include "engine/image/image.h"

namespace facenet {

// Decodes like cv::imdecode(bytes, IMREAD_COLOR): 8-bit BGR, alpha dropped, grey expanded,
// JPEG EXIF orientation applied. Throws facenet::Error naming `what`.
Bgr8Image decode_bgr8(const std::vector<unsigned char>& bytes, const std::string& what);

// True when `bytes` start like a JPEG (SOI and a marker).
inline bool is_jpeg(const std::vector<unsigned char>& bytes) {
  return bytes.size() >= 3 && bytes[0] == 0xFF && bytes[1] == 0xD8 && bytes[2] == 0xFF;
}

// A JPEG decoded by libjpeg-turbo as OpenCV's imdecode does it (jpeg_decode.cpp; both builds
// decode JPEG with it): 8-bit BGR, EXIF orientation applied. Throws facenet::Error naming
// `what` on an error or any libjpeg warning (corrupt or truncated data).
Bgr8Image decode_jpeg(const std::vector<unsigned char>& bytes, const std::string& what);

// Bilinear resize like cv::resize(..., INTER_LINEAR) (see each implementation for how exact).
Bgr8Image resize_bilinear(const Bgr8Image& img, int height, int width);

// Encodes as a baseline JPEG at quality 95 (cv::imencode's default).
std::vector<unsigned char> encode_jpeg(const Bgr8Image& img);

}  // namespace facenet
