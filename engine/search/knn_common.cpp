// k-NN pieces both indexes use: algorithm names, the gallery allocator, slot bookkeeping and
// argument checks.
#include "engine/search/knn_common.h"

#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <new>

#include "engine/core/error.h"
#include "engine/search/knn.h"

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

// ---- Gallery memory --------------------------------------------------------------------------

namespace {
constexpr std::size_t kHugePage = std::size_t{2} << 20;
constexpr std::size_t kHugeFrom = std::size_t{4} << 20;
}  // namespace

void* huge_page_allocate(std::size_t bytes) {
  if (bytes < kHugeFrom) {
    if (void* p = std::malloc(std::max<std::size_t>(bytes, 1))) return p;
    throw std::bad_alloc();
  }
  const std::size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  void* p = std::aligned_alloc(kHugePage, rounded);
  if (!p) throw std::bad_alloc();
  madvise(p, rounded, MADV_HUGEPAGE);  // advice only: without THP the pages stay 4 KiB
  return p;
}

void huge_page_free(void* p, std::size_t) noexcept {
  std::free(p);
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

void SlotMap::assign_sequential(int64_t n) {
  slot_.clear();
  ids_.resize(n);
  for (int64_t i = 0; i < n; ++i) ids_[i] = i;
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

namespace knn_detail {

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

}  // namespace knn_detail

}  // namespace facenet
