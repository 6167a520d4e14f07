// Recognition on top of the encoder, the gallery and the k-NN index: one-shot enrolment,
// 1:1 verification and 1:K identification. Distances reported here are plain L2 (not
// squared) between L2-normalised embeddings.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "engine/backend/backend.h"
#include "engine/model/embedding_spec.h"
#include "engine/model/model.h"
#include "engine/search/gallery.h"
#include "engine/search/knn.h"

namespace facenet {

// The tutorial's threshold on plain L2 distance.
constexpr double kDefaultThreshold = 0.7;

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
  // On CUDA the index lives on `context` when one is given (a backend's, so that searches
  // share its stream), else on a context of its own on device 0.
  Identifier(GalleryMatrix gallery, Device device, std::optional<CpuStorage> storage = std::nullopt,
             GpuContext* context = nullptr);
  static constexpr int64_t kAutoBf16Rows = 100000;
  // The CPU storage chosen for a gallery of `rows` rows when none is given.
  static CpuStorage auto_storage(int64_t rows);
  ~Identifier();
  // probes: n x dim. k: identities per probe in `top`. Throws when the gallery is empty.
  std::vector<Identification> identify(const float* probes, int64_t n, int k, double threshold);
  // GPU index only: the probes are rows pick[i] of `rows` (n x dim float32 in device memory,
  // e.g. a staged encoder's device_output) and are searched where they are, after the work
  // already queued on the index's stream.
  std::vector<Identification> identify_device(const float* rows, const std::vector<int64_t>& pick,
                                              int k, double threshold);
  bool on_gpu() const;
  size_t rows() const { return gallery_.rows(); }
  // The CPU index's storage (fp32 on the GPU path).
  CpuStorage cpu_storage() const;

 private:
  int candidates(int k) const;  // embeddings to fetch for k identities
  std::vector<Identification> merge(const std::vector<float>& dist,
                                    const std::vector<int64_t>& labels, int64_t n, int kk, int k,
                                    double threshold) const;
  struct Index;
  GalleryMatrix gallery_;
  std::unique_ptr<Index> index_;
  int64_t max_per_identity_ = 1;
};

}  // namespace facenet
