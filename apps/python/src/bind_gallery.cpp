// Bindings of engine/search's gallery and recognition: one gallery connection per object, which
// Python threads may share (a lock per connection: the engine's Gallery is single-threaded),
// enrolment from numpy, 1:1 verify and 1:K identify. facenet_engine.gallery wraps these in the
// public Gallery class; every SQLite call and search runs with the GIL released.
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/unique_ptr.h>
#include <nanobind/stl/vector.h>

#include <atomic>
#include <cmath>
#include <mutex>
#include <optional>
#include <tuple>

#include "apps/python/src/bindings.h"
#include "engine/backend/backend.h"
#include "engine/core/error.h"
#include "engine/model/embedding_spec.h"
#include "engine/model/model.h"
#include "engine/search/gallery.h"
#include "engine/search/recognition.h"

namespace facenet::python {

namespace {

// (id, name, metadata JSON text, created_at, embeddings): facenet_engine.Identity's fields.
using IdentityRow = std::tuple<int64_t, std::string, std::string, int64_t, int64_t>;
// (name, distance, threshold, match): facenet_engine.Verification's fields.
using VerificationRow = std::tuple<std::string, double, double, bool>;
// (best, distance, top [(name, distance)]): facenet_engine.Identification's fields.
using IdentificationRow =
    std::tuple<std::string, double, std::vector<std::pair<std::string, double>>>;

IdentityRow identity_row(const Identity& i) {
  return {i.id, i.name, i.metadata, i.created_at, i.embeddings};
}

GalleryMode parse_mode(const std::string& mode) {
  if (mode == "r") return GalleryMode::kRead;
  if (mode == "w") return GalleryMode::kWrite;
  fail("gallery mode must be 'r' (read) or 'w' (write), got '", mode, "'");
}

void require_threshold(const char* what, double threshold) {
  if (!std::isfinite(threshold) || threshold < 0)
    fail(what, ": threshold must be a finite plain L2 distance >= 0, got ", threshold);
}

void require_dim(const std::string& path, const char* what, int got, int want) {
  if (want != 0 && got != want)
    fail(what, " in gallery '", path, "': probes have ", got, " values, the gallery holds ", want,
         "-dimensional embeddings");
}

class PyGallery {
 public:
  PyGallery(std::string path, GalleryMode mode, Gallery gallery)
      : path_(std::move(path)), mode_(mode), gallery_(std::move(gallery)) {}

  static std::unique_ptr<PyGallery> create(const std::string& path, const std::string& model,
                                           int dim) {
    GalleryOptions options;
    options.spec = {model, dim};
    nb::gil_scoped_release release;
    return std::make_unique<PyGallery>(path, GalleryMode::kWrite, Gallery::create(path, options));
  }

  static std::unique_ptr<PyGallery> open(const std::string& path, const std::string& mode) {
    const GalleryMode m = parse_mode(mode);
    nb::gil_scoped_release release;
    return std::make_unique<PyGallery>(path, m, Gallery::open(path, m));
  }

  const std::string& path() const { return path_; }
  const char* mode() const { return mode_ == GalleryMode::kWrite ? "w" : "r"; }
  // Atomic, not under mu_: a reader holding the GIL must never wait for a long identify.
  bool closed() const { return closed_.load(); }
  void close() {
    nb::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(mu_);
    gallery_.reset();
    closed_ = true;
  }

  // Runs body(gallery) with the GIL released and this connection locked. The GIL goes first,
  // so a thread waiting for the lock never holds it. body must not touch Python objects.
  template <typename F>
  auto with(F&& body) {
    nb::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(mu_);
    if (!gallery_) fail("gallery '", path_, "' is closed");
    return body(*gallery_);
  }

  IdentityRow enroll(const std::string& name, const HostFloats& x, const std::string& model,
                     const std::vector<std::string>& sources, const std::string& metadata) {
    const Rows r =
        rows_of(x, "enroll '" + name + "' into gallery '" + path_ + "': embeddings", 0, true);
    return identity_row(with([&](Gallery& g) {
      return g.enroll(name, {model, r.dim}, r.data, static_cast<size_t>(r.n), sources, metadata);
    }));
  }

  // All or nothing, as `facenet gallery remove`: every name is looked up before any goes.
  std::vector<int64_t> remove_many(const std::vector<std::string>& names) {
    return with([&](Gallery& g) {
      for (const auto& n : names) g.find_identity(n);
      std::vector<int64_t> gone;
      for (const auto& n : names) gone.push_back(g.remove_identity(n));
      return gone;
    });
  }

