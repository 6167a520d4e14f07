// Exact L2 k-NN, the CPU flat index: fused scan and oneDNN GEMM tiles over fp32 or split-bf16
// storage, with the bf16 distance bound and the exact re-rank it needs.
#include "engine/search/knn.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>

#include "engine/core/blas.h"
#include "engine/core/error.h"
#include "engine/search/knn_common.h"
#include "engine/search/knn_cpu_kernels.h"

namespace facenet {

using namespace knn_detail;  // the private helpers of knn_common.h and knn_cpu_kernels.h

namespace {

// ---- CPU selection ---------------------------------------------------------------------------

// A candidate: squared distance (or a bound of it) and gallery slot, ordered by (value, slot).
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

// ---- bf16 planes and the distance bound ------------------------------------------------------
//
// Storage. A finite fp32 x with bit pattern B is kept as high = (B + 0x8000) >> 16, its bf16
// rounding to nearest with ties away from zero (adding half a bf16 ulp to the magnitude bits),
// and low = B & 0xffff. The carry into bit 16 happened exactly when low >= 0x8000, so
// B = ((high - (low >> 15)) << 16) | low: the fp32 value comes back bit for bit, in the same
// 4 bytes as fp32 storage, while a scan reads only the 2 bytes of `high`. (fp16 has no such
// split: its exponent range differs from fp32's and the remainder does not fit 16 bits, so an
// fp16 gallery would need a second, fp32 copy for exact re-ranking.)
//
// Bound. Let F(s) be the distance the exact path computes for slot s, F = max(0, fl(fl(qn + gn)
// - 2 fl(q.g))) with qn, gn the stored fp32 squared norms, and A(s) the same expression with
// fl(p.h) in place of fl(q.g): h is the bf16 plane of g, p the query as the approximate dot
// sees it (q itself in the scan, its bf16 rounding in the bf16 GEMM). With e_s >= ||g - h||,
// e_q >= ||q - p||, u = 2^-24 and gamma = d u / (1 - d u):
//   q.g - p.h = (q - p).g + p.(g - h)           so |q.g - p.h| <= e_q ||g|| + ||p|| e_s
//   |fl(q.g) - q.g| <= gamma ||q|| ||g||        any summation order, FMA or not (Cauchy-Schwarz)
//   |fl(p.h) - p.h| <= gamma ||p|| ||h||,  ||h|| <= ||g|| + e_s
// qn and gn are the same stored values in F and A, so they cancel; each side's two final
// roundings add at most 3.1 u (qn + gn) (|ip| <= (qn + gn) / 2), forming A - E and A + E in
// fp32 another 2.1 u (qn + gn) + u E, and max(0, .) is 1-Lipschitz. bf16 dot instructions
// flush denormal inputs and outputs: at most 2^-126 (sqrt(d) (||p|| + ||h||) + d) on the dot.
// Hence |F - A| <= E(s) = c0 + c1 ||g|| + c2 e_s + c3 gn with, per query,
//   c1 = 2 gamma (||q|| + ||p||) + 2 e_q + t1,  c2 = 2 ||p|| (1 + gamma) + t1,  c3 = 12 u,
//   c0 = 12 u qn + 2 d 2^-126 + t1 ||p||,      t1 = 2 sqrt(d) 2^-126,
// all scaled by (1 + 2^-16) for the fp32 evaluation of E itself. Every norm and error above
// is computed in double from the fp32 data and rounded up.
//
// Selection. L = A - E <= F <= U = A + E. Let T be the k-th smallest U over the gallery: k rows
// have F <= T, so every row of the exact top-k (ties at the k-th distance included) has
// F <= T and therefore L <= T. Scans keep a heap of the k smallest U (T only falls) and every
// row with L <= the current T; at the end the rows with L <= the final T are re-ranked with
// the exact fp32 distance, the very computation the fp32 fused scan does, so the results are
// bit-identical to it. On unit-norm d = 128 embeddings E is about 0.005 (scan) to 0.008
// (GEMM), and a few times k rows are re-ranked.

constexpr double kRoundoff = 1.0 / (1 << 24);          // u, fp32 unit roundoff
constexpr double kMinNormal = 1.1754943508222875e-38;  // 2^-126

uint16_t bf16_high(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  return static_cast<uint16_t>((b + 0x8000u) >> 16);
}
uint16_t bf16_low(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  return static_cast<uint16_t>(b & 0xffffu);
}
float bf16_join(uint16_t high, uint16_t low) {
  const uint32_t b = (uint32_t(uint16_t(high - (low >> 15))) << 16) | low;
  float x;
  std::memcpy(&x, &b, 4);
  return x;
}
// Magnitudes from here on round to +inf in bf16.
bool bf16_in_range(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  return (b & 0x7fffffffu) < 0x7f7f8000u;
}

// A double rounded up to the next float (a few ulps of slack for the double sums).
float round_up(double x) {
  return std::nextafter(static_cast<float>(x * (1 + 1e-12)), std::numeric_limits<float>::max());
}

// ||x|| and ||x - y|| in double, x fp32 and y bf16 (y null: ||x|| only).
std::pair<double, double> norm_and_error(const float* x, const uint16_t* y, int dim) {
  double s = 0, e = 0;
  for (int c = 0; c < dim; ++c) {
    s += double(x[c]) * x[c];
    if (y) {
      const double diff = double(x[c]) - bf16_to_float(y[c]);
      e += diff * diff;
    }
  }
  return {std::sqrt(s), std::sqrt(e)};
}

// The per-query coefficients of E(s) above; p (null: p = q) is the query's bf16 rounding.
QueryTerms query_terms(const float* q, const uint16_t* p, float qn, int dim) {
  const auto [nq, eq] = norm_and_error(q, p, dim);
  double np = nq;
  if (p) {
    double s = 0;
    for (int c = 0; c < dim; ++c) s += double(bf16_to_float(p[c])) * bf16_to_float(p[c]);
    np = std::sqrt(s);
  }
  const double gamma = dim * kRoundoff / (1 - dim * kRoundoff);
  const double t1 = 2 * std::sqrt(double(dim)) * kMinNormal;
  const double scale = 1 + 1.0 / (1 << 16);
  QueryTerms t;
  t.qn = qn;
  t.c1 = round_up(scale * (2 * gamma * (nq + np) + 2 * eq + t1));
  t.c2 = round_up(scale * (2 * np * (1 + gamma) + t1));
  t.c3 = round_up(scale * 12 * kRoundoff);
  t.c0 = round_up(scale * (12 * kRoundoff * qn + 2 * dim * kMinNormal + t1 * np));
  return t;
}

// Offers a run of rows to one query's exact top-k; slot of row j: slots[j], or slot0 + j.
void offer_run(TopK& top, const QueryTerms& t, const Run& run, int64_t slot0,
               const int64_t* slots = nullptr) {
  float keys[16];
  for (int64_t j0 = kKernels.next_hit(run, t, 0, top.bound(), keys, nullptr); j0 < run.count;
       j0 = kKernels.next_hit(run, t, j0 + 16, top.bound(), keys, nullptr)) {
    const int m = static_cast<int>(std::min<int64_t>(16, run.count - j0));
    for (int l = 0; l < m; ++l) top.push(keys[l], slots ? slots[j0 + l] : slot0 + j0 + l);
  }
}

// bf16: the k smallest upper bounds (their k-th is T) and every row whose lower bound was
// <= T when it came; the list is pruned to L <= T whenever it doubles.
class BoundedTopK {
 public:
  explicit BoundedTopK(int k) : upper_(k), limit_(std::max<size_t>(1024, 4 * size_t(k))) {}
  float bound() const { return upper_.bound(); }
  void offer(float lower, float upper, int64_t slot) {
    if (!(lower <= upper_.bound())) return;
    candidates_.push_back({lower, slot});
    upper_.push(upper, slot);
    if (candidates_.size() >= limit_) {
      prune();
      limit_ = std::max(limit_, 2 * candidates_.size());
    }
  }
  void merge(const BoundedTopK& other) {
    upper_.merge(other.upper_);
    candidates_.insert(candidates_.end(), other.candidates_.begin(), other.candidates_.end());
  }
  // The slots to re-rank: lower bound <= the final T.
  std::vector<int64_t> candidates() {
    prune();
    std::vector<int64_t> slots(candidates_.size());
    for (size_t i = 0; i < slots.size(); ++i) slots[i] = candidates_[i].slot;
    return slots;
  }

