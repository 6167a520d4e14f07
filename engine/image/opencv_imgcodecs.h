// OpenCV's imgcodecs, loaded the first time an image that is not a JPEG is decoded (or a PNG
// written), not when the program starts. Debian's libopencv_imgcodecs pulls in GDAL, GDCM,
// poppler and some 120 other libraries whose relocation and constructors cost ~140 ms at
// every start of every process that links it (measured on the 2-core EPYC VM: an empty
// program 4 ms, linked to it 140 ms) — most of a one-probe `facenet identify`, and paid twice
// since the CLI re-executes itself once (apps/openmp_defaults.cpp). JPEGs never need it
// (jpeg_decode.cpp); PNG, BMP, WebP, TIFF, PNM do.
#pragma once

#include <string>
#include <vector>

#include <opencv2/core.hpp>

namespace facenet {

// cv::imdecode(bytes, flags). Throws facenet::Error naming the library when it cannot be
// loaded; cv::Exception from OpenCV passes through.
cv::Mat imgcodecs_decode(const std::vector<unsigned char>& bytes, int flags);

// cv::imwrite(path, img); false when OpenCV cannot write it. Throws like imgcodecs_decode.
bool imgcodecs_write(const std::string& path, const cv::Mat& img);

}  // namespace facenet
