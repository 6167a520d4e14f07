// The engine's CNN face detector (see cnn_detector.h): dlib's pyramid and box geometry (dlib's
// own header functions, so the layout and the mapping are dlib's by construction), our
// backends for the network.
#include "engine/face/cnn_detector.h"

#include <dlib/dnn.h>
#include <dlib/image_transforms.h>

#include <algorithm>
#include <cstring>
#include <list>
#include <map>
#include <mutex>
#include <utility>

#include "engine/core/error.h"
#include "engine/face/cnn_detector_cuda.h"
#include "engine/face/dlib_view.h"
#include "engine/model/model.h"

namespace facenet {

namespace {

using Pyramid = dlib::pyramid_down<6>;

std::vector<dlib::rectangle> dlib_rects(const PyramidLayout& layout) {
  std::vector<dlib::rectangle> r;
  for (const auto& l : layout.levels) r.emplace_back(l.left, l.top, l.right, l.bottom);
  return r;
}

}  // namespace

PyramidLayout pyramid_layout(const MmodSettings& s, long rows, long cols) {
  if (s.pyramid_down != 6) fail("only dlib's pyramid_down<6> is implemented");
  std::vector<dlib::rectangle> rects;
  PyramidLayout out;
  dlib::impl::compute_tiled_image_pyramid_details(Pyramid(), rows, cols, s.padding, s.outer_padding,
                                                  rects, out.rows, out.cols);
  // dlib checks that each level lies inside the pyramid image only in debug builds; for photos
  // a few pixels tall a level lands outside it. Such levels (and those after) are dropped.
  for (const auto& r : rects) {
    if (r.left() < 0 || r.top() < 0 || r.right() >= out.cols || r.bottom() >= out.rows) break;
    out.levels.push_back({r.left(), r.top(), r.right(), r.bottom()});
  }
  return out;
}

void build_pyramid_input(const MmodSettings& s, const PyramidLayout& layout,
                         const unsigned char* rgb, int64_t n, long rows, long cols, float* x) {
  const int64_t plane = static_cast<int64_t>(layout.rows) * layout.cols;
  std::fill(x, x + n * 3 * plane, 0.f);
  if (layout.levels.empty()) return;
  const auto& l0 = layout.levels[0];
  if (l0.height() != rows || l0.width() != cols)
    fail("build_pyramid_input: the layout is for ", l0.width(), "x", l0.height(), ", not ", cols,
         "x", rows);
#pragma omp parallel for schedule(static)
  for (int64_t ik = 0; ik < n * 3; ++ik) {
    const int64_t i = ik / 3;
    const int k = static_cast<int>(ik % 3);
    float* p = x + ik * plane;
    // dlib: (pixel - avg) / 256.0 with avg a float.
    const float mean = static_cast<float>(s.mean_rgb[k]);
    const unsigned char* src = rgb + i * rows * cols * 3 + k;
    for (long r = 0; r < rows; ++r) {
      float* row = p + (l0.top + r) * layout.cols + l0.left;
      for (long c = 0; c < cols; ++c)
        row[c] = static_cast<float>((static_cast<float>(src[(r * cols + c) * 3]) - mean) * s.scale);
    }
    // Each level from the one before with dlib's resize_image (its float bilinear path), as
    // dlib's tt::resize_bilinear does on the CPU.
    for (size_t l = 1; l < layout.levels.size(); ++l) {
      const auto& a = layout.levels[l - 1];
      const auto& b = layout.levels[l];
      const float* from = p + a.top * layout.cols + a.left;
      const auto in = dlib::sub_image(from, a.height(), a.width(), layout.cols);
      auto out =
          dlib::sub_image(p + b.top * layout.cols + b.left, b.height(), b.width(), layout.cols);
      dlib::resize_image(in, out);
    }
  }
}

struct CnnDetector::Impl {
  Model model;
  CnnDetectorOptions options;
  std::mutex mutex;  // the backends are not thread-safe
  struct Entry {
    long rows, cols;
    std::unique_ptr<Backend> backend;  // null: the pyramid is too small for the network
    Shape out;
  };
  std::list<Entry> cache;  // most recently used first
  static constexpr size_t kCachedSizes = 8;
  static constexpr int64_t kCachedPixels = int64_t{32} << 20;
  static constexpr int64_t kMaxDetectorActivation = int64_t{1} << 32;

