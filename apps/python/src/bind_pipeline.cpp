// Bindings of engine/pipeline, the front door: Python inputs (paths, encoded bytes, uint8
// pixel arrays) become ImageInputs, Pipeline::run does the work with the GIL released, and the
// results come back as ImageResult/FaceResult objects whose landmark and embedding arrays view
// the results' own memory (chips are stacked into a new array).
#include <nanobind/stl/filesystem.h>
#include <nanobind/stl/function.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstring>
#include <memory>

#include "apps/python/src/bindings.h"
#include "engine/core/error.h"
#include "engine/image/image_io.h"
#include "engine/pipeline/pipeline.h"
#include "engine/search/gallery.h"

namespace fs = std::filesystem;

namespace facenet::python {

namespace {

using UInt8Image = nb::ndarray<const uint8_t, nb::ndim<3>, nb::device::cpu>;

// One Python image: str/PathLike (a file), bytes (encoded), or an H x W x 3 uint8 array whose
// pixels are packed within a row (any row stride). `index` names arrays and bytes in errors.
// An array is borrowed, not copied: `held` keeps it alive until the run is over.
ImageInput to_input(nb::handle obj, size_t index, PixelOrder order, std::vector<UInt8Image>& held) {
  if (nb::isinstance<nb::bytes>(obj)) {
    const auto b = nb::cast<nb::bytes>(obj);
    const auto* p = static_cast<const uint8_t*>(b.data());
    return ImageInput::bytes(std::vector<uint8_t>(p, p + b.size()),
                             "bytes[" + std::to_string(index) + "]");
  }
  if (nb::isinstance<nb::str>(obj) || nb::hasattr(obj, "__fspath__"))
    return ImageInput::file(nb::cast<fs::path>(obj));
  // No conversion: a converted array would be a temporary the workers read after it is freed,
  // and a float image would be truncated to 0/1 pixel values without a word.
  UInt8Image a;
  if (!nb::try_cast(obj, a, /*convert=*/false))
    fail("image ", index,
         ": expected a path, encoded bytes or a CPU uint8 array of shape (height, width, 3), got ",
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
  held.push_back(a);
  // Borrowed: run() holds the arrays until it returns, and the workers convert them in parallel.
  return ImageInput::borrowed_pixels(view, name);
}

// boxes[image][box]: four integers (left, top, right, bottom).
FaceBox to_box(nb::handle t, size_t image, size_t box) {
  std::vector<long> seq;
  if (!nb::try_cast(t, seq, /*convert=*/false) || seq.size() != 4)
    fail("boxes[", image, "][", box, "]: expected 4 integers (left, top, right, bottom), got ",
         nb::repr(t).c_str());
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
    std::vector<UInt8Image> held;  // the borrowed pixel arrays, alive until run() is over
    inputs.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      inputs.push_back(to_input(images[i], i, order, held));
      if (boxes && !(*boxes)[i].is_none()) {
        std::vector<FaceBox> b;
        for (nb::handle t : nb::iter((*boxes)[i])) b.push_back(to_box(t, i, b.size()));
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

// The Python Identification (facenet_engine.gallery), the same type Gallery.identify returns.
nb::object identification(const Identification& m) {
  nb::list top;
  for (const Candidate& c : m.top) top.append(nb::make_tuple(c.name, c.distance));
  return nb::module_::import_("facenet_engine.gallery")
      .attr("Identification")(m.best, m.distance, top);
}

// ---- pickling: results go back from worker processes ----------------------------------------
template <typename T>
nb::bytes raw(const std::vector<T>& v) {
  return nb::bytes(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

template <typename T>
std::vector<T> unraw(nb::handle b) {
  const auto bytes = nb::cast<nb::bytes>(b);
  std::vector<T> v(bytes.size() / sizeof(T));
  if (!v.empty()) std::memcpy(v.data(), bytes.data(), v.size() * sizeof(T));
  return v;
}

nb::tuple face_state(const FaceResult& f) {
  const FaceBox& b = f.face.box;
  nb::list chips;
  for (const Bgr8Image& c : f.chips) chips.append(nb::make_tuple(c.height, c.width, raw(c.pixels)));
  nb::object match = nb::none();
  if (f.match) {
    nb::list top;
    for (const Candidate& c : f.match->top) top.append(nb::make_tuple(c.name, c.distance));
    match = nb::make_tuple(f.match->best, f.match->distance, top);
  }
  return nb::make_tuple(nb::make_tuple(b.left, b.top, b.right, b.bottom), f.face.score,
                        raw(f.face.landmarks), raw(f.face.landmarks5), raw(f.embedding), chips,
                        match, f.fallback, f.cnn);
}

FaceResult face_from_state(const nb::tuple& t) {
  FaceResult f;
  const auto box = nb::cast<std::vector<long>>(t[0]);
  f.face.box = {box.at(0), box.at(1), box.at(2), box.at(3)};
  f.face.score = nb::cast<double>(t[1]);
  f.face.landmarks = unraw<Point2f>(t[2]);
  f.face.landmarks5 = unraw<Point2f>(t[3]);
  f.embedding = unraw<float>(t[4]);
  for (nb::handle c : nb::iter(t[5])) {
    const auto ct = nb::cast<nb::tuple>(c);
    Bgr8Image chip;
    chip.height = nb::cast<int>(ct[0]);
    chip.width = nb::cast<int>(ct[1]);
    chip.pixels = unraw<uint8_t>(ct[2]);
    f.chips.push_back(std::move(chip));
  }
  if (!t[6].is_none()) {
    const auto mt = nb::cast<nb::tuple>(t[6]);
    Identification m;
    m.best = nb::cast<std::string>(mt[0]);
    m.distance = nb::cast<double>(mt[1]);
    for (nb::handle c : nb::iter(mt[2]))
      m.top.push_back({nb::cast<std::string>(c[0]), nb::cast<double>(c[1])});
    f.match = std::move(m);
  }
  f.fallback = nb::cast<bool>(t[7]);
  f.cnn = nb::cast<bool>(t[8]);
  return f;
}

nb::tuple image_state(const ImageResult& r) {
  nb::list faces;
  for (const FaceResult& f : r.faces) faces.append(face_state(f));
  return nb::make_tuple(r.name, static_cast<int>(r.status), r.error, r.width, r.height,
                        r.off_centre_seen, faces);
}

ImageResult image_from_state(const nb::tuple& t) {
  ImageResult r;
  r.name = nb::cast<std::string>(t[0]);
  r.status = static_cast<InputStatus>(nb::cast<int>(t[1]));
  r.error = nb::cast<std::string>(t[2]);
  r.width = nb::cast<int>(t[3]);
  r.height = nb::cast<int>(t[4]);
  r.off_centre_seen = nb::cast<bool>(t[5]);
  for (nb::handle f : nb::iter(t[6])) r.faces.push_back(face_from_state(nb::cast<nb::tuple>(f)));
  return r;
}

}  // namespace

void bind_pipeline(nb::module_& m) {
  m.def(
      "_expand_inputs",
      [](const std::vector<nb::bytes>& args) {
        std::vector<std::string> in;
        for (const nb::bytes& a : args) in.emplace_back(a.c_str(), a.size());
        nb::list out;
        for (const InputEntry& e : expand_inputs(in)) {
          const std::string& p = e.path.native();
          out.append(nb::make_tuple(nb::bytes(p.data(), p.size()),
                                    nb::bytes(e.error.data(), e.error.size())));
        }
        return out;
      },
      nb::arg("args"),
      "The CLI's input expansion: files and directories (recursive, sorted, image extensions) "
      "as file-system bytes -> [(path, error)], error b'' for an image file to read.");
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
            return f.match ? identification(*f.match) : nb::none();
          },
          "Task identify: an Identification (best: name or 'unknown', distance: plain L2, top: "
          "[(name, distance), ...]); else None.")
      .def("__getstate__", &face_state)
      .def("__setstate__",
           [](FaceResult& f, const nb::tuple& t) { new (&f) FaceResult(face_from_state(t)); })
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
      .def("__getstate__", &image_state)
      .def("__setstate__",
           [](ImageResult& r, const nb::tuple& t) { new (&r) ImageResult(image_from_state(t)); })
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
