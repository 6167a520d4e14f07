// Bindings of engine/pipeline, the front door: Python inputs (paths, encoded bytes, uint8
// pixel arrays) become ImageInputs, Pipeline::run does the work with the GIL released, and the
// results come back as ImageResult/FaceResult objects whose arrays view the results' own memory.
#include <nanobind/stl/filesystem.h>
#include <nanobind/stl/function.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <memory>

#include "apps/python/src/bindings.h"
#include "engine/core/error.h"
#include "engine/pipeline/pipeline.h"
#include "engine/search/gallery.h"

namespace fs = std::filesystem;

namespace facenet::python {

namespace {

using UInt8Image = nb::ndarray<const uint8_t, nb::ndim<3>, nb::device::cpu>;

// One Python image: str/PathLike (a file), bytes (encoded), or an H x W x 3 uint8 array whose
// pixels are packed within a row (any row stride). `index` names arrays and bytes in errors.
ImageInput to_input(nb::handle obj, size_t index, PixelOrder order) {
  if (nb::isinstance<nb::bytes>(obj)) {
    const auto b = nb::cast<nb::bytes>(obj);
    const auto* p = static_cast<const uint8_t*>(b.data());
    return ImageInput::bytes(std::vector<uint8_t>(p, p + b.size()),
                             "bytes[" + std::to_string(index) + "]");
  }
  if (nb::isinstance<nb::str>(obj) || nb::hasattr(obj, "__fspath__"))
    return ImageInput::file(nb::cast<fs::path>(obj));
  UInt8Image a;
  if (!nb::try_cast(obj, a))
    fail("image ", index,
         ": expected a path, encoded bytes or a uint8 array of shape (height, width, 3), got ",
         nb::inst_name(obj).c_str());
  const std::string name = "image[" + std::to_string(index) + "]";
  if (a.shape(2) != 3 || a.stride(2) != 1 || a.stride(1) != 3)
    fail(name,
         ": pixels must be (height, width, 3) with each pixel's 3 bytes together (got shape (",
         a.shape(0), ", ", a.shape(1), ", ", a.shape(2), "))");
  PixelView view;
  view.data = a.data();
  view.height = static_cast<int>(a.shape(0));
  view.width = static_cast<int>(a.shape(1));
  view.stride = a.stride(0);
  view.order = order;
  // Borrowed: run() holds the arrays until it returns, and the workers convert them in parallel.
  return ImageInput::borrowed_pixels(view, name);
}

FaceBox to_box(nb::handle t) {
  const auto seq = nb::cast<std::vector<long>>(t);
  if (seq.size() != 4)
    fail("a face box is (left, top, right, bottom); got ", seq.size(), " values");
  return FaceBox{seq[0], seq[1], seq[2], seq[3]};
}

struct CallOptions {
  std::string task = "encode", detector = "hog", pick = "largest", color = "rgb";
  int upsample = 0, jitter = 0, k = 5;
  bool mirror = false;
  std::optional<std::string> alignment;
  double threshold = -1;
};

Task parse_task(const std::string& s) {
  if (s == "detect") return Task::kDetect;
  if (s == "align") return Task::kAlign;
  if (s == "encode") return Task::kEncode;
  if (s == "identify") return Task::kIdentify;
  fail("unknown task '", s, "' (expected detect, align, encode or identify)");
}

RequestOptions request_options(const CallOptions& c) {
  RequestOptions r;
  r.task = parse_task(c.task);
  r.faces.detector = parse_detector(c.detector);
  if (r.faces.detector != DetectorKind::kNone) r.faces.pick = parse_face_pick(c.pick);
  if (c.upsample < 0 || c.upsample > 3) fail("upsample ", c.upsample, " is out of range (0-3)");
  r.faces.upsample = c.upsample;
  if (c.jitter < 0) fail("jitter ", c.jitter, " must be >= 0");
  r.faces.jitter = c.jitter;
  r.faces.mirror = c.mirror;
  if (c.alignment) r.alignment = parse_alignment(*c.alignment);
  if (c.k < 1) fail("k ", c.k, " must be >= 1");
  r.k = c.k;
  r.threshold = c.threshold;
  return r;
}

PixelOrder parse_color(const std::string& s) {
  if (s == "rgb") return PixelOrder::kRgb;
  if (s == "bgr") return PixelOrder::kBgr;
  fail("unknown color order '", s, "' (expected rgb or bgr)");
}

// The pipeline with what it was made from, so that Python can pickle it by re-creating it.
struct PyPipeline {
  std::unique_ptr<Pipeline> pipeline;
  std::optional<fs::path> model;