  // Under mutex.
  Entry& entry(long rows, long cols) {
    for (auto it = cache.begin(); it != cache.end(); ++it)
      if (it->rows == rows && it->cols == cols) {
        cache.splice(cache.begin(), cache, it);
        return cache.front();
      }
    Entry e{rows, cols, nullptr, {}};
    // A map that shrinks to nothing leaves no location to score (dlib throws there): no faces.
    bool fits = true;
    int64_t h = rows, w = cols;
    for (const Node& n : model.graph.nodes)
      if (n.op == OpType::kConv) {
        h = pooled_size(h, n.kernel, n.stride, n.pad);
        w = pooled_size(w, n.kernel, n.stride, n.pad);
        fits = fits && h >= 1 && w >= 1;
      }
    if (fits) {
      Model m = model;
      m.graph.input_shape = {3, rows, cols};
      m.shapes.clear();
      // The photo's size is the caller's, bounded by its pixel limit: a 12 MP photo's first
      // layer holds 180 M values, more than a model file may ask for.
      validate_model(m, kMaxDetectorActivation);
      e.out = m.shapes.back();
      BackendOptions bo = options.backend;
      // The CPU backend sizes its arena for a micro-batch: one pyramid is already a large
      // image (a 1 MP photo's is 3.7 MP), and batching gains nothing there.
      if (bo.micro_batch == 0 && bo.device != Device::kCuda) bo.micro_batch = 1;
      e.backend = make_backend(m, bo);
    }
    cache.push_front(std::move(e));
    // Keep a few sizes (a folder of one camera's photos has one), bounded in pixels too: each
    // backend holds activations for its size (on CUDA for a whole batch of them).
    int64_t pixels = 0;
    for (auto it = cache.begin(); it != cache.end();) {
      pixels += options.backend.device == Device::kCuda
                    ? std::max(it->rows * it->cols, options.max_batch_pixels)
                    : it->rows * it->cols;
      if (it != cache.begin() && (pixels > kCachedPixels || std::distance(cache.begin(), it) >=
                                                                static_cast<long>(kCachedSizes)))
        it = cache.erase(it);
      else
        ++it;
    }
    return cache.front();
  }
};

CnnDetector::CnnDetector(Model model, const std::string& origin, const CnnDetectorOptions& options)
    : settings_(mmod_settings(model, origin)), impl_(std::make_unique<Impl>()) {
  // Whole 16-float vectors on the CPU (AVX-512), 8 halves on CUDA's tensor cores.
  impl_->model =
      pad_conv_channels(std::move(model), options.backend.device == Device::kCuda ? 8 : 16);
  impl_->options = options;
}

CnnDetector::~CnnDetector() = default;

std::vector<Detection> CnnDetector::detect(const Bgr8Image& image, int upsample) const {
  return detect_batch({&image}, upsample).front();
}

namespace {

struct Candidate {
  dlib::rectangle rect;
  double score;
  bool operator<(const Candidate& o) const { return score < o.score; }
};

// dlib's loss_mmod to_label for one score map: every location above the threshold as a
// window mapped back through the pyramid, best first, then non-max suppression.
std::vector<Detection> decode(const MmodSettings& s, const std::vector<dlib::rectangle>& rects,
                              const float* score, long h, long w, int upsample) {
  std::vector<Candidate> cands;
  const MmodSettings::Window& win = s.windows.front();
  for (long r = 0; r < h; ++r)
    for (long c = 0; c < w; ++c) {
      const double v = score[r * w + c];
      if (!(v > s.threshold)) continue;
      const dlib::dpoint p(c * s.map_scale + s.map_offset, r * s.map_scale + s.map_offset);
      const dlib::drectangle box = dlib::tiled_pyramid_to_image<Pyramid>(
          rects, dlib::centered_drect(p, win.width, win.height));
      cands.push_back({dlib::rectangle(box), v});
    }
  std::sort(cands.rbegin(), cands.rend());
  const dlib::test_box_overlap overlaps(s.nms_iou, s.nms_covered);
  std::vector<Candidate> kept;
  for (const Candidate& cand : cands) {
    bool overlapping = false;
    for (const Candidate& k : kept) overlapping = overlapping || overlaps(k.rect, cand.rect);
    if (!overlapping) kept.push_back(cand);
  }
  const dlib::pyramid_down<2> up;
  std::vector<Detection> out;
  for (const Candidate& k : kept) {
    const dlib::rectangle b = up.rect_down(k.rect, upsample);
    out.push_back({FaceBox{b.left(), b.top(), b.right(), b.bottom()}, k.score});
  }
  return out;
}

}  // namespace

std::vector<std::vector<Detection>> CnnDetector::detect_batch(
    const std::vector<const Bgr8Image*>& images, int upsample) const {
  if (upsample < 0 || upsample > 8) fail("CNN detector: upsample ", upsample, " is not in 0..8");
  std::vector<std::vector<Detection>> out(images.size());
  std::vector<dlib::matrix<dlib::rgb_pixel>> rgb(images.size());
  std::map<std::pair<long, long>, std::vector<size_t>> by_size;
  for (size_t i = 0; i < images.size(); ++i) {
    rgb[i] = rgb_upsampled(*images[i], upsample);
    by_size[{rgb[i].nr(), rgb[i].nc()}].push_back(i);
  }
  for (const auto& [size, members] : by_size) {
    const auto [rows, cols] = size;
    const PyramidLayout layout = pyramid_layout(settings_, rows, cols);
    if (layout.levels.empty()) continue;
    const std::vector<dlib::rectangle> rects = dlib_rects(layout);
    const int64_t plane = static_cast<int64_t>(layout.rows) * layout.cols;
    // CUDA: photos share forwards up to the pixel budget. CPU: one photo per forward; a batch
    // of pyramids measured slower (72 vs 88 photos/s on 250x250, 2 cores), its input no longer
    // in cache by the time the network reads it.
    const int64_t budget =
        impl_->options.backend.device == Device::kCuda || impl_->options.batch_on_cpu
            ? impl_->options.max_batch_pixels
            : plane;
    const size_t chunk =
        static_cast<size_t>(std::max<int64_t>(1, budget / std::max<int64_t>(plane, 1)));
    for (size_t first = 0; first < members.size(); first += chunk) {
      const size_t nb = std::min(chunk, members.size() - first);
      std::vector<unsigned char> packed(nb * rows * cols * 3);
      for (size_t j = 0; j < nb; ++j)
        std::memcpy(packed.data() + j * rows * cols * 3, &rgb[members[first + j]](0, 0),
                    static_cast<size_t>(rows * cols * 3));
      // CUDA builds the pyramid on the GPU from the 8-bit photos; the CPU here.
      const bool on_gpu = impl_->options.backend.device == Device::kCuda;
      thread_local std::vector<float> x;  // reused: a pyramid is megabytes
      if (!on_gpu) {
        x.resize(nb * 3 * plane);
        build_pyramid_input(settings_, layout, packed.data(), static_cast<int64_t>(nb), rows, cols,
                            x.data());
      }
      std::vector<float> y;
      Shape os;
      {
        std::lock_guard<std::mutex> lock(impl_->mutex);
        Impl::Entry& e = impl_->entry(layout.rows, layout.cols);
        if (!e.backend) break;
        os = e.out;
        y.resize(nb * element_count(os));
        if (on_gpu)
          detail::forward_pyramid_cuda(*e.backend, settings_, layout, packed.data(),
                                       static_cast<int64_t>(nb), rows, cols, y.data());
        else
          e.backend->forward(x.data(), static_cast<int64_t>(nb), y.data());
      }
      for (size_t j = 0; j < nb; ++j)
        out[members[first + j]] =
            decode(settings_, rects, y.data() + j * element_count(os), os[1], os[2], upsample);
      if (x.capacity() > (size_t{64} << 20) / sizeof(float)) std::vector<float>().swap(x);
    }
  }
  return out;
}

namespace {

// Reads the file on the first detect() (see make_cnn_detector).
class LazyCnnDetector final : public Detector {
 public:
  LazyCnnDetector(std::filesystem::path file, CnnDetectorOptions options)
      : file_(std::move(file)), options_(std::move(options)) {}
  const char* name() const override { return "cnn"; }
  std::vector<Detection> detect(const Bgr8Image& image, int upsample) const override {
    return get().detect(image, upsample);
  }
  std::vector<std::vector<Detection>> detect_batch(const std::vector<const Bgr8Image*>& images,
                                                   int upsample) const override {
    return get().detect_batch(images, upsample);
  }

 private:
  // A load that throws is tried again by the next call.
  const CnnDetector& get() const {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!detector_) {
      const std::string origin = file_.string();
      if (!std::filesystem::is_regular_file(file_))
        fail(origin, ": CNN face detector not found (run weights/fetch_dlib_models.sh)");
      Model m = file_.extension() == ".dat" ? convert_dlib_mmod(file_) : load_model(file_);
      detector_ = std::make_unique<CnnDetector>(std::move(m), origin, options_);
    }
    return *detector_;
  }

  std::filesystem::path file_;
  CnnDetectorOptions options_;
  mutable std::mutex mutex_;
  mutable std::unique_ptr<CnnDetector> detector_;
};

}  // namespace

std::unique_ptr<Detector> make_cnn_detector(const std::filesystem::path& file,
                                            const CnnDetectorOptions& options) {
  return std::make_unique<LazyCnnDetector>(file, options);
}

}  // namespace facenet