 private:
  void prune() {
    const float t = upper_.bound();
    candidates_.erase(std::remove_if(candidates_.begin(), candidates_.end(),
                                     [t](const Neighbor& c) { return !(c.dist <= t); }),
                      candidates_.end());
  }
  TopK upper_;
  std::vector<Neighbor> candidates_;
  size_t limit_;
};

void offer_run(BoundedTopK& top, const QueryTerms& t, const Run& run, int64_t slot0) {
  float lower[16], upper[16];
  for (int64_t j0 = kKernels.next_hit(run, t, 0, top.bound(), lower, upper); j0 < run.count;
       j0 = kKernels.next_hit(run, t, j0 + 16, top.bound(), lower, upper)) {
    const int m = static_cast<int>(std::min<int64_t>(16, run.count - j0));
    for (int l = 0; l < m; ++l) top.offer(lower[l], upper[l], slot0 + j0 + l);
  }
}

// A block of queries: their norms and bound terms, and per-thread top-k state.
template <typename Top>
struct QueryBlock {
  std::vector<QueryTerms> terms;
  std::vector<std::vector<Top>> per_thread;
  QueryBlock(int64_t count, int k, int threads)
      : terms(count), per_thread(threads, std::vector<Top>(count, Top(k))) {}
  // Query j's state merged over the threads.
  Top& merged(size_t j) {
    for (size_t t = 1; t < per_thread.size(); ++t) per_thread[0][j].merge(per_thread[t][j]);
    return per_thread[0][j];
  }
};

// auto: the scan below kScanMaxQueries queries, GEMM tiles from there on (measured crossover
// between 4 and 8 queries at N = 1e6, d = 128, 2 threads).
constexpr int64_t kScanQueryGroup = 8;  // queries sharing one pass of the scan
constexpr int64_t kScanMaxQueries = 8;
constexpr int64_t kScanRows = 64;          // rows dotted before their selection pass
constexpr int64_t kScanChunk = 8192;       // rows a thread takes at a time (2-4 MiB)
constexpr int64_t kGemmQueryBlock = 256;   // GEMM tile rows (queries)
constexpr int64_t kGemmGalleryTile = 256;  // GEMM tile columns (gallery slots): 256 KiB of IP
constexpr int64_t kRerankChunk = 256;      // candidates whose exact dots are taken at once

}  // namespace

// ---- CPU index -------------------------------------------------------------------------------

CpuStorage parse_cpu_storage(const std::string& name) {
  if (name == "fp32") return CpuStorage::kFloat32;
  if (name == "bf16") return CpuStorage::kBFloat16;
  fail("CPU gallery storage '", name, "': expected fp32 or bf16");
}

const char* to_string(CpuStorage storage) {
  return storage == CpuStorage::kBFloat16 ? "bf16" : "fp32";
}

CpuFlatIndex::CpuFlatIndex(int dim, CpuStorage storage) : dim_(dim), storage_(storage) {
  if (dim < 1) fail("CpuFlatIndex: dim = ", dim, " must be >= 1");
}

CpuFlatIndex CpuFlatIndex::borrow(const float* rows, int64_t n, int dim,
                                  const float* squared_norms) {
  CpuFlatIndex index(dim, CpuStorage::kFloat32);
  if (n < 0 || (n > 0 && !rows)) fail("CpuFlatIndex::borrow: ", n, " rows at ", rows);
  index.norms_.resize(n);
  bool finite = true;
  if (squared_norms) {
    std::copy_n(squared_norms, n, index.norms_.data());
    for (int64_t i = 0; i < n; ++i) finite = finite && std::isfinite(squared_norms[i]);
  } else {
#pragma omp parallel for reduction(&& : finite)
    for (int64_t i = 0; i < n; ++i) {
      index.norms_[i] = squared_norm(rows + i * dim, dim);
      finite = finite && std::isfinite(index.norms_[i]);  // NaN/inf components: NaN/inf norm
    }
  }
  if (!finite) check_finite(rows, n, dim, "CpuFlatIndex::borrow");  // names the component
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(index.norms_[i]))
      fail("CpuFlatIndex::borrow: vector ", i, " has a squared norm beyond the float range");
  index.slots_.assign_sequential(n);
  index.borrowed_ = rows;
  return index;
}

