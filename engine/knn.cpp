// Exact L2 k-NN: CPU flat index (fused scan, OpenBLAS GEMM tiles) and the GPU index host class.
#include "engine/knn.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "engine/blas.h"
#include "engine/error.h"

#ifdef FACENET_HAS_CUDA
#include "kernels/knn.h"
#endif

namespace facenet {

KnnAlgorithm parse_knn_algorithm(const std::string& name) {
  if (name == "auto") return KnnAlgorithm::kAuto;
  if (name == "fused") return KnnAlgorithm::kFused;
  if (name == "gemm") return KnnAlgorithm::kGemm;
  fail("k-NN algorithm '", name, "': expected auto, fused or gemm");
}

const char* to_string(KnnAlgorithm algorithm) {
  switch (algorithm) {
    case KnnAlgorithm::kFused:
      return "fused";
    case KnnAlgorithm::kGemm:
      return "gemm";
    default:
      return "auto";
  }
}

// ---- Slots ---------------------------------------------------------------------------------

void SlotMap::append(const int64_t* ids, int64_t n, const char* what) {
  const int64_t base = size();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t id = ids ? ids[i] : base + i;
    if (!slot_.emplace(id, base + i).second) {
      for (int64_t j = 0; j < i; ++j) slot_.erase(ids ? ids[j] : base + j);
      fail(what, ": ids[", i, "] = ", id, " is already in the index (or repeated)");
    }
  }
  ids_.reserve(base + n);
  for (int64_t i = 0; i < n; ++i) ids_.push_back(ids ? ids[i] : base + i);
}

SlotMap::Moves SlotMap::remove(const int64_t* ids, int64_t n) {
  // Swap-with-last, one id at a time; `origin` tracks which original slot's data each moved-into
  // slot holds, so chains (the last slot was itself filled by a move) collapse into one move.
  std::unordered_map<int64_t, int64_t> origin;
  Moves moves;
  for (int64_t i = 0; i < n; ++i) {
    auto it = slot_.find(ids[i]);
    if (it == slot_.end()) continue;
    const int64_t slot = it->second, last = size() - 1;
    slot_.erase(it);
    auto from = origin.find(last);
    const int64_t source = from != origin.end() ? from->second : last;
    if (from != origin.end()) origin.erase(from);
    if (slot != last) {
      ids_[slot] = ids_[last];
      slot_[ids_[slot]] = slot;
      origin[slot] = source;
    }
    ids_.pop_back();
    ++moves.removed;
  }
  for (const auto& [dst, src] : origin) {
    moves.dst.push_back(dst);
    moves.src.push_back(src);
  }
  return moves;
}

// ---- Validation shared by both indexes -------------------------------------------------------

namespace {

void check_dim(int dim, int expected, const char* what) {
  if (dim != expected)
    fail(what, ": vectors have dimension ", dim, ", the index expects ", expected);
}

void check_finite(const float* x, int64_t n, int dim, const char* what) {
  if (n > 0 && !x) fail(what, ": null vector pointer for ", n, " vectors");
  for (int64_t i = 0; i < n * dim; ++i)
    if (!std::isfinite(x[i]))
      fail(what, ": vector ", i / dim, " component ", i % dim, " is ", x[i], " (must be finite)");
}

void check_search_args(int64_t nq, int k, int max_k, const float* distances,
                       const int64_t* labels) {
  if (nq < 0) fail("search: nq = ", nq, " must be >= 0");
  if (k < 1 || k > max_k) fail("search: k = ", k, " must be in [1, ", max_k, "]");
  if (nq > 0 && (!distances || !labels)) fail("search: null distances or labels output");
}

void fill_empty(int64_t count, float* distances, int64_t* labels) {
  std::fill(distances, distances + count, std::numeric_limits<float>::infinity());
  std::fill(labels, labels + count, int64_t{-1});
}

// ---- CPU selection ---------------------------------------------------------------------------

// A candidate: squared distance and gallery slot, ordered by (distance, slot).
struct Neighbor {
  float dist;
  int64_t slot;
  bool operator<(const Neighbor& o) const {
    return dist < o.dist || (dist == o.dist && slot < o.slot);
  }
};

// The k best candidates of one query as a max-heap, seeded with k sentinels (+inf, max slot)
// so that a short gallery pads the result for free.
class TopK {
 public:
  explicit TopK(int k)
      : heap_(k, Neighbor{std::numeric_limits<float>::infinity(),
                          std::numeric_limits<int64_t>::max()}) {}
  float bound() const { return heap_[0].dist; }
  void push(float dist, int64_t slot) {
    const Neighbor c{dist, slot};
    if (c < heap_[0]) replace_top(c);
  }
  void merge(const TopK& other) {
    for (const Neighbor& c : other.heap_)
      if (c < heap_[0]) replace_top(c);
  }
  // Ascending results; sentinels become label -1, +inf.
  void write(const SlotMap& slots, float* distances, int64_t* labels) {
    std::sort(heap_.begin(), heap_.end());
    for (size_t i = 0; i < heap_.size(); ++i) {
      const bool real = heap_[i].slot != std::numeric_limits<int64_t>::max();
      distances[i] = heap_[i].dist;
      labels[i] = real ? slots.id_at(heap_[i].slot) : -1;
    }
  }

