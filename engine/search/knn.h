// Exact L2 k-nearest-neighbour search over a gallery of embeddings: CPU and GPU flat indexes.
//
// Both indexes compute SQUARED L2 distances as ||q||^2 + ||g||^2 - 2 q.g with the gallery norms
// precomputed at add() time, clamped at 0 (rounding can make the expression slightly negative
// for identical vectors). Callers that want plain L2 take the square root (the CLI does).
//
// Result layout (row-major, one row of k per query): distances[q * k + i], labels[q * k + i],
// ascending distance. Equal distances are ordered by gallery slot (insertion order; a removal
// moves the last slot into the hole), so results are deterministic. When k exceeds the gallery
// size the row is padded with label -1 and distance +inf.
//
// Labels are the caller's int64 ids given to add(); remove() takes the same ids. Bad input
// (k < 1, wrong dimension, NaN/inf values, duplicate ids, k > 1024 on the GPU) throws
// facenet::Error naming the argument.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#ifdef FACENET_HAS_CUDA
#include <cuda_fp16.h>

#include "engine/core/cuda_util.h"
#include "kernels/knn.h"
#endif

namespace facenet {

// Allocator of the CPU gallery arrays: blocks of 4 MiB and more are 2 MiB-aligned and advised
// to transparent huge pages (MADV_HUGEPAGE; Debian's default THP mode is "madvise"). A
// streaming scan over 4 KiB pages walks the page tables every 4 KiB: measured 17-25 GB/s on one
// core of this project's EPYC VM against 39-40 GB/s on huge pages.
void* huge_page_allocate(std::size_t bytes);
void huge_page_free(void* p, std::size_t bytes) noexcept;
template <typename T>
struct HugePageAllocator {
  using value_type = T;
  HugePageAllocator() = default;
  template <typename U>
  HugePageAllocator(const HugePageAllocator<U>&) {}
  T* allocate(std::size_t n) { return static_cast<T*>(huge_page_allocate(n * sizeof(T))); }
  void deallocate(T* p, std::size_t n) noexcept { huge_page_free(p, n * sizeof(T)); }
  template <typename U>
  bool operator==(const HugePageAllocator<U>&) const {
    return true;
  }
  template <typename U>
  bool operator!=(const HugePageAllocator<U>&) const {
    return false;
  }
};
template <typename T>
using GalleryArray = std::vector<T, HugePageAllocator<T>>;

// How distances and selection are computed. kAuto picks per shape.
enum class KnnAlgorithm {
  kAuto,
  kFused,  // distances and top-k in one pass, no distance matrix (CPU: streaming scan)
  kGemm,   // GEMM tiles of inner products (oneDNN / cuBLAS) + a selection pass per tile
};

KnnAlgorithm parse_knn_algorithm(const std::string& name);  // "auto" | "fused" | "gemm"
const char* to_string(KnnAlgorithm algorithm);

// Slot bookkeeping shared by both indexes: id <-> slot maps with swap-with-last removal.
class SlotMap {
 public:
  // Appends ids (nullptr: size()..size()+n-1); throws naming `what` on a duplicate id.
  void append(const int64_t* ids, int64_t n, const char* what);
  // Ids 0..n-1 without the id -> slot map (a million-entry hash map costs ~0.1 s to build):
  // for read-only indexes, which never remove.
  void assign_sequential(int64_t n);
  // A removal plan: after it, slot `dst[i]` must hold what was in slot `src[i]`. Sources are
  // all >= the new size and destinations all < it, so the moves can run in parallel.
  struct Moves {
    std::vector<int64_t> dst, src;
    int64_t removed = 0;
  };
  // Removes the known ids among `ids` (unknown ids are skipped) and returns the slot moves.
  Moves remove(const int64_t* ids, int64_t n);
  int64_t size() const { return static_cast<int64_t>(ids_.size()); }
  int64_t id_at(int64_t slot) const { return ids_[slot]; }
  const int64_t* ids() const { return ids_.data(); }

