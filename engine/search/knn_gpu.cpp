// Exact L2 k-NN, the GPU flat index host class: the device gallery (add, remove, growth) and the
// fused-kernel and cuBLAS GEMM searches (CUDA builds only).
#include "engine/search/knn.h"

#include <algorithm>
#include <type_traits>
#include <vector>

#include "engine/core/error.h"
#include "engine/search/knn_common.h"
#include "kernels/knn.h"

namespace facenet {

using namespace knn_detail;  // the private argument checks of knn_common.h

GpuStorage parse_gpu_storage(const std::string& name) {
  if (name == "fp32") return GpuStorage::kFloat32;
  if (name == "fp16") return GpuStorage::kFloat16;
  fail("GPU gallery storage '", name, "': expected fp32 or fp16");
}

const char* to_string(GpuStorage storage) {
  return storage == GpuStorage::kFloat16 ? "fp16" : "fp32";
}

namespace {

constexpr int64_t kAddChunkRows = 1 << 16;            // rows staged per upload in add()
constexpr int64_t kFusedQueryBatch = 4096;            // queries per fused launch
constexpr int64_t kGemmQueryBatch = 1024;             // queries per GEMM batch
constexpr size_t kGemmTileBytes = size_t{512} << 20;  // inner-product tile in the workspace
constexpr size_t kPartialBytes = size_t{256} << 20;   // fused per-split top-k lists
constexpr int64_t kMergeKeysPerQuery = 1 << 18;       // fused: splits * k cap per query
constexpr int64_t kFusedMaxQueries = 64;              // auto: fused up to here, GEMM above
constexpr int kFusedMaxDim = 2048;                    // auto: wider embeddings take GEMM

size_t align_up(size_t bytes) {
  return (bytes + 255) / 256 * 256;
}

// Carves consecutive, aligned slices out of one workspace allocation (or just sums sizes when
// base is null).
class Carver {
 public:
  explicit Carver(void* base) : base_(static_cast<unsigned char*>(base)) {}
  template <typename T>
  T* take(size_t count) {
    T* p = base_ ? reinterpret_cast<T*>(base_ + used_) : nullptr;
    used_ += align_up(count * sizeof(T));
    return p;
  }
  size_t used() const { return used_; }

