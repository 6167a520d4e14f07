// Recognition on top of the encoder, the gallery and the k-NN index: one-shot enrolment,
// 1:1 verification and 1:K identification. Distances reported here are plain L2 (not
// squared) between L2-normalised embeddings.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "engine/backend/backend.h"
#include "engine/image/image_io.h"
#include "engine/model/embedding_spec.h"
#include "engine/model/model.h"
#include "engine/search/gallery.h"
#include "engine/search/knn.h"

namespace facenet {

// The tutorial's threshold on plain L2 distance.
constexpr double kDefaultThreshold = 0.7;

// How the encoder's inputs are taken: as aligned face crops (none), or as raw photos whose
// faces are detected and aligned the way the model file says (largest face / every face).
struct AlignOptions {
  std::string pick = "none";  // none | largest | all
  std::string dlib_models;    // folder of dlib's landmark models; empty: the default
  int upsample = 0;           // detector upsampling
  bool retry_cnn = false;     // no HOG face: retry with dlib's CNN detector
  int jitter = 0;             // > 0: average this many jittered copies of each face (dlib's)
};

// Rows of embeddings with where each came from.
struct EncodedRows {
  std::vector<float> embeddings;             // rows x dim
  std::vector<std::filesystem::path> files;  // per row
  std::vector<nlohmann::json> faces;         // per row: null for crops, {"face", "box"} else
  size_t rows() const { return files.size(); }
  std::string source(size_t row) const;  // "path" or "path#face"
};

using SkipReporter = std::function<void(const std::filesystem::path&, const std::string&)>;

// An encoder ready to use: the model, its backend, its input rule, optionally face alignment.
class Encoder {
 public:
  Encoder(const std::filesystem::path& model_path, const BackendOptions& options,
          const AlignOptions& align = {});
  ~Encoder();
  const Model& model() const { return model_; }
  EmbeddingSpec spec() const { return embedding_spec(model_); }
  int64_t dim() const { return model_.embedding_dim(); }
  // Encodes files in batches; an unreadable file, or a photo without a face, goes to
  // `on_skip` and yields no row.
  EncodedRows encode(const std::vector<std::filesystem::path>& files, const SkipReporter& on_skip,
                     int batch = 64);

 private:
  struct Faces;
  Model model_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Faces> faces_;  // null without alignment
};

struct Verification {
  std::string name;
  double distance = 0;  // min plain L2 over the identity's embeddings
  double threshold = kDefaultThreshold;
  bool match = false;
  nlohmann::json to_json() const;
};

// 1:1: is `probe` (dim floats) the person `name` of the gallery?
Verification verify(Gallery& gallery, const EmbeddingSpec& spec, const std::string& name,
                    const float* probe, double threshold);

struct Candidate {
  std::string name;
  double distance = 0;  // plain L2 to the identity's nearest embedding
};

struct Identification {
  std::string best;  // best identity, or "unknown" when its distance exceeds the threshold
  double distance = 0;
  std::vector<Candidate> top;  // top-k identities, nearest first, one entry per identity
  nlohmann::json to_json(double threshold) const;
};

// 1:K over a loaded gallery: the k-NN index is built once, probes are searched as one batch.
class Identifier {
 public:
  // On the CPU the gallery is stored as `storage` says; without one, as split bf16 from
  // kAutoBf16Rows rows up where the CPU runs bf16 (results exact either way, knn.h: half the
  // bytes per scan, 2-3x the queries/s at 1e5-1e6 rows), else fp32.
  Identifier(GalleryMatrix gallery, Device device,
             std::optional<CpuStorage> storage = std::nullopt);
  static constexpr int64_t kAutoBf16Rows = 100000;
  ~Identifier();
  // probes: n x dim. k: identities per probe in `top`.
  std::vector<Identification> identify(const float* probes, int64_t n, int k, double threshold);
  size_t rows() const { return gallery_.rows(); }
  // The CPU index's storage (fp32 on the GPU path).
  CpuStorage cpu_storage() const;

 private:
  struct Index;
  GalleryMatrix gallery_;
  std::unique_ptr<Index> index_;
  int64_t max_per_identity_ = 1;
};

// Enrols `name` from image files in one transaction. Returns the identity.
Identity enroll_images(Gallery& gallery, Encoder& encoder, const std::string& name,
                       const std::vector<std::filesystem::path>& files,
                       const SkipReporter& on_skip);

struct BulkReport {
  int64_t people = 0, embeddings = 0, failed_files = 0, skipped_people = 0;
};

// Bulk enrolment from a folder per person (`root/<name>/*.jpg`), committed in batches: a
// crash loses at most the last uncommitted batch. `on_progress(done_people, total_people)`.
BulkReport enroll_from_dirs(Gallery& gallery, Encoder& encoder, const std::filesystem::path& root,
                            const SkipReporter& on_skip,
                            const std::function<void(size_t, size_t)>& on_progress);

}  // namespace facenet