 private:
  void replace_top(const Neighbor& c) {
    const size_t n = heap_.size();
    size_t i = 0;
    for (;;) {
      size_t child = 2 * i + 1;
      if (child >= n) break;
      if (child + 1 < n && heap_[child] < heap_[child + 1]) ++child;
      if (!(c < heap_[child])) break;
      heap_[i] = heap_[child];
      i = child;
    }
    heap_[i] = c;
  }
  std::vector<Neighbor> heap_;
};

// Dot product with 16 independent partial sums (one AVX-512 register when vectorised) and a
// fixed-order tree reduction, so results do not depend on the compiler's choices.
inline float dot(const float* a, const float* b, int dim) {
  constexpr int kLanes = 16;
  float part[kLanes] = {};
  int d = 0;
  for (; d + kLanes <= dim; d += kLanes)
    for (int l = 0; l < kLanes; ++l) part[l] += a[d + l] * b[d + l];
  for (int l = 0; d < dim; ++d, ++l) part[l] += a[d] * b[d];
  for (int width = kLanes / 2; width > 0; width /= 2)
    for (int l = 0; l < width; ++l) part[l] += part[l + width];
  return part[0];
}

inline float squared_norm(const float* a, int dim) {
  return dot(a, a, dim);
}

// d = max(0, qn + gn - 2 ip) for a run of slots, then offers the ones below the heap bound.
// The bound test is done 16 at a time first: most runs of candidates are all rejected.
inline void offer_run(TopK& top, float qn, const float* gn, const float* ip, int64_t count,
                      int64_t slot0) {
  constexpr int kChunk = 16;
  float d[kChunk];
  for (int64_t j0 = 0; j0 < count; j0 += kChunk) {
    const int m = static_cast<int>(std::min<int64_t>(kChunk, count - j0));
    const float bound = top.bound();
    bool any = false;
    for (int l = 0; l < m; ++l) {
      d[l] = std::max(0.f, qn + gn[j0 + l] - 2.f * ip[j0 + l]);
      any |= d[l] <= bound;
    }
    if (!any) continue;
    for (int l = 0; l < m; ++l) top.push(d[l], slot0 + j0 + l);
  }
}

// Per-thread top-k heaps of a block of queries, with the queries' squared norms.
struct QueryBlockTops {
  std::vector<float> norms;
  std::vector<std::vector<TopK>> per_thread;
  QueryBlockTops(const float* queries, int64_t count, int dim, int k, int threads)
      : norms(count), per_thread(threads, std::vector<TopK>(count, TopK(k))) {
    for (int64_t j = 0; j < count; ++j) norms[j] = squared_norm(queries + j * dim, dim);
  }
  // Merges the threads' heaps per query and writes the block's result rows.
  void write(const SlotMap& slots, int k, float* distances, int64_t* labels) {
    for (size_t j = 0; j < norms.size(); ++j) {
      for (size_t t = 1; t < per_thread.size(); ++t) per_thread[0][j].merge(per_thread[t][j]);
      per_thread[0][j].write(slots, distances + j * k, labels + j * k);
    }
  }
};

// BLAS runs single-threaded while ours are the threads (each calls its own GEMM tile);
// the caller's setting is restored afterwards.
class ScopedSingleThreadedBlas {
 public:
  ScopedSingleThreadedBlas() : saved_(blas_num_threads()) { set_blas_num_threads(1); }
  ~ScopedSingleThreadedBlas() { set_blas_num_threads(saved_); }
  ScopedSingleThreadedBlas(const ScopedSingleThreadedBlas&) = delete;
  ScopedSingleThreadedBlas& operator=(const ScopedSingleThreadedBlas&) = delete;

