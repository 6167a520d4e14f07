// Photo pipeline: parallel decode/detect/align per batch, then one batched forward pass.
#include "engine/pipeline/encode_faces.h"

#include <cmath>
#include <opencv2/core.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>

#include "engine/core/error.h"
#include "engine/image/image_cv.h"

namespace facenet {

FacePick parse_face_pick(const std::string& s) {
  if (s == "largest") return FacePick::kLargest;
  if (s == "all") return FacePick::kAll;
  if (s == "centre" || s == "center") return FacePick::kCentre;
  fail("unknown face choice '", s, "' (expected largest, all or centre)");
}

namespace {

// The faces of one photo that `opt` asks for, with how each was found (embedding empty).
std::vector<EncodedFace> find_faces(const FaceAligner& aligner, const cv::Mat& img,
                                    const FaceOptions& opt) {
  const int upsample = opt.upsample + (opt.retry_upsampled ? 1 : 0);
  const double cx = img.cols / 2.0, cy = img.rows / 2.0;
  bool off_centre = false;
  // centre_only: drops the boxes that miss the image centre, and remembers a try whose every
  // box missed it (the detector found only other people there).
  auto usable = [&](std::vector<Face> faces) {
    if (opt.pick != FacePick::kCentre || !opt.centre_only) return faces;
    const size_t found = faces.size();
    faces.erase(std::remove_if(faces.begin(), faces.end(),
                               [&](const Face& f) {
                                 return !(f.box.left <= cx && cx <= f.box.right &&
                                          f.box.top <= cy && cy <= f.box.bottom);
                               }),
                faces.end());
    off_centre |= found > 0 && faces.empty();
    return faces;
  };
  std::vector<Face> faces = usable(aligner.detect(img, opt.upsample));
  if (faces.empty() && opt.retry_upsampled) faces = usable(aligner.detect(img, upsample));
  bool cnn = false;
  if (faces.empty() && opt.retry_cnn) {
    faces = usable(aligner.detect_cnn(img, upsample));
    cnn = !faces.empty();
  }
  std::vector<EncodedFace> out;
  if (faces.empty()) {
    if (opt.fallback)
      out.push_back({aligner.landmarks(img, *opt.fallback), true, false, off_centre, {}});
    return out;
  }
  if (opt.pick == FacePick::kAll) {
    for (auto& f : faces) out.push_back({std::move(f), false, cnn, off_centre, {}});
  } else if (opt.pick == FacePick::kLargest) {
    // detect*() sort largest first
    out.push_back({std::move(faces.front()), false, cnn, off_centre, {}});
  } else {
    auto dist = [&](const Face& f) {
      const double x = (f.box.left + f.box.right) / 2.0 - cx;
      const double y = (f.box.top + f.box.bottom) / 2.0 - cy;
      return x * x + y * y;
    };
    out.push_back(
        {*std::min_element(faces.begin(), faces.end(),
                           [&](const Face& a, const Face& b) { return dist(a) < dist(b); }),
         false,
         cnn,
         off_centre,
         {}});
  }
  return out;
}

}  // namespace

int views_per_face(const FaceOptions& opt) {
  return opt.jitter > 0 ? opt.jitter : opt.mirror ? 2 : 1;
}

std::vector<cv::Mat> augment_chip(const cv::Mat& chip, const FaceOptions& opt,
                                  const std::string& seed) {
  if (opt.jitter > 0) return FaceAligner::jitter(chip, opt.jitter, seed);
  std::vector<cv::Mat> out{chip};
  if (opt.mirror) {
    cv::Mat flipped;
    cv::flip(chip, flipped, 1);
    out.push_back(flipped);
  }
  return out;
}

PhotoStats encode_photos(Backend& backend, const Model& model, const FaceAligner& aligner,
                         const std::vector<std::filesystem::path>& files, const FaceOptions& opt,
                         int batch, const PhotoCallbacks& cb) {
  if (batch < 1) fail("--batch must be >= 1 (got ", batch, ")");
  const Alignment alignment = model_alignment(model.graph);
  const InputSpec spec = input_spec(model.graph);
  const int64_t per_image = element_count(model.graph.input_shape);
  const int64_t dim = model.embedding_dim();
  PhotoStats stats;
  std::vector<float> input, output;
  for (size_t start = 0; start < files.size(); start += batch) {
    const int64_t n = std::min<int64_t>(batch, files.size() - start);
    std::vector<PhotoResult> results(n);
    std::vector<std::vector<cv::Mat>> chips(n);
#pragma omp parallel for schedule(dynamic)
    for (int64_t i = 0; i < n; ++i) {
      PhotoResult& r = results[i];
      r.path = files[start + i];
      try {
        const cv::Mat img = read_image(r.path);
        for (auto& f : find_faces(aligner, img, opt)) {
          const std::string seed =
              r.path.filename().string() + "#" + std::to_string(r.faces.size());
          for (auto& c : augment_chip(FaceAligner::align(img, f.face, alignment), opt, seed))
            chips[i].push_back(std::move(c));
          r.faces.push_back(std::move(f));
        }
      } catch (const std::exception& e) {
        r.error = e.what();
        r.faces.clear();
        chips[i].clear();
      }
    }
    int64_t total = 0;
    for (const auto& c : chips) total += static_cast<int64_t>(c.size());
    input.resize(std::max<int64_t>(total, 1) * per_image);
    int64_t k = 0;
    for (const auto& c : chips)
      for (const auto& chip : c)
        image_to_input(chip, "face chip", spec, input.data() + k++ * per_image);
    output.resize(total * dim);
    if (total) backend.forward(input.data(), total, output.data());
    k = 0;
    const int views = views_per_face(opt);
    const bool normalised = model.graph.nodes.back().op == OpType::kL2Norm;
    for (auto& r : results) {
      for (auto& f : r.faces) {
        // The mean of the embeddings of the face's chips (one unless augmented).
        f.embedding.assign(dim, 0.f);
        for (int v = 0; v < views; ++v, ++k)
          for (int64_t j = 0; j < dim; ++j) f.embedding[j] += output[k * dim + j] / views;
        if (views > 1 && normalised) {
          double ss = 0;
          for (float x : f.embedding) ss += static_cast<double>(x) * x;
          if (ss > 0)
            for (auto& x : f.embedding) x = static_cast<float>(x / std::sqrt(ss));
        }
        stats.fallback += f.fallback;
        stats.cnn += f.cnn;
      }
      ++stats.photos;
      stats.faces += r.faces.size();
      if (!r.error.empty())
        ++stats.failed;
      else if (r.faces.empty())
        ++stats.no_face;
      if (cb.on_photo) cb.on_photo(r);
    }
    if (cb.on_progress) cb.on_progress(start + n, files.size());
  }
  return stats;
}

}  // namespace facenet
