// A request's preparation (decode -> faces -> chips) and completion; see request.h.
#include <cmath>
#include <cstring>

#include "engine/core/error.h"
#include "engine/image/image_decode.h"
#include "engine/image/image_io.h"
#include "engine/pipeline/request.h"

namespace facenet {

namespace fs = std::filesystem;

void fail_request(Request& r, InputStatus s, std::string message) {
  r.result.status = s;
  r.result.error = std::move(message);
  r.result.faces.clear();
  r.chips = 0;
}

// The detector doubles the image's width and height per upsampling (dlib's pyramid_up), so
// its memory and time grow 4x per step: bounded by the same pixel limit as the decode.
void check_upsampled_size(const ImageResult& res, const FaceOptions& fo, int64_t max_pixels) {
  const int up = fo.upsample + (fo.retry_upsampled ? 1 : 0);
  if (up <= 0) return;
  const int64_t pixels = int64_t{res.width} * res.height;
  if (up < 16 && pixels <= (max_pixels >> (2 * up))) return;
  throw InputError{InputStatus::kFailed,
                   detail::concat(res.name, ": ", res.width, "x", res.height, " upsampled ", up,
                                  " time(s) for detection is ", pixels << (2 * std::min(up, 15)),
                                  " pixels, more than the limit of ", max_pixels,
                                  " (--max-pixels); use a smaller --upsample")};
}

void prepare_request(Request& r, const ChipLayout& layout,
                     [[maybe_unused]] const std::function<const FaceModels&()>& faces) {
  ImageResult& res = r.result;
  res.name = r.input.name();
  InputStatus status = InputStatus::kOk;
  Bgr8Image img;
  try {
    img = r.input.decode(status, r.opt.max_pixels);
  } catch (const Error& e) {
    throw InputError{status, e.what()};
  }
  const std::optional<std::vector<FaceBox>> boxes = r.input.boxes();
  r.input = ImageInput();  // the encoded bytes are no longer needed
  res.width = img.width;
  res.height = img.height;
  const FaceOptions& fo = r.opt.faces;
  if (fo.detector != DetectorKind::kNone && !boxes) check_upsampled_size(res, fo, r.opt.max_pixels);
  std::vector<std::vector<Bgr8Image>> chips;  // per face
  if (fo.detector == DetectorKind::kNone) {
    FaceResult f;
    f.face.box = {0, 0, img.width - 1, img.height - 1};
    res.faces.push_back(std::move(f));
    if (r.opt.task != Task::kDetect) chips.push_back({img});
  } else {
#ifndef FACENET_HAS_DLIB
    throw InputError{InputStatus::kFailed,
                     res.name + ": this build has no face detection (built without dlib)"};
#else
    FoundFaces found = boxes ? faces_in_boxes(faces().landmarks(), img, *boxes, res.name)
                             : find_faces(faces(), img, fo);
    res.off_centre_seen = found.off_centre_seen;
    for (auto& f : found.faces) {
      FaceResult fr;
      fr.face = std::move(f.face);
      fr.fallback = f.fallback;
      fr.cnn = f.cnn;
      res.faces.push_back(std::move(fr));
    }
    if (r.opt.task != Task::kDetect && !res.faces.empty()) {
      const Alignment a = r.opt.alignment ? *r.opt.alignment : model_alignment(*layout.graph);
      const std::string base = fs::path(res.name).filename().string();
      for (size_t i = 0; i < res.faces.size(); ++i)
        chips.push_back(face_chips(img, res.faces[i].face, a, fo, base + "#" + std::to_string(i)));
    }
#endif
  }
  if (r.opt.task == Task::kDetect) return;
  if (r.opt.task == Task::kAlign) {
    for (size_t i = 0; i < chips.size(); ++i) res.faces[i].chips = std::move(chips[i]);
    return;
  }
  r.views = fo.detector == DetectorKind::kNone ? 1 : views_per_face(fo);
  r.chips = static_cast<int64_t>(chips.size()) * r.views;
  int64_t k = 0;
  if (layout.staged)
    r.in_u8.resize(r.chips * layout.image_bytes);
  else
    r.in_f32.resize(r.chips * layout.per_image);
  for (const auto& per_face : chips) {
    for (const Bgr8Image& c : per_face) {
      if (layout.staged) {
        const Bgr8Image sized = c.height == layout.spec.height && c.width == layout.spec.width
                                    ? c
                                    : resize_bilinear(c, layout.spec.height, layout.spec.width);
        std::memcpy(r.in_u8.data() + k * layout.image_bytes, sized.pixels.data(),
                    layout.image_bytes);
      } else {
        bgr8_to_input(c.pixels.data(), c.height, c.width, layout.spec,
                      r.in_f32.data() + k * layout.per_image);
      }
      ++k;
    }
  }
  FN_ASSERT(k == r.chips);
  r.out.resize(r.chips * layout.dim);
  r.pending = r.chips;
}

void embed_faces(Request& r, int64_t dim, bool normalised) {
  const int views = r.views;
  for (size_t f = 0; f < r.result.faces.size(); ++f) {
    std::vector<float>& e = r.result.faces[f].embedding;
    e.assign(dim, 0.f);
    for (int v = 0; v < views; ++v) {
      const float* row = r.out.data() + (f * views + v) * dim;
      for (int64_t j = 0; j < dim; ++j) e[j] += row[j] / views;
    }
    if (views > 1 && normalised) {
      double ss = 0;
      for (float x : e) ss += static_cast<double>(x) * x;
      if (ss > 0)
        for (auto& x : e) x = static_cast<float>(x / std::sqrt(ss));
    }
  }
}

}  // namespace facenet