 private:
  int saved_;
};

// Splits [0, n) into `parts` contiguous ranges; returns range `part`.
std::pair<int64_t, int64_t> range_of(int64_t n, int parts, int part) {
  return {n * part / parts, n * (part + 1) / parts};
}

// auto: the scan below kScanMaxQueries queries, GEMM tiles from there on (measured crossover
// between 4 and 8 queries at N = 1e6, d = 128, 2 threads).
constexpr int64_t kScanQueryGroup = 8;  // queries sharing one pass of the scan
constexpr int64_t kScanMaxQueries = 8;
constexpr int64_t kGemmQueryBlock = 256;   // GEMM tile rows (queries)
constexpr int64_t kGemmGalleryTile = 256;  // GEMM tile columns (gallery slots): 256 KiB of IP

}  // namespace

// ---- CPU index -------------------------------------------------------------------------------

CpuFlatIndex::CpuFlatIndex(int dim) : dim_(dim) {
  if (dim < 1) fail("CpuFlatIndex: dim = ", dim, " must be >= 1");
}

int CpuFlatIndex::threads() const {
  return threads_ > 0 ? threads_ : omp_get_max_threads();
}

void CpuFlatIndex::add(const float* vectors, int64_t n, int dim, const int64_t* ids) {
  if (n < 0) fail("CpuFlatIndex::add: n = ", n, " must be >= 0");
  check_dim(dim, dim_, "CpuFlatIndex::add");
  check_finite(vectors, n, dim, "CpuFlatIndex::add");
  slots_.append(ids, n, "CpuFlatIndex::add");
  vectors_.insert(vectors_.end(), vectors, vectors + n * dim);
  for (int64_t i = 0; i < n; ++i) norms_.push_back(squared_norm(vectors + i * dim, dim));
}

int64_t CpuFlatIndex::remove(const int64_t* ids, int64_t n) {
  if (n > 0 && !ids) fail("CpuFlatIndex::remove: null ids for ", n, " ids");
  const SlotMap::Moves moves = slots_.remove(ids, n);
  for (size_t i = 0; i < moves.dst.size(); ++i) {
    std::copy_n(&vectors_[moves.src[i] * dim_], dim_, &vectors_[moves.dst[i] * dim_]);
    norms_[moves.dst[i]] = norms_[moves.src[i]];
  }
  vectors_.resize(size() * dim_);
  norms_.resize(size());
  return moves.removed;
}

void CpuFlatIndex::search(const float* queries, int64_t nq, int dim, int k, float* distances,
                          int64_t* labels, KnnAlgorithm algorithm) const {
  check_search_args(nq, k, std::numeric_limits<int>::max(), distances, labels);
  check_dim(dim, dim_, "CpuFlatIndex::search");
  check_finite(queries, nq, dim, "CpuFlatIndex::search");
  if (nq == 0) return;
  if (size() == 0) return fill_empty(nq * k, distances, labels);
  if (algorithm == KnnAlgorithm::kAuto)
    algorithm = nq < kScanMaxQueries ? KnnAlgorithm::kFused : KnnAlgorithm::kGemm;
  if (algorithm == KnnAlgorithm::kFused)
    search_scan(queries, nq, k, distances, labels);
  else
    search_gemm(queries, nq, k, distances, labels);
}

