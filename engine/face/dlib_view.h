// Internal to engine/face: zero-copy OpenCV and dlib views of a Bgr8Image.
#pragma once

#include <dlib/image_transforms.h>
#include <dlib/matrix.h>
#include <dlib/opencv/cv_image.h>

#include <opencv2/core.hpp>

#include "engine/core/error.h"
#include "engine/image/image.h"

namespace facenet {

// A view of the image's pixels; OpenCV and dlib only read through it here.
inline cv::Mat as_mat(const Bgr8Image& img) {
  if (img.empty() || img.pixels.size() != static_cast<size_t>(img.height) * img.width * 3)
    fail("face code needs an 8-bit BGR image (got ", img.width, "x", img.height, ")");
  return cv::Mat(img.height, img.width, CV_8UC3, const_cast<unsigned char*>(img.pixels.data()));
}

inline dlib::cv_image<dlib::bgr_pixel> dlib_view(const cv::Mat& bgr) {
  return dlib::cv_image<dlib::bgr_pixel>(bgr);
}

// The image as dlib's CNN detector takes it: RGB, doubled `upsample` times by dlib's
// pyramid_up (what dlib's cnn_face_detection_model_v1 does before the network).
inline dlib::matrix<dlib::rgb_pixel> rgb_upsampled(const Bgr8Image& image, int upsample) {
  const cv::Mat mat = as_mat(image);
  dlib::matrix<dlib::rgb_pixel> img;
  dlib::assign_image(img, dlib_view(mat));
  dlib::pyramid_down<2> pyr;
  for (int i = 0; i < upsample; ++i) dlib::pyramid_up(img, pyr);
  return img;
}

// A packed copy of an 8-bit BGR cv::Mat.
inline Bgr8Image from_mat(const cv::Mat& m) {
  Bgr8Image out;
  out.height = m.rows;
  out.width = m.cols;
  out.pixels.resize(static_cast<size_t>(m.rows) * m.cols * 3);
  for (int y = 0; y < m.rows; ++y)
    std::copy_n(m.ptr<unsigned char>(y), m.cols * 3, out.pixels.data() + size_t{3} * y * m.cols);
  return out;
}

}  // namespace facenet
