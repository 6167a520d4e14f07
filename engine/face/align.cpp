// Face chips with dlib (the 150x150 chip, jitter) and OpenCV (OpenFace's affine warp).
#include "engine/face/align.h"

#include <dlib/image_processing.h>
#include <dlib/image_transforms.h>

#include <cmath>
#include <opencv2/imgproc.hpp>

#include "engine/core/error.h"
#include "engine/face/dlib_view.h"

namespace facenet {

namespace {

// OpenFace's MINMAX_TEMPLATE points for landmarks 36, 45, 33 (unit square).
constexpr float kOpenFaceTemplate[3][2] = {
    {0.194156995f, 0.169266902f}, {0.788859082f, 0.158171151f}, {0.494950915f, 0.514441322f}};
constexpr int kOpenFaceIndices[3] = {36, 45, 33};

dlib::full_object_detection to_shape(const FaceBox& b, const std::vector<Point2f>& pts) {
  std::vector<dlib::point> parts;
  for (const auto& p : pts) parts.emplace_back(std::lround(p.x), std::lround(p.y));
  return dlib::full_object_detection(dlib::rectangle(b.left, b.top, b.right, b.bottom), parts);
}

// A packed copy of a dlib BGR image.
template <typename DlibImage>
Bgr8Image from_dlib(const DlibImage& img) {
  const auto src = dlib::const_image_view<DlibImage>(img);
  Bgr8Image out;
  out.height = static_cast<int>(src.nr());
  out.width = static_cast<int>(src.nc());
  out.pixels.resize(static_cast<size_t>(out.height) * out.width * 3);
  unsigned char* p = out.pixels.data();
  for (long r = 0; r < src.nr(); ++r)
    for (long c = 0; c < src.nc(); ++c) {
      const dlib::bgr_pixel& px = src[r][c];
      *p++ = px.blue;
      *p++ = px.green;
      *p++ = px.red;
    }
  return out;
}

}  // namespace

Bgr8Image align_face(const Bgr8Image& image, const Face& face, Alignment a) {
  const cv::Mat mat = as_mat(image);
  if (a == Alignment::kDlibChip150 || a == Alignment::kDlibChip150From68) {
    // dlib fits its chip to either landmark set (get_face_chip_details takes 5 or 68 parts).
    const bool five = a == Alignment::kDlibChip150;
    const std::vector<Point2f>& points = five ? face.landmarks5 : face.landmarks;
    if (points.size() != (five ? 5u : 68u))
      fail("dlib chip alignment needs the ", five ? 5 : 68, "-point landmarks");
    dlib::array2d<dlib::bgr_pixel> chip;
    dlib::extract_image_chip(
        dlib_view(mat), dlib::get_face_chip_details(to_shape(face.box, points), 150, 0.25), chip);
    return from_dlib(chip);
  }
  if (face.landmarks.size() != 68) fail("OpenFace alignment needs the 68-point landmarks");
  constexpr int kSize = 96;
  cv::Point2f src[3], dst[3];
  for (int i = 0; i < 3; ++i) {
    const Point2f& p = face.landmarks[kOpenFaceIndices[i]];
    src[i] = cv::Point2f(p.x, p.y);
    dst[i] = cv::Point2f(kSize * kOpenFaceTemplate[i][0], kSize * kOpenFaceTemplate[i][1]);
  }
  cv::Mat out;
  cv::warpAffine(mat, out, cv::getAffineTransform(src, dst), cv::Size(kSize, kSize));
  return from_mat(out);
}

Bgr8Image mirror_chip(const Bgr8Image& chip) {
  cv::Mat flipped;
  cv::flip(as_mat(chip), flipped, 1);
  return from_mat(flipped);
}

std::vector<Bgr8Image> jitter_chip(const Bgr8Image& chip, int n, const std::string& seed) {
  if (chip.height != chip.width || chip.empty())
    fail("jitter needs a square 8-bit BGR chip (got ", chip.width, "x", chip.height, ")");
  const cv::Mat mat = as_mat(chip);
  dlib::matrix<dlib::bgr_pixel> img;
  dlib::assign_image(img, dlib_view(mat));
  dlib::rand rnd;
  rnd.set_seed(seed);
  std::vector<Bgr8Image> out;
  out.reserve(n);
  for (int i = 0; i < n; ++i) out.push_back(from_dlib(dlib::jitter_image(img, rnd)));
  return out;
}

}  // namespace facenet