int CpuFlatIndex::threads() const {
  return threads_ > 0 ? threads_ : omp_get_max_threads();
}

std::size_t CpuFlatIndex::gallery_bytes() const {
  return sizeof(float) *
             (vectors_.size() + norms_.size() + norm_bounds_.size() + split_errors_.size()) +
         sizeof(uint16_t) * (high_.size() + low_.size());
}

std::size_t CpuFlatIndex::scan_bytes() const {
  return storage_ == CpuStorage::kBFloat16 ? sizeof(uint16_t) * high_.size()
                                           : sizeof(float) * dim_ * norms_.size();
}

void CpuFlatIndex::row(int64_t slot, float* out) const {
  const int64_t base = slot * dim_;
  if (storage_ == CpuStorage::kFloat32) {
    std::copy_n(rows_f32() + base, dim_, out);
    return;
  }
  for (int c = 0; c < dim_; ++c) out[c] = bf16_join(high_[base + c], low_[base + c]);
}

void CpuFlatIndex::add(const float* vectors, int64_t n, int dim, const int64_t* ids) {
  if (borrowed_) fail("CpuFlatIndex::add: this index borrows its rows and is read-only");
  if (n < 0) fail("CpuFlatIndex::add: n = ", n, " must be >= 0");
  check_dim(dim, dim_, "CpuFlatIndex::add");
  check_finite(vectors, n, dim, "CpuFlatIndex::add");
  const bool split = storage_ == CpuStorage::kBFloat16;
  if (split) {
    for (int64_t i = 0; i < n * dim; ++i)
      if (!bf16_in_range(vectors[i]))
        fail("CpuFlatIndex::add: vector ", i / dim, " component ", i % dim, " is ", vectors[i],
             " (bf16 storage holds magnitudes below 3.39e38)");
    for (int64_t i = 0; i < n; ++i)
      if (!std::isfinite(squared_norm(vectors + i * dim, dim)))
        fail("CpuFlatIndex::add: vector ", i, " has a squared norm beyond the float range");
  }
  slots_.append(ids, n, "CpuFlatIndex::add");
  for (int64_t i = 0; i < n; ++i) norms_.push_back(squared_norm(vectors + i * dim, dim));
  if (!split) {
    vectors_.insert(vectors_.end(), vectors, vectors + n * dim);
    return;
  }
  const size_t base = high_.size();
  high_.resize(base + n * dim);
  low_.resize(base + n * dim);
  for (int64_t i = 0; i < n * dim; ++i) {
    high_[base + i] = bf16_high(vectors[i]);
    low_[base + i] = bf16_low(vectors[i]);
  }
  for (int64_t i = 0; i < n; ++i) {
    const auto [norm, error] = norm_and_error(vectors + i * dim, &high_[base + i * dim], dim);
    norm_bounds_.push_back(round_up(norm));
    split_errors_.push_back(round_up(error));
  }
}