 private:
  std::vector<int64_t> ids_;                   // slot -> id
  std::unordered_map<int64_t, int64_t> slot_;  // id -> slot
};

// Gallery element type of CpuFlatIndex (math is fp32 either way; results are exact in both).
enum class CpuStorage {
  kFloat32,   // fp32 rows: a scan reads 4 bytes a component
  kBFloat16,  // each fp32 split in two 16-bit planes: its bf16 rounding, which scans read (half
              // the bytes), and the rest of its bits, which re-ranking reads. Same memory as
              // fp32, nothing lost: results are bit-identical to kFloat32's fused scan.
};
CpuStorage parse_cpu_storage(const std::string& name);  // "fp32" | "bf16"
const char* to_string(CpuStorage storage);

// What a CPU search did (benchmarks and tests).
struct CpuSearchStats {
  int64_t reranked = 0;  // bf16: candidates re-ranked in fp32, over all queries (0 for fp32)
};

// Exact search on the CPU, squared norms precomputed. One probe (or a few) streams the gallery
// once with a fused dot + top-k per thread; larger query batches use oneDNN matmul tiles
// (RowGemm) with the selection fused per tile (no nq x N matrix). With bf16 storage both read
// the bf16 plane, keep every row whose rigorous lower bound can still beat the k-th best upper
// bound, and re-rank those exactly (the bound is derived in knn.cpp).
class CpuFlatIndex {
 public:
  explicit CpuFlatIndex(int dim, CpuStorage storage = CpuStorage::kFloat32);
  // A read-only fp32 index over `n` rows (row-major, `dim` wide) that the caller keeps alive
  // and unchanged, searched in place (a memory-mapped gallery snapshot): nothing is copied,
  // only the norms are computed (and checked finite); labels are row numbers; add() and
  // remove() throw. `squared_norms`, when given, are the rows' squared_norm() as stored beside
  // them (a snapshot, whose hash covers both): taken instead of a pass over every row.
  static CpuFlatIndex borrow(const float* rows, int64_t n, int dim,
                             const float* squared_norms = nullptr);

  int dim() const { return dim_; }
  int64_t size() const { return slots_.size(); }
  CpuStorage storage() const { return storage_; }
  // Bytes held for the gallery rows and their per-row terms (not the id maps).
  std::size_t gallery_bytes() const;
  // Bytes of the rows one full scan reads (the bf16 plane for kBFloat16).
  std::size_t scan_bytes() const;
  // Threads used by search (0: the OpenMP default).
  void set_threads(int threads) { threads_ = threads; }

  // Adds n vectors of dimension `dim` (row-major) with ids (nullptr: size()..size()+n-1).
  void add(const float* vectors, int64_t n, int dim, const int64_t* ids = nullptr);
  // Removes the given ids; unknown ids are ignored. Returns how many were removed.
  int64_t remove(const int64_t* ids, int64_t n);
  // k nearest gallery vectors of each of the nq queries (see the file comment for layout).
  void search(const float* queries, int64_t nq, int dim, int k, float* distances, int64_t* labels,
              KnnAlgorithm algorithm = KnnAlgorithm::kAuto, CpuSearchStats* stats = nullptr) const;

 private:
  void search_scan(const float* queries, int64_t nq, int k, float* distances, int64_t* labels,
                   CpuSearchStats& stats) const;
  void search_gemm(const float* queries, int64_t nq, int k, float* distances, int64_t* labels,
                   CpuSearchStats& stats) const;
  int threads() const;
  void row(int64_t slot, float* out) const;  // the fp32 row, rebuilt from the planes for bf16
  // bf16: the exact top-k of queries[j] among candidates[j], written to row j of the outputs.
  void rerank(const float* queries, const std::vector<std::vector<int64_t>>& candidates, int k,
              float* distances, int64_t* labels) const;

