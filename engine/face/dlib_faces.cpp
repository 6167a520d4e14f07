// dlib's detectors (HOG, CNN) and landmark predictors over Bgr8Image (Debian libdlib).
#include <dlib/dnn.h>
#include <dlib/image_processing.h>
#include <dlib/image_processing/frontal_face_detector.h>
#include <dlib/image_transforms.h>
#include <dlib/opencv/cv_image.h>

#include <cmath>
#include <cstdlib>
#include <mutex>

#include "engine/core/error.h"
#include "engine/face/detector.h"
#include "engine/face/dlib_view.h"
#include "engine/model/dlib_mmod_net.h"

namespace facenet {

namespace {

dlib::rectangle to_dlib(const FaceBox& b) {
  return dlib::rectangle(b.left, b.top, b.right, b.bottom);
}

FaceBox from_dlib(const dlib::rectangle& r) {
  return {r.left(), r.top(), r.right(), r.bottom()};
}

std::vector<Point2f> points(const dlib::full_object_detection& s) {
  std::vector<Point2f> p(s.num_parts());
  for (unsigned long i = 0; i < s.num_parts(); ++i)
    p[i] = {static_cast<float>(s.part(i).x()), static_cast<float>(s.part(i).y())};
  return p;
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

class HogDetector final : public Detector {
 public:
  const char* name() const override { return "hog"; }
  std::vector<Detection> detect(const Bgr8Image& image, int upsample) const override {
    // object_detector::operator() is not const (scratch buffers): one detector per thread.
    thread_local dlib::frontal_face_detector detector = dlib::get_frontal_face_detector();
    const cv::Mat mat = as_mat(image);
    const auto img = dlib_view(mat);
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
    std::vector<Detection> out;
    for (const auto& d : dets) out.push_back({from_dlib(d.rect), d.detection_confidence});
    return out;
  }
};

class DlibCnnDetector final : public Detector {
 public:
  explicit DlibCnnDetector(std::filesystem::path file) : file_(std::move(file)) {}
  const char* name() const override { return "cnn"; }
  std::vector<Detection> detect(const Bgr8Image& image, int upsample) const override {
    // The network takes RGB: convert (and upsample) first, outside the lock.
    const dlib::matrix<dlib::rgb_pixel> img = rgb_upsampled(image, upsample);
    const dlib::pyramid_down<2> pyr;
    std::vector<dlib::mmod_rect> dets;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      dets = (*net())(img);
    }
    std::vector<Detection> out;
    for (auto& d : dets)
      out.push_back({from_dlib(pyr.rect_down(d.rect, upsample)), d.detection_confidence});
    return out;
  }

 private:
  // Under mutex_.
  dlib_mmod::net_type* net() const {
    if (net_) return net_.get();
    if (!std::filesystem::is_regular_file(file_))
      fail(file_.string(), ": CNN face detector not found (run weights/fetch_dlib_models.sh)");
    auto net = std::make_unique<dlib_mmod::net_type>();
    try {
      dlib::deserialize(file_.string()) >> *net;
    } catch (const std::exception& e) {
      fail(file_.string(), ": not dlib's CNN face detector (", e.what(), ")");
    }
    net_ = std::move(net);
    return net_.get();
  }

  std::filesystem::path file_;
  mutable std::mutex mutex_;
  mutable std::unique_ptr<dlib_mmod::net_type> net_;
};

}  // namespace

std::unique_ptr<Detector> make_hog_detector() {
  return std::make_unique<HogDetector>();
}

std::unique_ptr<Detector> make_dlib_cnn_detector(const std::filesystem::path& dat_file) {
  return std::make_unique<DlibCnnDetector>(dat_file);
}

struct LandmarkModel::Impl {
  dlib::shape_predictor sp68, sp5;
};

LandmarkModel::LandmarkModel(const std::filesystem::path& dir) : impl_(std::make_unique<Impl>()) {
  impl_->sp68 = load_predictor(dir / "shape_predictor_68_face_landmarks.dat");
  impl_->sp5 = load_predictor(dir / "shape_predictor_5_face_landmarks.dat");
}

LandmarkModel::~LandmarkModel() = default;

Face LandmarkModel::locate(const Bgr8Image& image, const FaceBox& box) const {
  const cv::Mat mat = as_mat(image);
  const auto img = dlib_view(mat);
  Face f;
  f.box = box;
  f.landmarks = points(impl_->sp68(img, to_dlib(box)));
  f.landmarks5 = points(impl_->sp5(img, to_dlib(box)));
  return f;
}

}  // namespace facenet