  std::vector<IdentityRow> identities() {
    const std::vector<Identity> all = with([](Gallery& g) { return g.list_identities(); });
    std::vector<IdentityRow> rows;
    rows.reserve(all.size());
    for (const Identity& i : all) rows.push_back(identity_row(i));
    return rows;
  }

  nb::dict stats() {
    const GalleryStats s = with([](Gallery& g) { return g.stats(); });
    nb::dict d;
    d["gallery"] = path_;
    d["identities"] = s.identities;
    d["embeddings"] = s.embeddings;
    d["model"] = s.spec.model.empty() ? nb::none() : nb::cast(s.spec.model);
    d["dim"] = s.spec.dim;
    d["file_bytes"] = s.file_bytes;
    d["schema_version"] = s.schema_version;
    d["created_at"] = s.created_at;
    return d;
  }

  // Every embedding (or those of `name`) with the name of each row's identity. A gallery
  // without embeddings gives a (0, dim) array where the engine's load_all would fail.
  std::pair<nb::ndarray<nb::numpy, float>, std::vector<std::string>> embeddings(
      const std::optional<std::string>& name, const std::string& model) {
    auto [matrix, names] = with([&](Gallery& g) {
      GalleryMatrix m;
      if (name) {
        m = g.load_identity(*name, model);
      } else {
        const GalleryStats s = g.stats();
        if (s.embeddings == 0) {
          m.spec = s.spec;
          return std::make_pair(std::move(m), std::vector<std::string>{});
        }
        m = g.load_all(model);
      }
      std::vector<std::string> row_names;
      row_names.reserve(m.rows());
      for (int64_t id : m.identity_ids) row_names.push_back(m.name_of(id));
      return std::make_pair(std::move(m), std::move(row_names));
    });
    const size_t rows = matrix.rows(), dim = static_cast<size_t>(matrix.spec.dim);
    return {to_numpy(std::move(matrix.vectors), {rows, dim}), std::move(names)};
  }

  VerificationRow verify(const std::string& name, const HostFloats& probe, double threshold,
                         const std::string& model) {
    if (probe.ndim() != 1)
      fail("verify '", name, "' in gallery '", path_, "': probe has shape ", shape_of(probe),
           ", expected one probe (dim,)");
    require_threshold("verify", threshold);
    const int got = static_cast<int>(probe.shape(0));
    const Verification v = with([&](Gallery& g) {
      // The gallery's dimension is fixed once set, so this read and verify's load agree.
      const EmbeddingSpec have = g.stats().spec;
      require_dim(path_, "verify", got, have.dim);
      return facenet::verify(g, {model, have.dim}, name, probe.data(), threshold);
    });
    return {v.name, v.distance, v.threshold, v.match};
  }

  std::vector<IdentificationRow> identify(const HostFloats& probes, int k, double threshold,
                                          const std::string& device, const std::string& model) {
    const Rows r = rows_of(probes, "identify in gallery '" + path_ + "': probes", 0, true);
    require_threshold("identify", threshold);
    if (k < 1) fail("identify in gallery '", path_, "': k must be >= 1, got ", k);
    Device dev{};
    blame("identify in gallery '" + path_ + "'", [&] { dev = parse_device(device); });
    const std::vector<Identification> found = with([&](Gallery& g) {
      GalleryMatrix m = g.load_all(model);
      require_dim(path_, "identify", r.dim, m.spec.dim);
      Identifier identifier(std::move(m), dev);
      return identifier.identify(r.data, r.n, k, threshold);
    });
    std::vector<IdentificationRow> rows;
    rows.reserve(found.size());
    for (const Identification& f : found) {
      std::vector<std::pair<std::string, double>> top;
      for (const Candidate& c : f.top) top.emplace_back(c.name, c.distance);
      rows.emplace_back(f.best, f.distance, std::move(top));
    }
    return rows;
  }