int64_t CpuFlatIndex::remove(const int64_t* ids, int64_t n) {
  if (borrowed_) fail("CpuFlatIndex::remove: this index borrows its rows and is read-only");
  if (n > 0 && !ids) fail("CpuFlatIndex::remove: null ids for ", n, " ids");
  const SlotMap::Moves moves = slots_.remove(ids, n);
  auto move_rows = [&](auto& rows, int64_t width) {
    if (rows.empty()) return;
    for (size_t i = 0; i < moves.dst.size(); ++i)
      std::copy_n(&rows[moves.src[i] * width], width, &rows[moves.dst[i] * width]);
    rows.resize(size() * width);
  };
  move_rows(vectors_, dim_);
  move_rows(high_, dim_);
  move_rows(low_, dim_);
  move_rows(norms_, 1);
  move_rows(norm_bounds_, 1);
  move_rows(split_errors_, 1);
  return moves.removed;
}

void CpuFlatIndex::search(const float* queries, int64_t nq, int dim, int k, float* distances,
                          int64_t* labels, KnnAlgorithm algorithm, CpuSearchStats* stats) const {
  check_search_args(nq, k, std::numeric_limits<int>::max(), distances, labels);
  check_dim(dim, dim_, "CpuFlatIndex::search");
  check_finite(queries, nq, dim, "CpuFlatIndex::search");
  if (storage_ == CpuStorage::kBFloat16)
    for (int64_t i = 0; i < nq; ++i)
      if (!std::isfinite(squared_norm(queries + i * dim, dim)))
        fail("CpuFlatIndex::search: query ", i, " has a squared norm beyond the float range");
  CpuSearchStats local;
  CpuSearchStats& st = stats ? *stats : local;
  st = CpuSearchStats{};
  if (nq == 0) return;
  if (size() == 0) return fill_empty(nq * k, distances, labels);
  if (algorithm == KnnAlgorithm::kAuto)
    algorithm = nq < kScanMaxQueries ? KnnAlgorithm::kFused : KnnAlgorithm::kGemm;
  if (algorithm == KnnAlgorithm::kFused)
    search_scan(queries, nq, k, distances, labels, st);
  else
    search_gemm(queries, nq, k, distances, labels, st);
}