  const float* rows_f32() const { return borrowed_ ? borrowed_ : vectors_.data(); }

  int dim_;
  CpuStorage storage_;
  int threads_ = 0;
  const float* borrowed_ = nullptr;  // borrow(): the caller's fp32 rows, used instead of vectors_
  GalleryArray<float> vectors_;      // fp32: size() x dim_, row-major
  GalleryArray<uint16_t> high_;      // bf16: size() x dim_, bf16 rounding of each component
  GalleryArray<uint16_t> low_;       // bf16: size() x dim_, low 16 bits of each fp32 pattern
  std::vector<float> norms_;         // ||g||^2 per slot, as the fp32 distance uses it
  std::vector<float> norm_bounds_;   // bf16: an upper bound of ||g|| per slot
  std::vector<float> split_errors_;  // bf16: an upper bound of ||g - bf16(g)|| per slot
  SlotMap slots_;
};

#ifdef FACENET_HAS_CUDA

// Gallery element type on the device (math is fp32 either way).
using GpuStorage = DType;
GpuStorage parse_gpu_storage(const std::string& name);  // "fp32" | "fp16"
const char* to_string(GpuStorage storage);

// Exact search on the GPU. The gallery stays on the device between queries: add() converts
// and appends rows in place (capacity doubles when full, or reserve() it up front), remove()
// moves the last rows into the holes with one kernel; nothing is re-uploaded. Searches use
// the context's stream and workspace arena (grown outside the per-batch path).
class GpuFlatIndex {
 public:
  GpuFlatIndex(GpuContext& context, int dim, GpuStorage storage);

  int dim() const { return dim_; }
  int64_t size() const { return slots_.size(); }
  int64_t capacity() const { return capacity_; }
  GpuStorage storage() const { return storage_; }
  // Device bytes held by the gallery (vectors + norms + ids at the current capacity).
  std::size_t gallery_bytes() const;

  void reserve(int64_t capacity);
  void add(const float* vectors, int64_t n, int dim, const int64_t* ids = nullptr);
  int64_t remove(const int64_t* ids, int64_t n);

  // Host in, host out; validates the queries (finite, dimension) and synchronises.
  void search(const float* queries, int64_t nq, int dim, int k, float* distances, int64_t* labels,
              KnnAlgorithm algorithm = KnnAlgorithm::kAuto);
  // Device in, device out, asynchronous on the context's stream; queries must be finite.
  // The workspace grows on the first call of a larger shape (or call prepare_search() with the
  // largest shape up front); later calls allocate nothing.
  void search_device(const float* queries, int64_t nq, int k, float* distances, int64_t* labels,
                     KnnAlgorithm algorithm = KnnAlgorithm::kAuto);
  void prepare_search(int64_t nq, int k, KnnAlgorithm algorithm);
  // What kAuto resolves to for this shape.
  KnnAlgorithm choose(int64_t nq, int k) const;

 private:
  void grow_to(int64_t capacity);
  std::size_t workspace_bytes(int64_t nq, int k, KnnAlgorithm algorithm) const;
  void search_fused(const float* queries, int64_t nq, int k, uint64_t* keys);
  void search_gemm(const float* queries, int64_t nq, int k, uint64_t* keys);
  void* gallery();

  GpuContext& context_;
  int dim_;
  GpuStorage storage_;
  int64_t capacity_ = 0;
  int sm_count_ = 0;
  DeviceBuffer<float> vectors_f32_;   // capacity x dim (kFloat32)
  DeviceBuffer<__half> vectors_f16_;  // capacity x dim (kFloat16)
  DeviceBuffer<float> norms_;         // capacity
  DeviceBuffer<int64_t> ids_;         // capacity, slot -> id
  DeviceBuffer<int64_t> moves_;       // removal plan scratch (dst, src pairs)
  SlotMap slots_;
};

#endif  // FACENET_HAS_CUDA

}  // namespace facenet
