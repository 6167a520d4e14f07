// Enrolment, verification and identification; see recognition.h.
#include "engine/search/recognition.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <unordered_map>

#include "engine/backend/cpu/cpu_backend.h"
#include "engine/core/error.h"
#include "engine/core/gpu.h"
#include "engine/pipeline/encode.h"
#include "engine/search/knn.h"
#ifdef FACENET_HAS_DLIB
#include "engine/face/face_align.h"
#include "engine/pipeline/encode_faces.h"
#endif

namespace facenet {

namespace fs = std::filesystem;

std::string EncodedRows::source(size_t row) const {
  return faces[row].is_null() ? files[row].string()
                              : files[row].string() + "#" + faces[row]["face"].dump();
}

#ifdef FACENET_HAS_DLIB
struct Encoder::Faces {
  FaceAligner aligner;
  FaceOptions options;
  Faces(const AlignOptions& a)
      : aligner(a.dlib_models.empty() ? default_dlib_models_dir() : fs::path(a.dlib_models)) {
    options.pick = parse_face_pick(a.pick);
    options.upsample = a.upsample;
    options.jitter = a.jitter;
    options.retry_cnn = a.retry_cnn;
  }
};
#else
struct Encoder::Faces {};
#endif

Encoder::Encoder(const fs::path& model_path, const BackendOptions& options,
                 const AlignOptions& align)
    : model_(load_model(model_path)), backend_(make_backend(model_, options)) {
  if (align.pick == "none") return;
#ifdef FACENET_HAS_DLIB
  model_alignment(model_.graph);  // the model must say how its faces are aligned
  faces_ = std::make_unique<Faces>(align);
#else
  fail("--align ", align.pick, ": this build has no face detection (built without dlib)");
#endif
}

Encoder::~Encoder() = default;

EncodedRows Encoder::encode(const std::vector<fs::path>& files, const SkipReporter& on_skip,
                            int batch) {
  EncodedRows out;
  const int64_t d = dim();
  if (!faces_) {
    EncodeCallbacks cb;
    cb.on_batch = [&](const std::vector<fs::path>& paths, const std::vector<float>& emb) {
      out.files.insert(out.files.end(), paths.begin(), paths.end());
      out.faces.resize(out.files.size());
      out.embeddings.insert(out.embeddings.end(), emb.begin(), emb.begin() + paths.size() * d);
    };
    cb.on_error = on_skip;
    encode_files(*backend_, input_spec(model_.graph), d, files, batch, cb);
    return out;
  }
#ifdef FACENET_HAS_DLIB
  PhotoCallbacks cb;
  cb.on_photo = [&](const PhotoResult& r) {
    if (!r.error.empty()) return on_skip(r.path, r.error);
    if (r.faces.empty()) return on_skip(r.path, "no face found in " + r.path.string());
    for (size_t i = 0; i < r.faces.size(); ++i) {
      const FaceBox& b = r.faces[i].face.box;
      out.files.push_back(r.path);
      out.faces.push_back({{"face", i}, {"box", {b.left, b.top, b.right, b.bottom}}});
      out.embeddings.insert(out.embeddings.end(), r.faces[i].embedding.begin(),
                            r.faces[i].embedding.end());
    }
  };
  encode_photos(*backend_, model_, faces_->aligner, files, faces_->options, batch, cb);
#endif
  return out;
}

nlohmann::json Verification::to_json() const {
  return {{"name", name},
          {"distance", distance},
          {"distance_kind", "l2"},
          {"threshold", threshold},
          {"match", match}};
}

Verification verify(Gallery& gallery, const EmbeddingSpec& spec, const std::string& name,
                    const float* probe, double threshold) {
  const GalleryMatrix m = gallery.load_identity(name, spec.model);
  Verification v;
  v.name = name;
  v.threshold = threshold;
  v.distance = INFINITY;
  for (size_t r = 0; r < m.rows(); ++r) {
    double ss = 0;
    for (int d = 0; d < spec.dim; ++d) {
      const double diff = static_cast<double>(probe[d]) - m.vectors[r * spec.dim + d];
      ss += diff * diff;
    }
    v.distance = std::min(v.distance, std::sqrt(ss));
  }
  v.match = v.distance <= threshold;
  return v;
}

nlohmann::json Identification::to_json(double threshold) const {
  nlohmann::json top_json = nlohmann::json::array();
  for (const auto& c : top) top_json.push_back({{"name", c.name}, {"distance", c.distance}});
  return {{"identity", best},
          {"distance", distance},
          {"distance_kind", "l2"},
          {"threshold", threshold},
          {"top", top_json}};
}

// The index over gallery rows; labels are row numbers.
struct Identifier::Index {
  std::unique_ptr<CpuFlatIndex> cpu;
#ifdef FACENET_HAS_CUDA
  std::unique_ptr<GpuContext> context;
  std::unique_ptr<GpuFlatIndex> gpu;
#endif
  void search(const float* q, int64_t nq, int dim, int k, float* d, int64_t* l) {
#ifdef FACENET_HAS_CUDA
    if (gpu) return gpu->search(q, nq, dim, k, d, l);
#endif
    cpu->search(q, nq, dim, k, d, l);
  }
};

Identifier::Identifier(GalleryMatrix gallery, Device device, std::optional<CpuStorage> storage)
    : gallery_(std::move(gallery)), index_(std::make_unique<Index>()) {
  const int dim = gallery_.spec.dim;
  const int64_t n = static_cast<int64_t>(gallery_.rows());
  if (device == Device::kCuda) {
#ifdef FACENET_HAS_CUDA
    index_->context = std::make_unique<GpuContext>(0);
    index_->gpu = std::make_unique<GpuFlatIndex>(*index_->context, dim, GpuStorage::kFloat32);
    index_->gpu->add(gallery_.vectors.data(), n, dim);
#else
    require_gpu("identify --device cuda");
#endif
  } else {
    if (!storage)
      storage = n >= kAutoBf16Rows && cpu_has_bf16() ? CpuStorage::kBFloat16 : CpuStorage::kFloat32;
    index_->cpu = std::make_unique<CpuFlatIndex>(dim, *storage);
    index_->cpu->add(gallery_.vectors.data(), n, dim);
  }
  std::unordered_map<int64_t, int64_t> per;
  for (int64_t id : gallery_.identity_ids)
    max_per_identity_ = std::max(max_per_identity_, ++per[id]);
}

Identifier::~Identifier() = default;

CpuStorage Identifier::cpu_storage() const {
  return index_->cpu ? index_->cpu->storage() : CpuStorage::kFloat32;
}

std::vector<Identification> Identifier::identify(const float* probes, int64_t n, int k,
                                                 double threshold) {
  if (k < 1) fail("--k must be >= 1 (got ", k, ")");
  const int dim = gallery_.spec.dim;
  const int64_t rows = static_cast<int64_t>(gallery_.rows());
  // The nearest k*m embeddings (m = most embeddings of one identity) always contain the
  // best embedding of each of the k nearest identities.
  const int kk = static_cast<int>(std::min<int64_t>({rows, int64_t{k} * max_per_identity_, 1024}));
  std::vector<float> dist(n * kk);
  std::vector<int64_t> labels(n * kk);
  index_->search(probes, n, dim, kk, dist.data(), labels.data());
  std::vector<Identification> out(n);
  for (int64_t q = 0; q < n; ++q) {
    Identification& r = out[q];
    std::vector<int64_t> seen;
    for (int i = 0; i < kk && static_cast<int>(r.top.size()) < k; ++i) {
      const int64_t row = labels[q * kk + i];
      if (row < 0) break;
      const int64_t id = gallery_.identity_ids[row];
      if (std::find(seen.begin(), seen.end(), id) != seen.end()) continue;
      seen.push_back(id);
      r.top.push_back({gallery_.name_of(id), std::sqrt(std::max(0.0f, dist[q * kk + i]))});
    }
    FN_ASSERT(!r.top.empty());
    r.distance = r.top[0].distance;
    r.best = r.distance <= threshold ? r.top[0].name : "unknown";
  }
  return out;
}

namespace {
std::vector<std::string> sources_of(const EncodedRows& rows) {
  std::vector<std::string> out;
  for (size_t r = 0; r < rows.rows(); ++r) out.push_back(rows.source(r));
  return out;
}
}  // namespace

Identity enroll_images(Gallery& gallery, Encoder& encoder, const std::string& name,
                       const std::vector<fs::path>& files, const SkipReporter& on_skip) {
  const EncodedRows rows = encoder.encode(files, on_skip);
  if (rows.rows() == 0) fail("no usable image to enrol '", name, "'");
  return gallery.enroll(name, encoder.spec(), rows.embeddings.data(), rows.rows(),
                        sources_of(rows));
}

BulkReport enroll_from_dirs(Gallery& gallery, Encoder& encoder, const fs::path& root,
                            const SkipReporter& on_skip,
                            const std::function<void(size_t, size_t)>& on_progress) {
  if (!fs::is_directory(root)) fail("--from-dirs: ", root.string(), " is not a directory");
  std::vector<fs::path> people;
  for (const auto& e : fs::directory_iterator(root))
    if (e.is_directory()) people.push_back(e.path());
  std::sort(people.begin(), people.end());
  if (people.empty())
    fail("--from-dirs: ", root.string(), " has no sub-directory (one per person)");
  BulkReport report;
  BulkEnroller bulk = gallery.bulk_enroller(encoder.spec());
  auto counting_skip = [&](const fs::path& p, const std::string& why) {
    ++report.failed_files;
    if (on_skip) on_skip(p, why);
  };
  for (size_t i = 0; i < people.size(); ++i) {
    const EncodedRows rows = encoder.encode(expand_inputs({people[i].string()}), counting_skip);
    if (rows.rows() == 0) {
      ++report.skipped_people;
      if (on_skip)
        on_skip(people[i], people[i].string() + ": no usable image; person not enrolled");
    } else {
      bulk.add(people[i].filename().string(), rows.embeddings.data(), rows.rows(),
               sources_of(rows));
    }
    if (on_progress) on_progress(i + 1, people.size());
  }
  const BulkProgress done = bulk.finish();
  report.people = done.identities;
  report.embeddings = done.embeddings;
  return report;
}

}  // namespace facenet