namespace {

// Offers rows [s0, s0 + rows.count) to every query of a block; query j's inner products are
// ip[j * stride + i].
template <typename Top>
void offer_block(std::vector<Top>& tops, const std::vector<QueryTerms>& terms, const float* ip,
                 int64_t stride, Run rows, int64_t s0) {
  for (size_t j = 0; j < tops.size(); ++j) {
    rows.ip = ip + j * stride;
    offer_run(tops[j], terms[j], rows, s0);
  }
}

// One block of `count` queries: their terms (bound coefficients with bf16 storage; `rounded`,
// when not null, holds their bf16 roundings), pass(block) over the gallery with per-thread
// state, then the results: fp32 straight from the merged heaps, bf16 through
// rerank(candidates).
template <typename Pass, typename Rerank>
void search_block(bool split, const float* queries, const uint16_t* rounded, int64_t count, int dim,
                  int k, int threads, const SlotMap& slots, float* distances, int64_t* labels,
                  Pass&& pass, Rerank&& rerank, CpuSearchStats& stats) {
  auto with_terms = [&](auto& block) {
    for (int64_t j = 0; j < count; ++j) {
      const float* q = queries + j * dim;
      block.terms[j] =
          split ? query_terms(q, rounded ? rounded + j * dim : nullptr, squared_norm(q, dim), dim)
                : QueryTerms{squared_norm(q, dim)};
    }
    pass(block);
  };
  if (!split) {
    QueryBlock<TopK> block(count, k, threads);
    with_terms(block);
    for (int64_t j = 0; j < count; ++j)
      block.merged(j).write(slots, distances + j * k, labels + j * k);
    return;
  }
  QueryBlock<BoundedTopK> block(count, k, threads);
  with_terms(block);
  std::vector<std::vector<int64_t>> candidates(count);
  for (int64_t j = 0; j < count; ++j) {
    candidates[j] = block.merged(j).candidates();
    stats.reranked += static_cast<int64_t>(candidates[j].size());
  }
  rerank(candidates);
}

}  // namespace

