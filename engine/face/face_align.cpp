// Detection, landmarks and alignment with dlib (Debian libdlib) and OpenCV.
#include "engine/face/face_align.h"

#include <dlib/image_processing.h>
#include <dlib/image_processing/frontal_face_detector.h>
#include <dlib/image_transforms.h>
#include <dlib/opencv/cv_image.h>

#include <dlib/dnn.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <opencv2/imgproc.hpp>

#include "engine/core/error.h"

namespace facenet {

namespace {

dlib::rectangle to_dlib(const FaceBox& b) {
  return dlib::rectangle(b.left, b.top, b.right, b.bottom);
}

FaceBox from_dlib(const dlib::rectangle& r) {
  return {r.left(), r.top(), r.right(), r.bottom()};
}

std::vector<cv::Point2f> points(const dlib::full_object_detection& s) {
  std::vector<cv::Point2f> p(s.num_parts());
  for (unsigned long i = 0; i < s.num_parts(); ++i)
    p[i] = cv::Point2f(static_cast<float>(s.part(i).x()), static_cast<float>(s.part(i).y()));
  return p;
}

dlib::full_object_detection to_shape(const FaceBox& box, const std::vector<cv::Point2f>& pts) {
  std::vector<dlib::point> parts;
  for (const auto& p : pts) parts.emplace_back(std::lround(p.x), std::lround(p.y));
  return dlib::full_object_detection(to_dlib(box), parts);
}

// A read-only dlib view of an 8-bit BGR cv::Mat (no copy).
dlib::cv_image<dlib::bgr_pixel> view(const cv::Mat& bgr) {
  if (bgr.empty() || bgr.type() != CV_8UC3) fail("face detection needs an 8-bit BGR image");
  return dlib::cv_image<dlib::bgr_pixel>(bgr);
}

// A copy of a dlib BGR image as an 8-bit BGR cv::Mat.
template <typename DlibImage>
cv::Mat to_mat(const DlibImage& img) {
  const auto src = dlib::const_image_view<DlibImage>(img);
  cv::Mat out(static_cast<int>(src.nr()), static_cast<int>(src.nc()), CV_8UC3);
  for (long r = 0; r < src.nr(); ++r)
    for (long c = 0; c < src.nc(); ++c) {
      const dlib::bgr_pixel& p = src[r][c];
      out.at<cv::Vec3b>(static_cast<int>(r), static_cast<int>(c)) =
          cv::Vec3b(p.blue, p.green, p.red);
    }
  return out;
}

dlib::shape_predictor load_predictor(const std::filesystem::path& file) {
  if (!std::filesystem::is_regular_file(file))
    fail(file.string(), ": landmark model not found (run weights/fetch_dlib_models.sh)");
  dlib::shape_predictor sp;
  try {
    dlib::deserialize(file.string()) >> sp;
  } catch (const std::exception& e) {
    fail(file.string(), ": not a dlib shape predictor (", e.what(), ")");
  }
  return sp;
}

// OpenFace's MINMAX_TEMPLATE points for landmarks 36, 45, 33 (unit square).
constexpr float kOpenFaceTemplate[3][2] = {
    {0.194156995f, 0.169266902f}, {0.788859082f, 0.158171151f}, {0.494950915f, 0.514441322f}};
constexpr int kOpenFaceIndices[3] = {36, 45, 33};

// dlib's CNN face detector (the network mmod_human_face_detector.dat was trained as).
template <long N, typename SUBNET>
using con5d = dlib::con<N, 5, 5, 2, 2, SUBNET>;
template <long N, typename SUBNET>
using con5 = dlib::con<N, 5, 5, 1, 1, SUBNET>;
template <typename SUBNET>
using downsampler = dlib::relu<dlib::affine<
    con5d<32, dlib::relu<dlib::affine<con5d<32, dlib::relu<dlib::affine<con5d<16, SUBNET>>>>>>>>>;
template <typename SUBNET>
using rcon5 = dlib::relu<dlib::affine<con5<45, SUBNET>>>;
using mmod_net = dlib::loss_mmod<dlib::con<
    1, 9, 9, 1, 1,
    rcon5<rcon5<rcon5<downsampler<dlib::input_rgb_image_pyramid<dlib::pyramid_down<6>>>>>>>>;

// Faces at a dlib detector's detections (rect + detection_confidence) in `bgr`'s coordinates,
// with both landmark sets, largest box first.
template <typename Detection>
std::vector<Face> located_faces(const FaceAligner& aligner, const cv::Mat& bgr,
                                const std::vector<Detection>& dets) {
  std::vector<Face> faces;
  for (const auto& d : dets) {
    Face f = aligner.landmarks(bgr, from_dlib(d.rect));
    f.score = d.detection_confidence;
    faces.push_back(std::move(f));
  }
  std::stable_sort(faces.begin(), faces.end(),
                   [](const Face& a, const Face& b) { return a.box.area() > b.box.area(); });
  return faces;
}

}  // namespace

Alignment parse_alignment(const std::string& s) {
  if (s == "dlib-chip-150-0.25") return Alignment::kDlibChip150;
  if (s == "openface-outer-eyes-and-nose-96") return Alignment::kOpenFace96;
  fail("unknown alignment '", s,
       "' (expected dlib-chip-150-0.25 or openface-outer-eyes-and-nose-96)");
}

const char* alignment_name(Alignment a) {
  return a == Alignment::kDlibChip150 ? "dlib-chip-150-0.25" : "openface-outer-eyes-and-nose-96";
}

Alignment model_alignment(const Graph& g) {
  if (!g.preprocess.contains("alignment"))
    fail("model '", g.name, "' does not say which face alignment it needs (preprocess.alignment)");
  return parse_alignment(g.preprocess.at("alignment").get<std::string>());
}

std::filesystem::path default_dlib_models_dir() {
  if (const char* env = std::getenv("FACENET_DLIB_MODELS")) return env;
  return std::filesystem::path(FACENET_SOURCE_DIR) / "weights" / "cache" / "dlib";
}

struct FaceAligner::Impl {
  std::filesystem::path dir;
  dlib::shape_predictor sp68, sp5;
  std::mutex cnn_mutex;
  std::unique_ptr<mmod_net> cnn;  // loaded on first use
};

FaceAligner::FaceAligner(const std::filesystem::path& dir) : impl_(new Impl) {
  impl_->dir = dir;
  try {
    impl_->sp68 = load_predictor(dir / "shape_predictor_68_face_landmarks.dat");
    impl_->sp5 = load_predictor(dir / "shape_predictor_5_face_landmarks.dat");
  } catch (...) {
    delete impl_;
    throw;
  }
}

FaceAligner::~FaceAligner() {
  delete impl_;
}

Face FaceAligner::landmarks(const cv::Mat& bgr, const FaceBox& box) const {
  const auto img = view(bgr);
  Face f;
  f.box = box;
  f.landmarks = points(impl_->sp68(img, to_dlib(box)));
  f.landmarks5 = points(impl_->sp5(img, to_dlib(box)));
  return f;
}

std::vector<Face> FaceAligner::detect(const cv::Mat& bgr, int upsample) const {
  // object_detector::operator() is not const (scratch buffers): one detector per thread.
  thread_local dlib::frontal_face_detector detector = dlib::get_frontal_face_detector();
  const auto img = view(bgr);
  std::vector<dlib::rect_detection> dets;
  if (upsample <= 0) {
    detector(img, dets);
  } else {
    dlib::array2d<dlib::bgr_pixel> up;
    dlib::assign_image(up, img);
    dlib::pyramid_down<2> pyr;
    for (int i = 0; i < upsample; ++i) dlib::pyramid_up(up, pyr);
    detector(up, dets);
    for (auto& d : dets) d.rect = pyr.rect_down(d.rect, upsample);
  }
  return located_faces(*this, bgr, dets);
}

std::vector<Face> FaceAligner::detect_cnn(const cv::Mat& bgr, int upsample) const {
  // The network takes RGB: convert (and upsample) first, outside the lock.
  dlib::matrix<dlib::rgb_pixel> img;
  dlib::assign_image(img, view(bgr));
  dlib::pyramid_down<2> pyr;
  for (int i = 0; i < upsample; ++i) dlib::pyramid_up(img, pyr);
  std::vector<dlib::mmod_rect> dets;
  {
    std::lock_guard<std::mutex> lock(impl_->cnn_mutex);
    if (!impl_->cnn) {
      const auto file = impl_->dir / "mmod_human_face_detector.dat";
      if (!std::filesystem::is_regular_file(file))
        fail(file.string(), ": CNN face detector not found (run weights/fetch_dlib_models.sh)");
      auto net = std::make_unique<mmod_net>();
      try {
        dlib::deserialize(file.string()) >> *net;
      } catch (const std::exception& e) {
        fail(file.string(), ": not dlib's CNN face detector (", e.what(), ")");
      }
      impl_->cnn = std::move(net);
    }
    dets = (*impl_->cnn)(img);
  }
  for (auto& d : dets) d.rect = pyr.rect_down(d.rect, upsample);
  return located_faces(*this, bgr, dets);
}

cv::Mat FaceAligner::align(const cv::Mat& bgr, const Face& face, Alignment a) {
  if (a == Alignment::kDlibChip150) {
    if (face.landmarks5.size() != 5) fail("dlib chip alignment needs the 5-point landmarks");
    dlib::array2d<dlib::bgr_pixel> chip;
    dlib::extract_image_chip(
        view(bgr), dlib::get_face_chip_details(to_shape(face.box, face.landmarks5), 150, 0.25),
        chip);
    return to_mat(chip);
  }
  if (face.landmarks.size() != 68) fail("OpenFace alignment needs the 68-point landmarks");
  constexpr int kSize = 96;
  cv::Point2f src[3], dst[3];
  for (int i = 0; i < 3; ++i) {
    src[i] = face.landmarks[kOpenFaceIndices[i]];
    dst[i] = cv::Point2f(kSize * kOpenFaceTemplate[i][0], kSize * kOpenFaceTemplate[i][1]);
  }
  cv::Mat out;
  cv::warpAffine(bgr, out, cv::getAffineTransform(src, dst), cv::Size(kSize, kSize));
  return out;
}

std::vector<cv::Mat> FaceAligner::jitter(const cv::Mat& chip, int n, const std::string& seed) {
  if (chip.rows != chip.cols || chip.empty() || chip.type() != CV_8UC3)
    fail("jitter needs a square 8-bit BGR chip (got ", chip.cols, "x", chip.rows, ")");
  dlib::matrix<dlib::bgr_pixel> img;
  dlib::assign_image(img, view(chip));
  dlib::rand rnd;
  rnd.set_seed(seed);
  std::vector<cv::Mat> out;
  out.reserve(n);
  for (int i = 0; i < n; ++i) {
    out.push_back(to_mat(dlib::jitter_image(img, rnd)));
  }
  return out;
}

}  // namespace facenet