 private:
  std::string path_;
  GalleryMode mode_;
  std::mutex mu_;  // guards gallery_: one SQLite connection, one thread at a time
  std::optional<Gallery> gallery_;
  std::atomic<bool> closed_{false};  // set with gallery_.reset(), read without mu_
};

std::pair<std::string, int> model_embedding_spec(const std::string& path) {
  nb::gil_scoped_release release;
  const EmbeddingSpec s = embedding_spec(load_model(path));
  return {s.model, s.dim};
}

}  // namespace

void bind_gallery(nb::module_& m) {
  m.def(
      "_identify_storage",
      [](int64_t rows) {
        return std::string(Identifier::auto_storage(rows) == CpuStorage::kBFloat16 ? "bf16"
                                                                                   : "fp32");
      },
      nb::arg("rows"),
      "The CPU storage Gallery.identify's index takes for a gallery of `rows` rows: 'bf16' "
      "(split planes, exact) from 100,000 rows where the CPU runs bf16, else 'fp32'.");
  m.attr("DEFAULT_THRESHOLD") = kDefaultThreshold;
  m.def("model_embedding_spec", &model_embedding_spec, nb::arg("path"),
        "The (embedding spec, dimension) of a model file: what a gallery of its embeddings "
        "records as its model.");

  using G = PyGallery;
  nb::class_<G>(m, "GalleryConnection",
                "One connection to a gallery file (use facenet_engine.Gallery). Calls from "
                "several threads take turns; open one per thread for parallel reads.")
      .def_static("create", &G::create, nb::arg("path"), nb::arg("model") = "", nb::arg("dim") = 0,
                  "Creates a new gallery file (fails when it exists); a model and dim fix its "
                  "embedding spec now, else the first enrolment does.")
      .def_static("open", &G::open, nb::arg("path"), nb::arg("mode") = "r",
                  "Opens an existing gallery, mode 'r' (read) or 'w' (write).")
      .def_prop_ro("path", &G::path, "The gallery file, as given.")
      .def_prop_ro("mode", &G::mode, "'r' or 'w'.")
      .def_prop_ro("closed", &G::closed, "True after close().")
      .def("close", &G::close, "Closes the connection; later calls fail.")
      .def("enroll", &G::enroll, nb::arg("name"), nb::arg("embeddings"), nb::arg("model"),
           nb::arg("sources") = std::vector<std::string>{}, nb::arg("metadata") = "",
           "Enrols (n, dim) or (dim,) float32 embeddings of model `model` under `name` in one "
           "transaction, creating the identity (with JSON object text `metadata`) when new. "
           "Returns the identity row (id, name, metadata, created_at, embeddings).")
      .def(
          "remove",
          [](G& g, const std::string& name) {
            return g.with([&](Gallery& x) { return x.remove_identity(name); });
          },
          nb::arg("name"), "Removes `name` and its embeddings; returns how many embeddings went.")
      .def("remove_many", &G::remove_many, nb::arg("names"),
           "Removes every name, or none when one is unknown; returns the embeddings removed per "
           "name.")
      .def("identities", &G::identities, "Every identity row, ascending id.")
      .def(
          "identity",
          [](G& g, const std::string& name) {
            return identity_row(g.with([&](Gallery& x) { return x.find_identity(name); }));
          },
          nb::arg("name"), "The identity row of `name`; fails naming it when unknown.")
      .def(
          "contains",
          [](G& g, const std::string& name) {
            return g.with([&](Gallery& x) { return x.has_identity(name); });
          },
          nb::arg("name"), "Whether `name` is enrolled.")
      .def("stats", &G::stats,
           "Counts, model, dim, file size, schema version and creation time, as "
           "`facenet gallery stats` prints them.")
      .def("embeddings", &G::embeddings, nb::arg("name") = nb::none(), nb::arg("model") = "",
           "(vectors float32 (N, dim), per-row identity names) of the whole gallery or of "
           "`name`, from one snapshot; a non-empty `model` must be the gallery's.")
      .def("verify", &G::verify, nb::arg("name"), nb::arg("probe"), nb::arg("threshold"),
           nb::arg("model") = "",
           "1:1: (name, min plain L2 distance to the identity's embeddings, threshold, match).")
      .def("identify", &G::identify, nb::arg("probes"), nb::arg("k"), nb::arg("threshold"),
           nb::arg("device") = "cpu", nb::arg("model") = "",
           "1:K over a snapshot of the gallery (index built per call): per probe (best or "
           "'unknown', its distance, the k nearest identities [(name, distance)]).")
      .def(
          "check", [](G& g) { return g.with([](Gallery& x) { return x.quick_check(); }); },
          "SQLite's PRAGMA quick_check: 'ok', or the problems it found.");
}

}  // namespace facenet::python
