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
#include "engine/search/knn.h"

namespace facenet {

EmbeddingSpec embedding_spec(const Model& model) {
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx",
                static_cast<unsigned long long>(model_fingerprint(model)));
  EmbeddingSpec s;
  s.model = model.graph.name + "/" + model.graph.variant + "#" + hex;
  s.dim = static_cast<int>(model.embedding_dim());
  return s;
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
  std::unique_ptr<GpuContext> own_context;  // when no context was given
  std::unique_ptr<GpuFlatIndex> gpu;
#endif
  void search(const float* q, int64_t nq, int dim, int k, float* d, int64_t* l) {
#ifdef FACENET_HAS_CUDA
    if (gpu) return gpu->search(q, nq, dim, k, d, l);
#endif
    cpu->search(q, nq, dim, k, d, l);
  }
};

Identifier::Identifier(GalleryMatrix gallery, Device device, std::optional<CpuStorage> storage,
                       [[maybe_unused]] GpuContext* context)
    : gallery_(std::move(gallery)), index_(std::make_unique<Index>()) {
  const int dim = gallery_.spec.dim;
  const int64_t n = static_cast<int64_t>(gallery_.rows());
  if (device == Device::kCuda) {
#ifdef FACENET_HAS_CUDA
    if (!context) context = (index_->own_context = std::make_unique<GpuContext>(0)).get();
    index_->gpu = std::make_unique<GpuFlatIndex>(*context, dim, GpuStorage::kFloat32);
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
  gallery_.vectors = {};  // the index holds them now: one copy of the gallery, not two
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

}  // namespace facenet