  std::vector<ImageResult> run(nb::sequence images, const std::optional<nb::list>& boxes,
                               const CallOptions& call,
                               const std::optional<nb::callable>& progress) {
    const RequestOptions options = request_options(call);
    const PixelOrder order = parse_color(call.color);
    const size_t n = nb::len(images);
    if (boxes && nb::len(*boxes) != n)
      fail("boxes: ", nb::len(*boxes), " lists of boxes for ", n, " images");
    std::vector<ImageInput> inputs;
    inputs.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      inputs.push_back(to_input(images[i], i, order));
      if (boxes && !(*boxes)[i].is_none()) {
        std::vector<FaceBox> b;
        for (nb::handle t : nb::iter((*boxes)[i])) b.push_back(to_box(t));
        inputs.back().with_boxes(std::move(b));
      }
    }
    std::vector<ImageResult> out;
    out.reserve(n);
    {
      nb::gil_scoped_release release;
      // Results and progress reach Python on this thread; a pending KeyboardInterrupt (or an
      // exception from the progress callback) ends the run, the requests in flight finish.
      pipeline->run(
          std::move(inputs), options, [&](ImageResult& r) { out.push_back(std::move(r)); },
          [&](size_t done, size_t total) {
            nb::gil_scoped_acquire acquire;
            if (PyErr_CheckSignals() != 0) throw nb::python_error();
            if (progress) (*progress)(done, total);
          });
    }
    if (order == PixelOrder::kRgb)
      for (ImageResult& r : out)
        for (FaceResult& f : r.faces)
          for (Bgr8Image& c : f.chips)
            for (size_t p = 0; p + 2 < c.pixels.size(); p += 3)
              std::swap(c.pixels[p], c.pixels[p + 2]);
    return out;
  }
};

nb::object points(const std::vector<Point2f>& pts, nb::handle owner) {
  static_assert(sizeof(Point2f) == 2 * sizeof(float));
  if (pts.empty()) return nb::none();
  return nb::cast(nb::ndarray<nb::numpy, const float, nb::ndim<2>>(
      reinterpret_cast<const float*>(pts.data()), {pts.size(), 2}, owner));
}

nb::object match_dict(const Identification& m) {
  nb::dict d;
  d["best"] = m.best;
  d["distance"] = m.distance;
  nb::list top;
  for (const Candidate& c : m.top) top.append(nb::make_tuple(c.name, c.distance));
  d["top"] = top;
  return d;
}

}  // namespace