 private:
  unsigned char* base_;
  size_t used_ = 0;
};

struct FusedPlan {
  int64_t batch;  // queries per launch
  int splits;     // gallery splits per query tile
};

FusedPlan fused_plan(int64_t nq, int64_t n, int k, int sm_count) {
  FusedPlan plan{std::min(nq, kFusedQueryBatch), 1};
  const int qt = knn_fused_queries_per_block(plan.batch, k);
  const int64_t query_tiles = (plan.batch + qt - 1) / qt;
  const int64_t want = (4 * int64_t{sm_count} + query_tiles - 1) / query_tiles;
  const int64_t by_rows = std::max<int64_t>(1, n / 1024);  // at least ~1024 rows per split
  const int64_t by_merge = std::max<int64_t>(1, kMergeKeysPerQuery / k);  // merge stays short
  const int64_t by_bytes =
      std::max<int64_t>(1, kPartialBytes / (plan.batch * k * sizeof(uint64_t)));
  plan.splits = static_cast<int>(
      std::clamp<int64_t>(want, 1, std::min({by_rows, by_merge, by_bytes, int64_t{65535}})));
  return plan;
}

struct GemmPlan {
  int64_t batch;  // queries per batch
  int64_t rows;   // gallery rows per GEMM tile
};

GemmPlan gemm_plan(int64_t nq, int64_t n) {
  const int64_t batch = std::min(nq, kGemmQueryBatch);
  const int64_t rows =
      std::clamp<int64_t>(kGemmTileBytes / (sizeof(float) * batch), 1, std::max<int64_t>(n, 1));
  return {batch, rows};
}

}  // namespace

GpuFlatIndex::GpuFlatIndex(GpuContext& context, int dim, GpuStorage storage)
    : context_(context), dim_(dim), storage_(storage) {
  if (dim < 8 || dim % 8 != 0) fail("GpuFlatIndex: dim = ", dim, " must be a multiple of 8");
  FN_GPU_CHECK(
      cudaDeviceGetAttribute(&sm_count_, cudaDevAttrMultiProcessorCount, context_.device()));
}

void* GpuFlatIndex::gallery() {
  return storage_ == GpuStorage::kFloat16 ? static_cast<void*>(vectors_f16_.data())
                                          : static_cast<void*>(vectors_f32_.data());
}

std::size_t GpuFlatIndex::gallery_bytes() const {
  return vectors_f32_.bytes() + vectors_f16_.bytes() + norms_.bytes() + ids_.bytes();
}

void GpuFlatIndex::reserve(int64_t capacity) {
  if (capacity > capacity_) grow_to(capacity);
}

// New buffers of the larger capacity, device-to-device copy of the live rows, old ones freed.
void GpuFlatIndex::grow_to(int64_t capacity) {
  const cudaStream_t stream = context_.stream();
  const size_t live = static_cast<size_t>(size());
  auto grow = [&](auto& buffer, size_t per_row) {
    std::remove_reference_t<decltype(buffer)> bigger(static_cast<size_t>(capacity) * per_row);
    if (live > 0)
      FN_GPU_CHECK(cudaMemcpyAsync(bigger.data(), buffer.data(),
                                   live * per_row * sizeof(*buffer.data()),
                                   cudaMemcpyDeviceToDevice, stream));
    context_.synchronize();
    buffer = std::move(bigger);
  };
  if (storage_ == GpuStorage::kFloat16)
    grow(vectors_f16_, dim_);
  else
    grow(vectors_f32_, dim_);
  grow(norms_, 1);
  grow(ids_, 1);
  capacity_ = capacity;
}

void GpuFlatIndex::add(const float* vectors, int64_t n, int dim, const int64_t* ids) {
  if (n < 0) fail("GpuFlatIndex::add: n = ", n, " must be >= 0");
  check_dim(dim, dim_, "GpuFlatIndex::add");
  check_finite(vectors, n, dim, "GpuFlatIndex::add");
  if (size() + n > 0xffffffffll) fail("GpuFlatIndex::add: more than 2^32 - 1 vectors");
  if (n == 0) return;
  const int64_t base = size();
  if (base + n > capacity_) grow_to(std::max(base + n, 2 * capacity_));
  slots_.append(ids, n, "GpuFlatIndex::add");
  const cudaStream_t stream = context_.stream();
  const DType dtype = storage_;
  const size_t elem = storage_ == GpuStorage::kFloat16 ? sizeof(__half) : sizeof(float);
  DeviceBuffer<float> staging(static_cast<size_t>(std::min(n, kAddChunkRows) * dim_));
  for (int64_t r0 = 0; r0 < n; r0 += kAddChunkRows) {
    const int64_t rows = std::min(kAddChunkRows, n - r0);
    staging.upload(vectors + r0 * dim_, static_cast<size_t>(rows * dim_), stream);
    void* dst = static_cast<unsigned char*>(gallery()) + (base + r0) * dim_ * elem;
    knn_store_rows(staging.data(), rows, dim_, dtype, dst, norms_.data() + base + r0, stream);
    context_.synchronize();  // the staging buffer is reused by the next chunk
  }
  FN_GPU_CHECK(cudaMemcpyAsync(ids_.data() + base, slots_.ids() + base, n * sizeof(int64_t),
                               cudaMemcpyHostToDevice, stream));
  context_.synchronize();
}

int64_t GpuFlatIndex::remove(const int64_t* ids, int64_t n) {
  if (n > 0 && !ids) fail("GpuFlatIndex::remove: null ids for ", n, " ids");
  const SlotMap::Moves moves = slots_.remove(ids, n);
  const int64_t m = static_cast<int64_t>(moves.dst.size());
  if (m > 0) {
    std::vector<int64_t> plan(moves.dst);
    plan.insert(plan.end(), moves.src.begin(), moves.src.end());
    if (moves_.size() < plan.size()) moves_.resize(plan.size());
    moves_.upload(plan.data(), plan.size(), context_.stream());
    knn_move_rows(moves_.data(), m, dim_, storage_, gallery(), norms_.data(), ids_.data(),
                  context_.stream());
    context_.synchronize();
  }
  return moves.removed;
}

KnnAlgorithm GpuFlatIndex::choose(int64_t nq, int /*k*/) const {
  // The fused kernel keeps its queries in shared memory (up to 8 x dim floats a block):
  // very wide embeddings go through the GEMM path instead.
  return nq <= kFusedMaxQueries && dim_ <= kFusedMaxDim ? KnnAlgorithm::kFused
                                                        : KnnAlgorithm::kGemm;
}

// Workspace: final keys [nq][k], then per path: fused per-split lists, or the GEMM tile, query
// norms and (fp16) half-precision queries.
std::size_t GpuFlatIndex::workspace_bytes(int64_t nq, int k, KnnAlgorithm algorithm) const {
  Carver carver(nullptr);
  carver.take<uint64_t>(nq * k);
  if (algorithm == KnnAlgorithm::kFused) {
    const FusedPlan plan = fused_plan(nq, size(), k, sm_count_);
    if (plan.splits > 1) carver.take<uint64_t>(plan.splits * plan.batch * k);
  } else {
    const GemmPlan plan = gemm_plan(nq, size());
    carver.take<float>(plan.batch * plan.rows);
    carver.take<float>(plan.batch);
    carver.take<__half>(plan.batch * dim_);
  }
  return carver.used();
}

void GpuFlatIndex::prepare_search(int64_t nq, int k, KnnAlgorithm algorithm) {
  if (algorithm == KnnAlgorithm::kAuto) algorithm = choose(nq, k);
  context_.reserve(workspace_bytes(nq, k, algorithm));
}

void GpuFlatIndex::search(const float* queries, int64_t nq, int dim, int k, float* distances,
                          int64_t* labels, KnnAlgorithm algorithm) {
  check_search_args(nq, k, kKnnMaxK, distances, labels);
  check_dim(dim, dim_, "GpuFlatIndex::search");
  check_finite(queries, nq, dim, "GpuFlatIndex::search");
  if (nq == 0) return;
  if (size() == 0) return fill_empty(nq * k, distances, labels);
  DeviceBuffer<float> d_queries(static_cast<size_t>(nq * dim_));
  DeviceBuffer<float> d_distances(static_cast<size_t>(nq * k));
  DeviceBuffer<int64_t> d_labels(static_cast<size_t>(nq * k));
  d_queries.upload(queries, d_queries.size(), context_.stream());
  search_device(d_queries.data(), nq, k, d_distances.data(), d_labels.data(), algorithm);
  d_distances.download(distances, d_distances.size(), context_.stream());
  d_labels.download(labels, d_labels.size(), context_.stream());
  context_.synchronize();
}

void GpuFlatIndex::search_device(const float* queries, int64_t nq, int k, float* distances,
                                 int64_t* labels, KnnAlgorithm algorithm) {
  check_search_args(nq, k, kKnnMaxK, distances, labels);
  if (nq == 0 || size() == 0) fail("GpuFlatIndex::search_device: empty queries or gallery");
  if (algorithm == KnnAlgorithm::kAuto) algorithm = choose(nq, k);
  prepare_search(nq, k, algorithm);
  uint64_t* keys = static_cast<uint64_t*>(context_.workspace(workspace_bytes(nq, k, algorithm)));
  if (algorithm == KnnAlgorithm::kFused)
    search_fused(queries, nq, k, keys);
  else
    search_gemm(queries, nq, k, keys);
  knn_keys_to_results(keys, nq * k, ids_.data(), distances, labels, context_.stream());
}

void GpuFlatIndex::search_fused(const float* queries, int64_t nq, int k, uint64_t* keys) {
  const FusedPlan plan = fused_plan(nq, size(), k, sm_count_);
  Carver carver(keys);
  carver.take<uint64_t>(nq * k);
  uint64_t* partial =
      plan.splits > 1 ? carver.take<uint64_t>(plan.splits * plan.batch * k) : nullptr;
  const cudaStream_t stream = context_.stream();
  for (int64_t q0 = 0; q0 < nq; q0 += plan.batch) {
    const int64_t qb = std::min(plan.batch, nq - q0);
    uint64_t* out = keys + q0 * k;
    knn_fused_partial(queries + q0 * dim_, qb, gallery(), storage_, norms_.data(), size(), dim_, k,
                      plan.splits, plan.splits > 1 ? partial : out, stream);
    if (plan.splits > 1) knn_merge_partial(partial, plan.splits, qb, k, out, stream);
  }
}

// Per query batch: queries to the storage type with their norms, then for each gallery tile an
// inner-product GEMM (C = G_tile^T Q, column-major rows x batch, i.e. query-major rows) and a
// selection pass that merges the tile into the running top-k.
void GpuFlatIndex::search_gemm(const float* queries, int64_t nq, int k, uint64_t* keys) {
  const GemmPlan plan = gemm_plan(nq, size());
  Carver carver(keys);
  carver.take<uint64_t>(nq * k);
  float* ip = carver.take<float>(plan.batch * plan.rows);
  float* query_norms = carver.take<float>(plan.batch);
  __half* queries_f16 = carver.take<__half>(plan.batch * dim_);
  const cudaStream_t stream = context_.stream();
  const cublasHandle_t cublas = context_.cublas();
  const float one = 1.f, zero = 0.f;
  const bool f16 = storage_ == GpuStorage::kFloat16;
  for (int64_t q0 = 0; q0 < nq; q0 += plan.batch) {
    const int64_t qb = std::min(plan.batch, nq - q0);
    const float* q = queries + q0 * dim_;
    uint64_t* running = keys + q0 * k;
    knn_store_rows(q, qb, dim_, storage_, f16 ? static_cast<void*>(queries_f16) : nullptr,
                   query_norms, stream);
    FN_GPU_CHECK(cudaMemsetAsync(running, 0xFF, qb * k * sizeof(uint64_t), stream));
    for (int64_t row0 = 0; row0 < size(); row0 += plan.rows) {
      const int rows = static_cast<int>(std::min(plan.rows, size() - row0));
      if (f16)
        FN_GPU_CHECK(cublasGemmEx(cublas, CUBLAS_OP_T, CUBLAS_OP_N, rows, static_cast<int>(qb),
                                  dim_, &one, vectors_f16_.data() + row0 * dim_, CUDA_R_16F, dim_,
                                  queries_f16, CUDA_R_16F, dim_, &zero, ip, CUDA_R_32F, rows,
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      else
        FN_GPU_CHECK(cublasSgemm(cublas, CUBLAS_OP_T, CUBLAS_OP_N, rows, static_cast<int>(qb), dim_,
                                 &one, vectors_f32_.data() + row0 * dim_, dim_, q, dim_, &zero, ip,
                                 rows));
      knn_select_tile(ip, query_norms, norms_.data(), qb, rows, row0, k, running, stream);
    }
  }
}

}  // namespace facenet