// One pass over the gallery per group of up to kScanQueryGroup queries: the threads stream
// chunks of rows once, dotting a block of rows with every query of the group while it is in L1,
// and keep their own top-k per query; the per-thread heaps merge at the end.
void CpuFlatIndex::search_scan(const float* queries, int64_t nq, int k, float* distances,
                               int64_t* labels, CpuSearchStats& stats) const {
  // A short scan runs on one thread: waking a second one costs more than the scan (on a VM
  // a sleeping worker's vCPU can take a 4 ms scheduler tick to wake; measured 8 ms vs 0.07 ms
  // for 1e4 x 128), which is also why FAISS scans a single probe serially.
  constexpr int64_t kMinBytesPerThread = int64_t{8} << 20;
  const int64_t row_bytes = static_cast<int64_t>(scan_bytes()) / std::max<int64_t>(size(), 1);
  const int nt = static_cast<int>(std::clamp<int64_t>(
      size() * row_bytes * std::max<int64_t>(nq, 1) / kMinBytesPerThread, 1, threads()));
  const int64_t n = size();
  const bool split = storage_ == CpuStorage::kBFloat16;
  for (int64_t g0 = 0; g0 < nq; g0 += kScanQueryGroup) {
    const int64_t group = std::min(kScanQueryGroup, nq - g0);
    const float* q = queries + g0 * dim_;
    auto scan = [&](auto& block) {
#pragma omp parallel num_threads(nt)
      {
        auto& mine = block.per_thread[omp_get_thread_num()];
        std::vector<float> ip(group * kScanRows);
        // Chunks handed out dynamically: on a shared machine a descheduled thread's share is
        // taken over by the other instead of holding the whole scan up.
#pragma omp for schedule(dynamic, 1)
        for (int64_t chunk = 0; chunk < (n + kScanChunk - 1) / kScanChunk; ++chunk) {
          const int64_t begin = chunk * kScanChunk, end = std::min(n, begin + kScanChunk);
          for (int64_t r0 = begin; r0 < end; r0 += kScanRows) {
            const int64_t rows = std::min(kScanRows, end - r0);
            for (int64_t j = 0; j < group; ++j) {
              if (split)
                kKernels.dots_high(q + j * dim_, &high_[r0 * dim_], rows, dim_, &ip[j * kScanRows]);
              else
                kKernels.dots(q + j * dim_, rows_f32() + r0 * dim_, rows, dim_, &ip[j * kScanRows]);
            }
            offer_block(mine, block.terms, ip.data(), kScanRows,
                        Run{nullptr, &norms_[r0], split ? &norm_bounds_[r0] : nullptr,
                            split ? &split_errors_[r0] : nullptr, rows},
                        r0);
          }
        }
      }
    };
    search_block(
        split, q, nullptr, group, dim_, k, nt, slots_, distances + g0 * k, labels + g0 * k, scan,
        [&](const std::vector<std::vector<int64_t>>& candidates) {
          rerank(q, candidates, k, distances + g0 * k, labels + g0 * k);
        },
        stats);
  }
}

