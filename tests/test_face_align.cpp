// Detection, landmarks and the two alignments on OpenFace's example photos, plus a photo with
// no face. Skips when the dlib landmark models have not been fetched.
#include <opencv2/imgproc.hpp>

#include "engine/core/error.h"
#include "engine/face/align.h"
#include "engine/face/find_faces.h"
#include "engine/image/image_io.h"
#include "engine/pipeline/pipeline.h"
#include "tests/model_fixture.h"
#include "tests/test_util.h"

namespace facenet {
namespace {

std::filesystem::path example(const std::string& name) {
  return test::shared_path("data/openface-examples/images/examples") / name;
}

Bgr8Image read_image(const std::filesystem::path& p) {
  return read_bgr8_image(p);
}

Bgr8Image from_mat(const cv::Mat& m) {
  Bgr8Image out;
  out.height = m.rows;
  out.width = m.cols;
  const cv::Mat packed = m.isContinuous() ? m : m.clone();
  out.pixels.assign(packed.data, packed.data + packed.total() * 3);
  return out;
}

cv::Mat as_mat(const Bgr8Image& img) {
  return cv::Mat(img.height, img.width, CV_8UC3, const_cast<unsigned char*>(img.pixels.data()))
      .clone();
}

const FaceModels& models() {
  static const FaceModels m;
  return m;
}

// Every face one detector finds at `upsample`, largest first, with landmarks.
std::vector<Face> detect(const Bgr8Image& img, int upsample = 0,
                         DetectorKind detector = DetectorKind::kHog) {
  FaceOptions o;
  o.detector = detector;
  o.pick = FacePick::kAll;
  o.upsample = upsample;
  std::vector<Face> out;
  for (auto& f : find_faces(models(), img, o).faces) out.push_back(std::move(f.face));
  return out;
}

// OpenFace's tests/openface_api_tests.py: largest dlib box of lennon-1.jpg, detected with one
// upsampling (AlignDlib calls detector(img, 1)), is (341, 193, 1006, 859), from a 2016 dlib.
// Debian's dlib 19.24 finds the same 666x667 box shifted by (+13, +13) px: the mapping of
// upsampled boxes back to the image changed between dlib versions. The size must agree; the
// corners within 15 px.
TEST(FaceAlign, LennonBoxMatchesOpenFaceReference) {
  FN_REQUIRE_LANDMARK_MODELS();
  const auto faces = detect(read_image(example("lennon-1.jpg")), 1);
  ASSERT_EQ(faces.size(), 1u);
  const FaceBox& b = faces[0].box;
  EXPECT_EQ(b.width(), 1006 - 341 + 1);
  EXPECT_EQ(b.height(), 859 - 193 + 1);
  EXPECT_NEAR(b.left, 341, 15);
  EXPECT_NEAR(b.top, 193, 15);
  EXPECT_NEAR(b.right, 1006, 15);
  EXPECT_NEAR(b.bottom, 859, 15);
  EXPECT_EQ(faces[0].landmarks.size(), 68u);
  EXPECT_EQ(faces[0].landmarks5.size(), 5u);
  for (const auto& p : faces[0].landmarks) {  // landmarks lie on the face
    EXPECT_GE(p.x, b.left - 0.2 * b.width());
    EXPECT_LE(p.x, b.right + 0.2 * b.width());
  }
}

TEST(FaceAlign, TwoFacePhotoGivesTwoFacesLargestFirst) {
  FN_REQUIRE_LANDMARK_MODELS();
  const auto faces = detect(read_image(example("longoria-cooper.jpg")));
  ASSERT_EQ(faces.size(), 2u);
  EXPECT_GE(faces[0].box.area(), faces[1].box.area());
  // Longoria is on the left, Cooper on the right (SOURCE.md).
  const long left0 = faces[0].box.left, left1 = faces[1].box.left;
  EXPECT_NE(left0 < left1, faces[1].box.right < faces[0].box.left);
}

TEST(FaceAlign, NoFaceImageGivesNoFaces) {
  FN_REQUIRE_LANDMARK_MODELS();
  cv::Mat mat(300, 400, CV_8UC3, cv::Scalar(90, 140, 200));
  cv::circle(mat, {200, 150}, 60, cv::Scalar(20, 20, 20), 5);  // shapes, not a face
  const Bgr8Image blank = from_mat(mat);
  EXPECT_TRUE(detect(blank).empty());
  EXPECT_TRUE(detect(blank, 1).empty());
}

// The 150x150 dlib chip of a photo's only face (empty when it holds none or several).
Bgr8Image dlib_chip(const std::filesystem::path& photo) {
  const Bgr8Image img = read_image(photo);
  const auto faces = detect(img);
  return faces.size() == 1 ? align_face(img, faces[0], Alignment::kDlibChip150) : Bgr8Image();
}

TEST(FaceAlign, ChipsHaveTheModelSizesAndHoldContent) {
  FN_REQUIRE_LANDMARK_MODELS();
  const Bgr8Image img = read_image(example("clapton-2.jpg"));
  const auto faces = detect(img);
  ASSERT_EQ(faces.size(), 1u);
  const cv::Mat chip = as_mat(align_face(img, faces[0], Alignment::kDlibChip150));
  EXPECT_EQ(chip.size(), cv::Size(150, 150));
  const cv::Mat of = as_mat(align_face(img, faces[0], Alignment::kOpenFace96));
  EXPECT_EQ(of.size(), cv::Size(96, 96));
  // OpenFace's examples-aligned/clapton-2.png came from an older AlignDlib (a tighter crop),
  // so it is no pixel target (SOURCE.md); both crops must simply hold image content.
  cv::Scalar mean, sd;
  for (const cv::Mat* m : {&chip, &of}) {
    cv::meanStdDev(*m, mean, sd);
    EXPECT_GT(sd[0], 10.0);
  }
  EXPECT_EQ(parse_alignment(alignment_name(Alignment::kOpenFace96)), Alignment::kOpenFace96);
  EXPECT_THROW(parse_alignment("nope"), Error);
}

// A deep-funneled LFW photo the HOG detector misses even upsampled; dlib's CNN detector finds
// the face, centred as LFW's faces are, with a box of the HOG boxes' size (~100 px).
TEST(FaceAlign, CnnDetectorFindsTheFaceHogMisses) {
  FN_REQUIRE_LANDMARK_MODELS();
  const Bgr8Image img =
      read_image(test::shared_path("data/lfw/lfw-deepfunneled/Jelena_Dokic/Jelena_Dokic_0004.jpg"));
  EXPECT_TRUE(detect(img, 0).empty());
  EXPECT_TRUE(detect(img, 1).empty());
  const auto faces = detect(img, 1, DetectorKind::kCnn);
  ASSERT_GE(faces.size(), 1u);
  const FaceBox& b = faces[0].box;
  EXPECT_NEAR((b.left + b.right) / 2.0, 125, 30);
  EXPECT_NEAR((b.top + b.bottom) / 2.0, 125, 30);
  EXPECT_GT(b.width(), 60);
  EXPECT_LT(b.width(), 160);
  EXPECT_EQ(faces[0].landmarks5.size(), 5u);
  EXPECT_EQ(faces[0].landmarks.size(), 68u);

  const Bgr8Image blank = from_mat(cv::Mat(300, 400, CV_8UC3, cv::Scalar(90, 140, 200)));
  EXPECT_TRUE(detect(blank, 0, DetectorKind::kCnn).empty());
}

// LFW's Tung_Chee-hwa_0001: HOG finds only the man at the left edge, not the labelled
// (centred) face. Nearest-the-centre takes that wrong face; centre_only sets it aside and the
// retries run (HOG upsampled finds nothing more; the CNN detector finds the centred face).
TEST(FacePhotos, CentreOnlyTakesTheCentredFaceNotAnotherPerson) {
  FN_REQUIRE_LANDMARK_MODELS();
  Pipeline pipeline(test::converted_model("openface"));
  const auto file =
      test::shared_path("data/lfw/lfw-deepfunneled/Tung_Chee-hwa/Tung_Chee-hwa_0001.jpg");
  auto encode = [&](bool centre_only) {
    RequestOptions ro;
    ro.faces.detector = DetectorKind::kHogCnnRetry;
    ro.faces.pick = FacePick::kCentre;
    ro.faces.retry_upsampled = true;
    ro.faces.centre_only = centre_only;
    ImageResult r = pipeline.submit(ImageInput::file(file), ro).get();
    EXPECT_TRUE(r.ok()) << r.error;
    EXPECT_EQ(r.faces.size(), 1u);
    EXPECT_EQ(r.faces.empty() ? 0u : r.faces[0].embedding.size(), 128u);
    return r;
  };
  auto holds_centre = [](const FaceBox& b) { return b.contains(125, 125); };
  const ImageResult nearest = encode(false);
  ASSERT_EQ(nearest.faces.size(), 1u);
  EXPECT_FALSE(holds_centre(nearest.faces[0].face.box)) << "the left-edge face was expected here";
  EXPECT_FALSE(nearest.off_centre_seen);
  const ImageResult centred = encode(true);
  ASSERT_EQ(centred.faces.size(), 1u);
  EXPECT_TRUE(holds_centre(centred.faces[0].face.box));
  EXPECT_TRUE(centred.off_centre_seen);
  EXPECT_TRUE(centred.faces[0].cnn);
  EXPECT_FALSE(centred.faces[0].fallback);
}

// all-as-detected keeps the detector's order (face_recognition's face_locations order); all
// sorts the same faces largest first.
TEST(FaceAlign, AllAsDetectedKeepsTheDetectorsOrder) {
  FN_REQUIRE_LANDMARK_MODELS();
  const Bgr8Image img = read_image(example("longoria-cooper.jpg"));
  const std::vector<Detection> dets = models().hog().detect(img, 0);
  ASSERT_EQ(dets.size(), 2u);
  FaceOptions o;
  o.pick = FacePick::kAllAsDetected;
  const FoundFaces found = find_faces(models(), img, o);
  ASSERT_EQ(found.faces.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(found.faces[i].face.box.left, dets[i].box.left);
    EXPECT_EQ(found.faces[i].face.box.top, dets[i].box.top);
  }
  const auto sorted = detect(img);
  ASSERT_EQ(sorted.size(), 2u);
  EXPECT_GE(sorted[0].box.area(), sorted[1].box.area());
  EXPECT_EQ(parse_face_pick("all-as-detected"), FacePick::kAllAsDetected);
}

// Known boxes skip detection: each face is the given box, in the given order, with landmarks
// inside it; an empty box is an error naming the input and the box.
TEST(FaceAlign, KnownBoxesAreUsedAsGiven) {
  FN_REQUIRE_LANDMARK_MODELS();
  const Bgr8Image img = read_image(example("longoria-cooper.jpg"));
  const auto faces = detect(img);
  ASSERT_EQ(faces.size(), 2u);
  const std::vector<FaceBox> boxes = {faces[1].box, faces[0].box};
  const FoundFaces found = faces_in_boxes(models().landmarks(), img, boxes, "photo.jpg");
  ASSERT_EQ(found.faces.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    const Face& f = found.faces[i].face;
    EXPECT_EQ(f.box.left, boxes[i].left);
    EXPECT_EQ(f.box.bottom, boxes[i].bottom);
    ASSERT_EQ(f.landmarks.size(), 68u);
    EXPECT_TRUE(f.box.contains(f.landmarks[30].x, f.landmarks[30].y));  // the nose tip
  }
  test::expect_error(
      [&] {
        faces_in_boxes(models().landmarks(), img, {FaceBox{10, 10, 5, 20}}, "photo.jpg");
      },
      {"photo.jpg", "face box 0", "empty"});
  EXPECT_TRUE(faces_in_boxes(models().landmarks(), img, {}, "photo.jpg").faces.empty());
}

// dlib fits the same 150x150 chip to the 68 points (face_recognition's model="large"): a chip
// of the same face, close to but not equal to the 5-point one.
TEST(FaceAlign, DlibChipFrom68PointsIsTheSameFaceNotTheSamePixels) {
  FN_REQUIRE_LANDMARK_MODELS();
  const Bgr8Image img = read_image(example("clapton-2.jpg"));
  const auto faces = detect(img);
  ASSERT_EQ(faces.size(), 1u);
  const cv::Mat five = as_mat(align_face(img, faces[0], Alignment::kDlibChip150));
  const cv::Mat full = as_mat(align_face(img, faces[0], Alignment::kDlibChip150From68));
  ASSERT_EQ(full.size(), cv::Size(150, 150));
  cv::Mat diff;
  cv::absdiff(five, full, diff);
  const double mean_diff = cv::mean(diff)[0];
  EXPECT_GT(mean_diff, 0.5);   // a different fit
  EXPECT_LT(mean_diff, 40.0);  // of the same face
  Face no68 = faces[0];
  no68.landmarks.clear();
  test::expect_error([&] { align_face(img, no68, Alignment::kDlibChip150From68); }, {"68-point"});
  EXPECT_EQ(parse_alignment("dlib-chip-150-0.25-68"), Alignment::kDlibChip150From68);
}

TEST(FaceAlign, MissingCnnModelIsNamed) {
  FN_REQUIRE_LANDMARK_MODELS();
  const auto dir = std::filesystem::temp_directory_path() / "facenet-no-cnn";
  std::filesystem::create_directories(dir);
  for (const char* f :
       {"shape_predictor_68_face_landmarks.dat", "shape_predictor_5_face_landmarks.dat"})
    if (!std::filesystem::exists(dir / f))
      std::filesystem::create_symlink(default_dlib_models_dir() / f, dir / f);
  const FaceModels m(dir);
  test::expect_error([&] { m.cnn().detect(from_mat(cv::Mat::zeros(100, 100, CV_8UC3)), 0); },
                     {"mmod_human_face_detector.dat", "fetch_dlib_models.sh"});
  std::filesystem::remove_all(dir);
}

// dlib's jitter_image as test-time augmentation: n chip-sized copies, each a small
// rotation/zoom/shift of the chip (or of its mirror image), reproducible from the seed.
TEST(FaceAlign, JitterMakesSeededNearbyCopies) {
  FN_REQUIRE_LANDMARK_MODELS();
  const Bgr8Image c = dlib_chip(example("clapton-2.jpg"));
  ASSERT_FALSE(c.empty());
  const cv::Mat chip = as_mat(c), flipped = as_mat(mirror_chip(c));
  auto mats = [](const std::vector<Bgr8Image>& v) {
    std::vector<cv::Mat> out;
    for (const auto& x : v) out.push_back(as_mat(x));
    return out;
  };
  const auto a = mats(jitter_chip(c, 6, "x.jpg#0"));
  const auto again = mats(jitter_chip(c, 6, "x.jpg#0"));
  const auto other = mats(jitter_chip(c, 6, "y.jpg#0"));
  ASSERT_EQ(a.size(), 6u);
  auto mean_abs = [](const cv::Mat& x, const cv::Mat& y) {
    return cv::norm(x, y, cv::NORM_L1) / x.total() / 3;
  };
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].size(), chip.size());
    EXPECT_EQ(a[i].type(), CV_8UC3);
    EXPECT_EQ(mean_abs(a[i], again[i]), 0.0) << i;
    EXPECT_GT(mean_abs(a[i], other[i]), 0.0) << i;
    const double d = std::min(mean_abs(a[i], chip), mean_abs(a[i], flipped));
    EXPECT_GT(d, 0.0) << i;   // changed ...
    EXPECT_LT(d, 40.0) << i;  // ... but still the same face, roughly in place
  }
  EXPECT_EQ(jitter_chip(c, 0, "x").size(), 0u);
  EXPECT_THROW(jitter_chip(from_mat(cv::Mat(150, 120, CV_8UC3)), 2, "x"), Error);  // not square
}

}  // namespace
}  // namespace facenet
