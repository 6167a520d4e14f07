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
  GpuContext* context = nullptr;
  std::unique_ptr<GpuFlatIndex> gpu;
  DeviceBuffer<float> probes, dist;  // identify_device's gathered probes and results
  DeviceBuffer<int64_t> labels;
#endif
  void search(const float* q, int64_t nq, int dim, int k, float* d, int64_t* l) {
#ifdef FACENET_HAS_CUDA
    if (gpu) return gpu->search(q, nq, dim, k, d, l);
#endif
    cpu->search(q, nq, dim, k, d, l);
  }
};

CpuStorage Identifier::auto_storage(int64_t rows) {
  return rows >= kAutoBf16Rows && cpu_has_bf16() ? CpuStorage::kBFloat16 : CpuStorage::kFloat32;
}

Identifier::Identifier(GalleryMatrix gallery, Device device, std::optional<CpuStorage> storage,
                       [[maybe_unused]] GpuContext* context)
    : gallery_(std::move(gallery)), index_(std::make_unique<Index>()) {
  const int dim = gallery_.spec.dim;
  const int64_t n = static_cast<int64_t>(gallery_.rows());
  bool borrowed = false;
  if (device == Device::kCuda) {
#ifdef FACENET_HAS_CUDA
    if (!context) context = (index_->own_context = std::make_unique<GpuContext>(0)).get();
    index_->context = context;
    index_->gpu = std::make_unique<GpuFlatIndex>(*context, dim, GpuStorage::kFloat32);
    index_->gpu->add(gallery_.row_data(), n, dim);
#else
    require_gpu("identify --device cuda");
#endif
  } else if (gallery_.mapped_rows && !storage) {
    // A mapped snapshot: searched where it is (fp32), rather than copied into bf16 planes,
    // which at 1e6 rows costs more than the search saves for one call.
    index_->cpu = std::make_unique<CpuFlatIndex>(
        CpuFlatIndex::borrow(gallery_.mapped_rows, n, dim, gallery_.mapped_norms));
    borrowed = true;
  } else {
    if (!storage) storage = auto_storage(n);
    index_->cpu = std::make_unique<CpuFlatIndex>(dim, *storage);
    index_->cpu->add(gallery_.row_data(), n, dim);
  }
  gallery_.vectors = {};  // the index holds them now: one copy of the gallery, not two
  if (!borrowed) {
    gallery_.mapped_rows = nullptr;  // the index made its copy: the mapping can go
    gallery_.mapped_norms = nullptr;
    gallery_.mapping.reset();
  }
  // The identities' own counts when they account for every row (load_all, snapshots), else
  // counted from the labels.
  int64_t counted = 0;
  for (const Identity& who : gallery_.identities) {
    counted += who.embeddings;
    max_per_identity_ = std::max(max_per_identity_, who.embeddings);
  }
  if (counted != n) {
    max_per_identity_ = 1;
    std::unordered_map<int64_t, int64_t> per;
    for (int64_t id : gallery_.identity_ids)
      max_per_identity_ = std::max(max_per_identity_, ++per[id]);
  }
}

Identifier::~Identifier() = default;

CpuStorage Identifier::cpu_storage() const {
  return index_->cpu ? index_->cpu->storage() : CpuStorage::kFloat32;
}

int Identifier::candidates(int k) const {
  if (k < 1) fail("--k must be >= 1 (got ", k, ")");
  const int64_t rows = static_cast<int64_t>(gallery_.rows());
  if (rows == 0) fail("identify: the gallery holds no embeddings of model ", gallery_.spec.model);
  // The nearest k*m embeddings (m = most embeddings of one identity) always contain the
  // best embedding of each of the k nearest identities.
  return static_cast<int>(std::min<int64_t>({rows, int64_t{k} * max_per_identity_, 1024}));
}

std::vector<Identification> Identifier::identify(const float* probes, int64_t n, int k,
                                                 double threshold) {
  const int kk = candidates(k);
  std::vector<float> dist(n * kk);
  std::vector<int64_t> labels(n * kk);
  index_->search(probes, n, gallery_.spec.dim, kk, dist.data(), labels.data());
  return merge(dist, labels, n, kk, k, threshold);
}

std::vector<Identification> Identifier::identify_device(const float* rows,
                                                        const std::vector<int64_t>& pick, int k,
                                                        double threshold) {
#ifdef FACENET_HAS_CUDA
  if (!index_->gpu) fail("identify_device: the gallery index is not on a GPU");
  const int kk = candidates(k);
  const int dim = gallery_.spec.dim;
  const int64_t n = static_cast<int64_t>(pick.size());
  if (n == 0) return {};
  Index& x = *index_;
  cudaStream_t stream = x.context->stream();
  if (x.probes.size() < static_cast<size_t>(n * dim)) x.probes.resize(n * dim);
  if (x.dist.size() < static_cast<size_t>(n * kk)) {
    x.dist.resize(n * kk);
    x.labels.resize(n * kk);
  }
  for (int64_t i = 0; i < n; ++i)  // device to device: the probes never leave the GPU
    FN_GPU_CHECK(cudaMemcpyAsync(x.probes.data() + i * dim, rows + pick[i] * dim,
                                 dim * sizeof(float), cudaMemcpyDeviceToDevice, stream));
  x.gpu->search_device(x.probes.data(), n, kk, x.dist.data(), x.labels.data());
  std::vector<float> dist(n * kk);
  std::vector<int64_t> labels(n * kk);
  x.dist.download(dist.data(), dist.size(), stream);
  x.labels.download(labels.data(), labels.size(), stream);
  x.context->synchronize();
  return merge(dist, labels, n, kk, k, threshold);
#else
  (void)rows, (void)pick, (void)k, (void)threshold;
  fail("identify_device: this build has no CUDA");
#endif
}

bool Identifier::on_gpu() const {
#ifdef FACENET_HAS_CUDA
  return index_->gpu != nullptr;
#else
  return false;
#endif
}

std::vector<Identification> Identifier::merge(const std::vector<float>& dist,
                                              const std::vector<int64_t>& labels, int64_t n, int kk,
                                              int k, double threshold) const {
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