// Query blocks of kGemmQueryBlock; within a block the threads take tiles of kGemmGalleryTile
// slots (dynamically, as the scan takes chunks), compute each tile's inner products with a
// single-threaded oneDNN matmul (RowGemm) into a thread-local buffer (kept in L2) and select
// from it straight away.
// bf16: the queries are rounded to bf16 as well (their error e_q enters the bound) and the
// matmul multiplies bf16 planes with fp32 accumulation.
void CpuFlatIndex::search_gemm(const float* queries, int64_t nq, int k, float* distances,
                               int64_t* labels, CpuSearchStats& stats) const {
  const int nt = threads();
  const int64_t n = size();
  const int64_t tiles = (n + kGemmGalleryTile - 1) / kGemmGalleryTile;
  const bool split = storage_ == CpuStorage::kBFloat16;
  const DType input = split ? DType::kBFloat16 : DType::kFloat32;
  std::vector<uint16_t> rounded;  // bf16: the block's queries
  for (int64_t q0 = 0; q0 < nq; q0 += kGemmQueryBlock) {
    const int64_t qb = std::min(kGemmQueryBlock, nq - q0);
    const float* q = queries + q0 * dim_;
    const int64_t full = std::min(kGemmGalleryTile, n), tail = n % kGemmGalleryTile;
    const RowGemm full_gemm(qb, full, dim_, input);
    const std::unique_ptr<RowGemm> tail_gemm =
        tail > 0 && tiles > 1 ? std::make_unique<RowGemm>(qb, tail, dim_, input) : nullptr;
    const void* a = q;
    if (split) {
      rounded.resize(qb * dim_);
      for (int64_t i = 0; i < qb * dim_; ++i) rounded[i] = bf16_high(q[i]);
      a = rounded.data();
    }
    auto tile_pass = [&](auto& block) {
#pragma omp parallel num_threads(nt)
      {
        auto& mine = block.per_thread[omp_get_thread_num()];
        RowGemm::Worker full_worker(full_gemm);
        std::unique_ptr<RowGemm::Worker> tail_worker =
            tail_gemm ? std::make_unique<RowGemm::Worker>(*tail_gemm) : nullptr;
        std::vector<float> ip(qb * kGemmGalleryTile);
#pragma omp for schedule(dynamic, 1)
        for (int64_t tile = 0; tile < tiles; ++tile) {
          const int64_t s0 = tile * kGemmGalleryTile;
          const int64_t cols = std::min(kGemmGalleryTile, n - s0);
          const void* b = split ? static_cast<const void*>(&high_[s0 * dim_])
                                : static_cast<const void*>(rows_f32() + s0 * dim_);
          (cols == full ? full_worker : *tail_worker).run(a, b, ip.data());
          offer_block(mine, block.terms, ip.data(), cols,
                      Run{nullptr, &norms_[s0], split ? &norm_bounds_[s0] : nullptr,
                          split ? &split_errors_[s0] : nullptr, cols},
                      s0);
        }
      }
    };
    search_block(
        split, q, split ? rounded.data() : nullptr, qb, dim_, k, nt, slots_, distances + q0 * k,
        labels + q0 * k, tile_pass,
        [&](const std::vector<std::vector<int64_t>>& candidates) {
          rerank(q, candidates, k, distances + q0 * k, labels + q0 * k);
        },
        stats);
  }
}

// bf16: the exact top-k of each query among its candidates, with the exact path's kernels
// (the distances are those of the fp32 fused scan, bit for bit). Parallel over the queries.
void CpuFlatIndex::rerank(const float* queries, const std::vector<std::vector<int64_t>>& candidates,
                          int k, float* distances, int64_t* labels) const {
  const int64_t count = static_cast<int64_t>(candidates.size());
  const int nt = static_cast<int>(std::clamp<int64_t>(count, 1, threads()));
#pragma omp parallel num_threads(nt)
  {
    std::vector<float> row_buffer(dim_), ip(kRerankChunk), gn(kRerankChunk);
#pragma omp for schedule(dynamic)
    for (int64_t j = 0; j < count; ++j) {
      const float* qj = queries + j * dim_;
      const QueryTerms terms{squared_norm(qj, dim_)};
      const std::vector<int64_t>& slots = candidates[j];
      TopK top(k);
      for (size_t c0 = 0; c0 < slots.size(); c0 += kRerankChunk) {
        const int64_t m = std::min<int64_t>(kRerankChunk, slots.size() - c0);
        for (int64_t i = 0; i < m; ++i) {
          row(slots[c0 + i], row_buffer.data());
          kKernels.dots(qj, row_buffer.data(), 1, dim_, &ip[i]);
          gn[i] = norms_[slots[c0 + i]];
        }
        offer_run(top, terms, Run{ip.data(), gn.data(), nullptr, nullptr, m}, 0, &slots[c0]);
      }
      top.write(slots_, distances + j * k, labels + j * k);
    }
  }
}

}  // namespace facenet