// One pass over the gallery per group of up to kScanQueryGroup queries: each thread streams its
// contiguous share of the rows once, dotting every row with all queries of the group while the
// row is in L1, and keeps its own top-k per query; the per-thread heaps merge at the end.
void CpuFlatIndex::search_scan(const float* queries, int64_t nq, int k, float* distances,
                               int64_t* labels) const {
  // A short scan runs on one thread: waking a second one costs more than the scan (on a VM
  // a sleeping worker's vCPU can take a 4 ms scheduler tick to wake; measured 8 ms vs 0.07 ms
  // for 1e4 x 128), which is also why FAISS scans a single probe serially.
  constexpr int64_t kMinFloatsPerThread = int64_t{1} << 21;  // 8 MB of gallery
  const int nt = static_cast<int>(std::clamp<int64_t>(
      size() * dim_ * std::max<int64_t>(nq, 1) / kMinFloatsPerThread, 1, threads()));
  const int64_t n = size();
  for (int64_t g0 = 0; g0 < nq; g0 += kScanQueryGroup) {
    const int64_t group = std::min(kScanQueryGroup, nq - g0);
    const float* q = queries + g0 * dim_;
    QueryBlockTops tops(q, group, dim_, k, nt);
#pragma omp parallel num_threads(nt)
    {
      const int t = omp_get_thread_num();
      const auto [begin, end] = range_of(n, omp_get_num_threads(), t);
      std::vector<TopK>& mine = tops.per_thread[t];
      for (int64_t s = begin; s < end; ++s) {
        const float* row = &vectors_[s * dim_];
        for (int64_t j = 0; j < group; ++j) {
          const float d = tops.norms[j] + norms_[s] - 2.f * dot(q + j * dim_, row, dim_);
          mine[j].push(std::max(0.f, d), s);
        }
      }
    }
    tops.write(slots_, k, distances + g0 * k, labels + g0 * k);
  }
}

// Query blocks of kGemmQueryBlock; within a block the threads split the gallery into tiles of
// kGemmGalleryTile slots, compute each tile's inner products with a single-threaded
// cblas_sgemm into a thread-local buffer (kept in L2) and select from it straight away.
void CpuFlatIndex::search_gemm(const float* queries, int64_t nq, int k, float* distances,
                               int64_t* labels) const {
  const ScopedSingleThreadedBlas single_threaded_blas;
  const int nt = threads();
  const int64_t n = size();
  const int64_t tiles = (n + kGemmGalleryTile - 1) / kGemmGalleryTile;
  for (int64_t q0 = 0; q0 < nq; q0 += kGemmQueryBlock) {
    const int64_t qb = std::min(kGemmQueryBlock, nq - q0);
    const float* q = queries + q0 * dim_;
    QueryBlockTops tops(q, qb, dim_, k, nt);
#pragma omp parallel num_threads(nt)
    {
      std::vector<TopK>& mine = tops.per_thread[omp_get_thread_num()];
      std::vector<float> ip(qb * kGemmGalleryTile);
#pragma omp for schedule(static)
      for (int64_t tile = 0; tile < tiles; ++tile) {
        const int64_t s0 = tile * kGemmGalleryTile;
        const int64_t cols = std::min(kGemmGalleryTile, n - s0);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(qb),
                    static_cast<int>(cols), dim_, 1.f, q, dim_, &vectors_[s0 * dim_], dim_, 0.f,
                    ip.data(), static_cast<int>(cols));
        for (int64_t j = 0; j < qb; ++j)
          offer_run(mine[j], tops.norms[j], &norms_[s0], &ip[j * cols], cols, s0);
      }
    }
    tops.write(slots_, k, distances + q0 * k, labels + q0 * k);
  }
}

// ---- Agreement of two results ----------------------------------------------------------------

KnnAgreement compare_knn(const float* dist_a, const int64_t* labels_a, const float* dist_b,
                         const int64_t* labels_b, int64_t nq, int k, double tolerance) {
  KnnAgreement agreement;
  for (int64_t q = 0; q < nq; ++q) {
    const float* da = dist_a + q * k;
    const float* db = dist_b + q * k;
    const int64_t* la = labels_a + q * k;
    const int64_t* lb = labels_b + q * k;
    for (int i = 0; i < k; ++i) {
      ++agreement.compared;
      const bool both_inf = std::isinf(da[i]) && std::isinf(db[i]);
      const double err = both_inf ? 0.0 : std::abs(double(da[i]) - double(db[i]));
      agreement.max_distance_error = std::max(agreement.max_distance_error, err);
      if (std::find(lb, lb + k, la[i]) != lb + k) continue;
      ++agreement.label_mismatches;
      // A tie-reorder: the label that b dropped sits at b's boundary distance, within tolerance.
      if (!(std::abs(double(da[i]) - double(db[k - 1])) <= tolerance)) ++agreement.unexplained;
    }
  }
  return agreement;
}

// ---- GPU index -------------------------------------------------------------------------------

#ifdef FACENET_HAS_CUDA

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
  const KnnDtype dtype = storage_;
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

#endif  // FACENET_HAS_CUDA

}  // namespace facenet