void bind_pipeline(nb::module_& m) {
  nb::class_<FaceResult>(m, "FaceResult",
                         "One face of an image: box, detector score, landmarks and, as the task "
                         "asked, the aligned chips, the embedding and the gallery match.")
      .def_prop_ro(
          "box",
          [](const FaceResult& f) {
            const FaceBox& b = f.face.box;
            return nb::make_tuple(b.left, b.top, b.right, b.bottom);
          },
          "(left, top, right, bottom): dlib's inclusive pixel corners (a crop: the whole image).")
      .def_prop_ro(
          "score", [](const FaceResult& f) { return f.face.score; },
          "The detector's confidence (0 for a given box or a crop).")
      .def_prop_ro(
          "landmarks",
          [](nb::handle self) { return points(nb::cast<FaceResult&>(self).face.landmarks, self); },
          "The 68 landmarks (iBUG 300-W order) as float32 (68, 2) x, y; None for a crop.")
      .def_prop_ro(
          "landmarks5",
          [](nb::handle self) { return points(nb::cast<FaceResult&>(self).face.landmarks5, self); },
          "dlib's 5 landmarks as float32 (5, 2) x, y; None for a crop.")
      .def_prop_ro(
          "embedding",
          [](nb::handle self) -> nb::object {
            const auto& e = nb::cast<FaceResult&>(self).embedding;
            if (e.empty()) return nb::none();
            return nb::cast(
                nb::ndarray<nb::numpy, const float, nb::ndim<1>>(e.data(), {e.size()}, self));
          },
          "The face's embedding, float32 (D,) (tasks encode and identify), else None.")
      .def_prop_ro(
          "chips",
          [](const FaceResult& f) -> nb::object {
            if (f.chips.empty()) return nb::none();
            const Bgr8Image& c0 = f.chips[0];
            std::vector<uint8_t> all;
            all.reserve(f.chips.size() * c0.pixels.size());
            for (const Bgr8Image& c : f.chips)
              all.insert(all.end(), c.pixels.begin(), c.pixels.end());
            return nb::cast(
                to_numpy(std::move(all), {f.chips.size(), size_t(c0.height), size_t(c0.width), 3}));
          },
          "Task align: the aligned chips (n, H, W, 3) uint8, in the call's color order (n > 1 with "
          "mirror or jitter); else None.")
      .def_prop_ro(
          "match",
          [](const FaceResult& f) -> nb::object {
            return f.match ? match_dict(*f.match) : nb::none();
          },
          "Task identify: {'best': name or 'unknown', 'distance': plain L2, 'top': [(name, "
          "distance), ...]}; else None.")
      .def_ro("fallback", &FaceResult::fallback, "The box is the fallback box, not a detection.")
      .def_ro("cnn", &FaceResult::cnn, "Found by dlib's CNN detector.")
      .def("__repr__", [](const FaceResult& f) {
        const FaceBox& b = f.face.box;
        return "FaceResult(box=(" + std::to_string(b.left) + ", " + std::to_string(b.top) + ", " +
               std::to_string(b.right) + ", " + std::to_string(b.bottom) +
               "), score=" + std::to_string(f.face.score) +
               (f.embedding.empty() ? "" : ", embedding=...") + ")";
      });

  nb::class_<ImageResult>(m, "ImageResult",
                          "The result of one input image: its status, size and faces. A bad "
                          "input is a result with status and error, not an exception.")
      .def_ro("name", &ImageResult::name, "The input's name: its path, or image[i] / bytes[i].")
      .def_prop_ro(
          "status", [](const ImageResult& r) { return std::string(status_name(r.status)); },
          "'ok', 'unreadable', 'undecodable', 'busy' or 'failed'.")
      .def_ro("error", &ImageResult::error, "Why the input failed, naming it; '' when ok.")
      .def_ro("width", &ImageResult::width)
      .def_ro("height", &ImageResult::height)
      .def_prop_ro("ok", &ImageResult::ok, "status == 'ok' (possibly with no face).")
      .def_prop_ro(
          "faces",
          [](nb::handle self) {
            nb::list out;
            for (FaceResult& f : nb::cast<ImageResult&>(self).faces)
              out.append(nb::cast(&f, nb::rv_policy::reference_internal, self));
            return out;
          },
          "The faces found (or given), as the call's align option picks them.")
      .def("__repr__", [](const ImageResult& r) {
        return "ImageResult(name='" + r.name + "', status='" + status_name(r.status) +
               "', faces=" + std::to_string(r.faces.size()) + ")";
      });

  nb::class_<CallOptions>(m, "_CallOptions")
      .def(nb::init<>())
      .def_rw("task", &CallOptions::task)
      .def_rw("detector", &CallOptions::detector)
      .def_rw("pick", &CallOptions::pick)
      .def_rw("color", &CallOptions::color)
      .def_rw("upsample", &CallOptions::upsample)
      .def_rw("jitter", &CallOptions::jitter)
      .def_rw("k", &CallOptions::k)
      .def_rw("mirror", &CallOptions::mirror)
      .def_rw("alignment", &CallOptions::alignment)
      .def_rw("threshold", &CallOptions::threshold);

  nb::class_<PyPipeline>(m, "_Pipeline")
      .def(
          "__init__",
          [](PyPipeline* self, std::optional<fs::path> model, const std::string& device,
             const std::string& precision, int threads, int max_batch, double max_delay_ms,
             int max_queue, int workers, std::optional<fs::path> dlib_models) {
            PipelineOptions o;
            o.backend.device = parse_device(device);
            o.backend.precision = precision;
            if (threads < 0) fail("threads ", threads, " must be >= 0");
            o.backend.threads = threads;
            if (max_batch < 1) fail("batch ", max_batch, " must be >= 1");
            o.max_batch = max_batch;
            o.max_delay_ms = max_delay_ms;
            if (max_queue < 1) fail("max_queue ", max_queue, " must be >= 1");
            o.max_queue = max_queue;
            if (workers < 0) fail("workers ", workers, " must be >= 0");
            o.workers = workers;
            if (dlib_models) o.dlib_models = *dlib_models;
            std::unique_ptr<Pipeline> p;
            {
              nb::gil_scoped_release release;
              p = model ? std::make_unique<Pipeline>(*model, o)
                        : std::make_unique<Pipeline>(Model{}, o);
            }
            new (self) PyPipeline{std::move(p), std::move(model)};
          },
          nb::arg("model").none(), nb::arg("device"), nb::arg("precision"), nb::arg("threads"),
          nb::arg("max_batch"), nb::arg("max_delay_ms"), nb::arg("max_queue"), nb::arg("workers"),
          nb::arg("dlib_models").none())
      .def("run", &PyPipeline::run, nb::arg("images"), nb::arg("boxes").none(), nb::arg("options"),
           nb::arg("progress").none(),
           "Runs every image through the front door (GIL released); results in input order.")
      .def(
          "set_gallery",
          [](PyPipeline& self, const fs::path& path) {
            nb::gil_scoped_release release;
            Gallery g = Gallery::open(path.string(), GalleryMode::kRead);
            self.pipeline->set_gallery(g.load_all(self.pipeline->spec().model));
            return self.pipeline->gallery_rows();
          },
          nb::arg("path"),
          "Loads every embedding of a gallery file for task identify; returns the rows.")
      .def_prop_ro("dim", [](const PyPipeline& p) { return p.pipeline->dim(); })
      .def_prop_ro("embedding_spec", [](const PyPipeline& p) { return p.pipeline->spec().model; })
      .def_prop_ro("backend_name", [](const PyPipeline& p) { return p.pipeline->backend_name(); })
      .def_prop_ro("default_threshold",
                   [](const PyPipeline& p) { return p.pipeline->default_threshold(); })
      .def_prop_ro("gallery_rows", [](const PyPipeline& p) { return p.pipeline->gallery_rows(); })
      .def("stats", [](const PyPipeline& p) {
        const PipelineStats s = p.pipeline->stats();
        nb::dict d;
        d["requests"] = s.requests;
        d["busy"] = s.busy;
        d["batches"] = s.batches;
        d["chips"] = s.chips;
        d["in_flight"] = s.in_flight;
        d["batch_sizes"] = s.batch_sizes;
        return d;
      });
}

}  // namespace facenet::python
