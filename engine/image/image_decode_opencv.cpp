// Image decoding and resizing with OpenCV (FACENET_IMAGE_IO=opencv). JPEGs are decoded and
// encoded by jpeg_decode.cpp (libjpeg-turbo, the same pixels as OpenCV's, its warnings seen);
// the other formats by OpenCV's imgcodecs, loaded on first use (opencv_imgcodecs.h).
#include <opencv2/imgcodecs.hpp>  // the flags only: the codecs are loaded when needed
#include <opencv2/imgproc.hpp>

#include "engine/core/error.h"
#include "engine/image/image_decode.h"
#include "engine/image/opencv_imgcodecs.h"

namespace facenet {

namespace {

Bgr8Image from_mat(const cv::Mat& img) {
  Bgr8Image out;
  out.height = img.rows;
  out.width = img.cols;
  out.pixels.resize(static_cast<size_t>(img.rows) * img.cols * 3);
  for (int y = 0; y < img.rows; ++y)
    std::copy_n(img.ptr<unsigned char>(y), img.cols * 3, out.pixels.data() + y * img.cols * 3);
  return out;
}

cv::Mat as_mat(const Bgr8Image& img) {  // a view; OpenCV does not write through it here
  return cv::Mat(img.height, img.width, CV_8UC3, const_cast<unsigned char*>(img.pixels.data()));
}

}  // namespace

namespace {

cv::Mat decode_mat(const std::vector<unsigned char>& bytes, const std::string& what) {
  if (bytes.empty()) fail(what, ": empty file");
  cv::Mat img;
  try {
    img = imgcodecs_decode(bytes, cv::IMREAD_COLOR);  // 8-bit BGR, alpha dropped
  } catch (const cv::Exception& e) {
    fail(what, ": not a decodable image (", e.what(), ")");
  }
  if (img.empty()) fail(what, ": not a decodable image");
  return img;
}

}  // namespace

Bgr8Image decode_bgr8(const std::vector<unsigned char>& bytes, const std::string& what) {
  if (is_jpeg(bytes)) return decode_jpeg(bytes, what);  // libjpeg's warnings are seen there
  return from_mat(decode_mat(bytes, what));
}

Bgr8Image resize_bilinear(const Bgr8Image& img, int height, int width) {
  cv::Mat out;
  cv::resize(as_mat(img), out, cv::Size(width, height), 0, 0, cv::INTER_LINEAR);
  return from_mat(out);
}

}  // namespace facenet
