// Exact L2 k-NN kernels: fused distance + top-k, GEMM-tile selection, list merges, gallery upkeep.
#include "kernels/knn.h"

#include <cuda_fp16.h>

#include <algorithm>

#include "engine/core/cuda_util.h"
#include "kernels/dtype_convert.cuh"
#include "kernels/launch.cuh"

namespace facenet {
namespace {

constexpr int kThreads = 256;    // block size of every selection kernel
constexpr int kTile = kThreads;  // most candidates one query can gain between two flush checks
constexpr int kMinBuffer = 2 * kTile;

__host__ __device__ inline int pow2_at_least(int x) {
  int p = 1;
  while (p < x) p <<= 1;
  return p;
}

// Candidate buffer per query: large enough that a tile never overflows it between flushes.
__host__ __device__ inline int buffer_size(int k2) {
  return k2 > kMinBuffer ? k2 : kMinBuffer;
}

__device__ __forceinline__ uint64_t make_key(float dist, int64_t slot) {
  dist = dist > 0.f ? dist : 0.f;  // also maps -0 to +0 so the bits stay monotone
  return (static_cast<uint64_t>(__float_as_uint(dist)) << 32) | static_cast<uint32_t>(slot);
}

// Block-wide top-k of QT queries in shared memory. Per query: `list` holds the best k2 keys
// sorted ascending (k <= k2 = next power of two), `buf` collects candidates below the k-th
// best key (`thresh`). When a buffer may overflow on the next tile, all buffers are bitonic-
// sorted and merged into their lists: list[i] = min(list[i], buf[k2-1-i]) is bitonic and
// holds the k2 smallest of both, so a bitonic merge restores the order.
// Every member function is called by all threads of the block (they synchronise).
template <int QT>
struct BlockTopK {
  uint64_t* list;    // [QT][k2]
  uint64_t* buf;     // [QT][cap]
  uint64_t* thresh;  // [QT]
  int* count;        // [QT]
  int k, k2, cap;

  static __host__ __device__ size_t bytes(int k2) {
    size_t b = sizeof(uint64_t) * QT * (k2 + buffer_size(k2) + 1) + sizeof(int) * QT;
    return (b + 15) / 16 * 16;
  }

  __device__ BlockTopK(unsigned char* smem, int k_, int k2_)
      : k(k_), k2(k2_), cap(buffer_size(k2_)) {
    list = reinterpret_cast<uint64_t*>(smem);
    buf = list + QT * k2;
    thresh = buf + QT * cap;
    count = reinterpret_cast<int*>(thresh + QT);
    for (int t = threadIdx.x; t < QT * k2; t += blockDim.x) list[t] = kKnnEmptyKey;
    if (threadIdx.x < QT) {
      thresh[threadIdx.x] = kKnnEmptyKey;
      count[threadIdx.x] = 0;
    }
    __syncthreads();
  }

  __device__ void offer(int qi, uint64_t key) {
    if (key < thresh[qi]) buf[qi * cap + atomicAdd(&count[qi], 1)] = key;
  }

  // Merges when a buffer could overflow during the next tile, or (final) when any is non-empty.
  __device__ void flush(bool final) {
    __syncthreads();
    bool need = false;
    for (int qi = 0; qi < QT; ++qi) need |= final ? count[qi] > 0 : count[qi] > cap - kTile;
    __syncthreads();  // everyone has read the counts before the merge resets them
    if (need) merge();
  }

  __device__ void store(int qi, uint64_t* out) const {
    for (int i = threadIdx.x; i < k; i += blockDim.x) out[i] = list[qi * k2 + i];
  }

 private:
  __device__ void merge() {
    for (int t = threadIdx.x; t < QT * cap; t += blockDim.x)
      if (t % cap >= count[t / cap]) buf[t] = kKnnEmptyKey;
    __syncthreads();
    for (int size = 2; size <= cap; size <<= 1)
      for (int stride = size >> 1; stride > 0; stride >>= 1) {
        for (int t = threadIdx.x; t < QT * (cap >> 1); t += blockDim.x) {
          uint64_t* s = buf + (t / (cap >> 1)) * cap;
          int p = t % (cap >> 1);
          int i = 2 * p - (p & (stride - 1));
          compare_swap(s[i], s[i + stride], (i & size) == 0);
        }
        __syncthreads();
      }
    for (int t = threadIdx.x; t < QT * k2; t += blockDim.x) {
      int qi = t / k2, i = t % k2;
      list[t] = min(list[t], buf[qi * cap + k2 - 1 - i]);
    }
    __syncthreads();
    for (int stride = k2 >> 1; stride > 0; stride >>= 1) {
      for (int t = threadIdx.x; t < QT * (k2 >> 1); t += blockDim.x) {
        uint64_t* s = list + (t / (k2 >> 1)) * k2;
        int p = t % (k2 >> 1);
        int i = 2 * p - (p & (stride - 1));
        compare_swap(s[i], s[i + stride], true);
      }
      __syncthreads();
    }
    if (threadIdx.x < QT) {
      thresh[threadIdx.x] = list[threadIdx.x * k2 + k - 1];
      count[threadIdx.x] = 0;
    }
    __syncthreads();
  }

  static __device__ void compare_swap(uint64_t& a, uint64_t& b, bool ascending) {
    uint64_t x = a, y = b;
    if ((x > y) == ascending) {
      a = y;
      b = x;
    }
  }
};

// Offers `lists` lists of k keys each (list l at keys + l * list_stride) to query 0 of `top`.
__device__ void offer_lists(BlockTopK<1>& top, const uint64_t* keys, int lists, int64_t list_stride,
                            int k) {
  const int64_t total = static_cast<int64_t>(lists) * k;
  for (int64_t base = 0; base < total; base += kThreads) {
    int64_t t = base + threadIdx.x;
    if (t < total) top.offer(0, keys[(t / k) * list_stride + t % k]);
    top.flush(false);
  }
}

// acc[qi] += row . qs[qi] for a gallery row in fp32 (dim % 4 == 0, 16-byte aligned rows).
template <int QT>
__device__ __forceinline__ void accumulate(const float* row, const float* qs, int dim,
                                           float (&acc)[QT]) {
  for (int c = 0; c < dim; c += 4) {
    float4 g = __ldg(reinterpret_cast<const float4*>(row + c));
#pragma unroll
    for (int qi = 0; qi < QT; ++qi) {
      float4 q = *reinterpret_cast<const float4*>(qs + qi * dim + c);
      acc[qi] = fmaf(g.x, q.x, fmaf(g.y, q.y, fmaf(g.z, q.z, fmaf(g.w, q.w, acc[qi]))));
    }
  }
}

// Same for an fp16 row (dim % 8 == 0): 16-byte loads of 8 halves, math in fp32.
template <int QT>
__device__ __forceinline__ void accumulate(const __half* row, const float* qs, int dim,
                                           float (&acc)[QT]) {
  for (int c = 0; c < dim; c += 8) {
    uint4 raw = __ldg(reinterpret_cast<const uint4*>(row + c));
    const __half2* h = reinterpret_cast<const __half2*>(&raw);
    float2 g[4] = {__half22float2(h[0]), __half22float2(h[1]), __half22float2(h[2]),
                   __half22float2(h[3])};
#pragma unroll
    for (int qi = 0; qi < QT; ++qi) {
      const float* q = qs + qi * dim + c;
      float a = acc[qi];
#pragma unroll
      for (int j = 0; j < 4; ++j) a = fmaf(g[j].x, q[2 * j], fmaf(g[j].y, q[2 * j + 1], a));
      acc[qi] = a;
    }
  }
}

// Fused distance + top-k for one gallery split and one tile of QT queries.
// queries: fp32 [nq][dim] row-major; gallery: T [n][dim] row-major; norms: [n] = ||g||^2.
// Grid (splits, ceil(nq / QT)), kThreads threads. The block owns queries [QT * blockIdx.y, +QT)
// (copied to shared memory with their norms) and gallery slots [split_rows * blockIdx.x, +
// split_rows). Per tile of kThreads slots each thread owns one gallery row: it streams the row
// once from global memory, computes its QT dot products in fp32 registers and offers
// ||q||^2 + ||g||^2 - 2 q.g as keys to the block's top-k. No distance leaves the SM; the block
// writes its k best keys per query to partial[blockIdx.x][q][k].
template <typename T, int QT>
__global__ void __launch_bounds__(kThreads)
    knn_fused_kernel(const float* __restrict__ queries, int64_t nq, const T* __restrict__ gallery,
                     const float* __restrict__ norms, int64_t n, int dim, int k, int k2,
                     int64_t split_rows, uint64_t* __restrict__ partial) {
  extern __shared__ __align__(16) unsigned char smem[];
  BlockTopK<QT> top(smem, k, k2);
  float* qs = reinterpret_cast<float*>(smem + BlockTopK<QT>::bytes(k2));  // [QT][dim]
  float* qn = qs + QT * dim;                                              // [QT]
  const int64_t q0 = static_cast<int64_t>(blockIdx.y) * QT;
  const int valid = static_cast<int>(min(static_cast<int64_t>(QT), nq - q0));
  for (int t = threadIdx.x; t < QT * dim; t += blockDim.x)
    qs[t] = t / dim < valid ? queries[q0 * dim + t] : 0.f;
  __syncthreads();
  if (threadIdx.x < QT) {
    float s = 0.f;
    for (int c = 0; c < dim; ++c) s = fmaf(qs[threadIdx.x * dim + c], qs[threadIdx.x * dim + c], s);
    qn[threadIdx.x] = s;
  }
  __syncthreads();

  const int64_t begin = split_rows * blockIdx.x;
  const int64_t end = min(n, begin + split_rows);
  for (int64_t base = begin; base < end; base += kThreads) {
    const int64_t slot = base + threadIdx.x;
    if (slot < end) {
      float acc[QT] = {};
      accumulate<QT>(gallery + slot * dim, qs, dim, acc);
      const float gn = norms[slot];
#pragma unroll
      for (int qi = 0; qi < QT; ++qi)
        if (qi < valid) top.offer(qi, make_key(qn[qi] + gn - 2.f * acc[qi], slot));
    }
    top.flush(false);
  }
  top.flush(true);
  for (int qi = 0; qi < valid; ++qi) top.store(qi, partial + (blockIdx.x * nq + q0 + qi) * k);
}

// Selection over one cuBLAS tile of inner products.
// ip: fp32 [nq][rows] (query-major, ip[q * rows + j] = q . g[row0 + j]); query_norms [nq];
// gallery_norms [n]; running: [nq][k] keys of the tiles before (empty keys at first).
// Grid (nq), kThreads threads; a block owns one query: it seeds its top-k with the running
// list, scans the tile's row of distances (coalesced, one slot per thread per step) and writes
// the merged list back.
__global__ void __launch_bounds__(kThreads)
    knn_select_tile_kernel(const float* __restrict__ ip, const float* __restrict__ query_norms,
                           const float* __restrict__ gallery_norms, int64_t rows, int64_t row0,
                           int k, int k2, uint64_t* __restrict__ running) {
  extern __shared__ __align__(16) unsigned char smem[];
  BlockTopK<1> top(smem, k, k2);
  uint64_t* run = running + static_cast<int64_t>(blockIdx.x) * k;
  offer_lists(top, run, 1, 0, k);
  const float qn = query_norms[blockIdx.x];
  const float* row = ip + static_cast<int64_t>(blockIdx.x) * rows;
  for (int64_t base = 0; base < rows; base += kThreads) {
    const int64_t j = base + threadIdx.x;
    if (j < rows) top.offer(0, make_key(qn + gallery_norms[row0 + j] - 2.f * row[j], row0 + j));
    top.flush(false);
  }
  top.flush(true);
  top.store(0, run);
}

// Merge of per-split top-k lists. partial: [lists][nq][k] keys; out: [nq][k].
// Grid (nq), kThreads threads; a block owns one query and offers its lists * k keys.
__global__ void __launch_bounds__(kThreads)
    knn_merge_kernel(const uint64_t* __restrict__ partial, int lists, int64_t nq, int k, int k2,
                     uint64_t* __restrict__ out) {
  extern __shared__ __align__(16) unsigned char smem[];
  BlockTopK<1> top(smem, k, k2);
  offer_lists(top, partial + static_cast<int64_t>(blockIdx.x) * k, lists, nq * k, k);
  top.flush(true);
  top.store(0, out + static_cast<int64_t>(blockIdx.x) * k);
}

// Keys to results, one thread per entry: keys/distances/labels [count].
__global__ void knn_keys_to_results_kernel(const uint64_t* __restrict__ keys, int64_t count,
                                           const int64_t* __restrict__ ids,
                                           float* __restrict__ distances,
                                           int64_t* __restrict__ labels) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count) return;
  const uint64_t key = keys[i];
  const bool empty = key == kKnnEmptyKey;
  distances[i] = empty ? __int_as_float(0x7f800000) : __uint_as_float(key >> 32);
  labels[i] = empty ? -1 : ids[key & 0xffffffffu];
}

// Gallery rows in: src fp32 [n][dim]; dst T [n][dim] (nullable); norms [n] (nullable) get the
// squared norm of the stored values. One warp per row, lanes stride over the dimensions.
template <typename T>
__global__ void knn_store_rows_kernel(const float* __restrict__ src, int64_t n, int dim,
                                      T* __restrict__ dst, float* __restrict__ norms) {
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (row >= n) return;  // uniform per warp
  float s = 0.f;
  for (int c = lane; c < dim; c += 32) {
    const T stored = from_float<T>(src[row * dim + c]);
    if (dst) dst[row * dim + c] = stored;
    const float back = to_float(stored);
    s = fmaf(back, back, s);
  }
  for (int offset = 16; offset > 0; offset >>= 1) s += __shfl_xor_sync(0xffffffffu, s, offset);
  if (lane == 0 && norms) norms[row] = s;
}

// Removal moves: moves = [dst][m], [src][m] slots. Block per move; threads stride the row.
template <typename T>
__global__ void knn_move_rows_kernel(const int64_t* __restrict__ moves, int64_t m, int dim,
                                     T* __restrict__ vectors, float* __restrict__ norms,
                                     int64_t* __restrict__ ids) {
  const int64_t dst = moves[blockIdx.x], src = moves[m + blockIdx.x];
  for (int c = threadIdx.x; c < dim; c += blockDim.x)
    vectors[dst * dim + c] = vectors[src * dim + c];
  if (threadIdx.x == 0) {
    norms[dst] = norms[src];
    ids[dst] = ids[src];
  }
}

void check_dim(int dim, const char* launcher) {
  check_arg(dim >= 8 && dim % 8 == 0, launcher, "dim = ", dim, " must be a multiple of 8");
}

// Gallery rows are fp16, or fp32 for every other dtype (as GpuFlatIndex stores them).
template <typename Fn>
void dispatch_storage(DType dtype, const char* launcher, Fn&& fn) {
  const DType storage = dtype == DType::kFloat16 ? DType::kFloat16 : DType::kFloat32;
  dispatch_dtype_among<float, __half>(storage, launcher, std::forward<Fn>(fn));
}

template <typename T, int QT>
void launch_fused(const float* queries, int64_t nq, const T* gallery, const float* norms, int64_t n,
                  int dim, int k, int splits, uint64_t* partial, cudaStream_t stream) {
  const int k2 = pow2_at_least(k);
  const size_t smem = BlockTopK<QT>::bytes(k2) + sizeof(float) * QT * (dim + 1);
  const int64_t split_rows = (n + splits - 1) / splits;
  const dim3 grid(splits, blocks_for(nq, QT));
  const auto kernel = knn_fused_kernel<T, QT>;
  allow_dynamic_smem(kernel, smem, "knn_fused_partial", "knn_fused_kernel");
  kernel<<<grid, kThreads, smem, stream>>>(queries, nq, gallery, norms, n, dim, k, k2, split_rows,
                                           partial);
  FN_LAUNCH_CHECK("knn_fused_kernel");
}

// The fused launch for qt queries per block (knn_fused_queries_per_block: 1, 2, 4 or 8).
template <typename T>
void launch_fused_for(int qt, const float* queries, int64_t nq, const T* g, const float* norms,
                      int64_t n, int dim, int k, int splits, uint64_t* partial,
                      cudaStream_t stream) {
  switch (qt) {
    case 1:
      return launch_fused<T, 1>(queries, nq, g, norms, n, dim, k, splits, partial, stream);
    case 2:
      return launch_fused<T, 2>(queries, nq, g, norms, n, dim, k, splits, partial, stream);
    case 4:
      return launch_fused<T, 4>(queries, nq, g, norms, n, dim, k, splits, partial, stream);
    default:
      return launch_fused<T, 8>(queries, nq, g, norms, n, dim, k, splits, partial, stream);
  }
}

}  // namespace

void knn_store_rows(const float* src, int64_t n, int dim, DType dtype, void* dst, float* norms,
                    cudaStream_t stream) {
  const char* what = "knn_store_rows";
  check_dim(dim, what);
  if (n <= 0) return;
  constexpr int kBlock = 256;
  const unsigned grid = blocks_for(n * 32, kBlock);  // one warp per row
  dispatch_storage(dtype, what, [&](auto t) {
    using T = decltype(t);
    knn_store_rows_kernel<T><<<grid, kBlock, 0, stream>>>(src, n, dim, static_cast<T*>(dst), norms);
  });
  FN_LAUNCH_CHECK("knn_store_rows_kernel");
}

void knn_move_rows(const int64_t* moves, int64_t m, int dim, DType dtype, void* vectors,
                   float* norms, int64_t* ids, cudaStream_t stream) {
  const char* what = "knn_move_rows";
  check_dim(dim, what);
  if (m <= 0) return;
  constexpr int kBlock = 128;
  const unsigned grid = static_cast<unsigned>(m);  // one block per move
  dispatch_storage(dtype, what, [&](auto t) {
    using T = decltype(t);
    knn_move_rows_kernel<T>
        <<<grid, kBlock, 0, stream>>>(moves, m, dim, static_cast<T*>(vectors), norms, ids);
  });
  FN_LAUNCH_CHECK("knn_move_rows_kernel");
}

int knn_fused_queries_per_block(int64_t nq, int k) {
  // Shared memory per query grows with k (list + buffer, 8 bytes a key); fewer queries per block
  // for large k keep it near 48 KiB. Never more queries than there are.
  const int k2 = pow2_at_least(std::max(k, 1));
  const int by_k = k2 <= 128 ? 8 : k2 <= 256 ? 4 : k2 <= 512 ? 2 : 1;
  return std::min<int64_t>(by_k, pow2_at_least(static_cast<int>(std::min<int64_t>(nq, 8))));
}

void knn_fused_partial(const float* queries, int64_t nq, const void* gallery, DType dtype,
                       const float* norms, int64_t n, int dim, int k, int splits, uint64_t* partial,
                       cudaStream_t stream) {
  const char* what = "knn_fused_partial";
  check_range(k, 1, kKnnMaxK, what, "k");
  check_dim(dim, what);
  check_range(n, 1, 0xffffffffll, what, "gallery size");
  check_range(splits, 1, 65535, what, "splits");
  if (nq <= 0) return;
  const int qt = knn_fused_queries_per_block(nq, k);
  check_arg((nq + qt - 1) / qt <= 65535, what, nq, " queries in one launch (at most ",
            int64_t{65535} * qt, " for k = ", k, ")");
  dispatch_storage(dtype, what, [&](auto t) {
    using T = decltype(t);
    launch_fused_for<T>(qt, queries, nq, static_cast<const T*>(gallery), norms, n, dim, k, splits,
                        partial, stream);
  });
}

void knn_select_tile(const float* ip, const float* query_norms, const float* gallery_norms,
                     int64_t nq, int64_t rows, int64_t row0, int k, uint64_t* running,
                     cudaStream_t stream) {
  const char* what = "knn_select_tile";
  check_range(k, 1, kKnnMaxK, what, "k");
  check_arg(row0 + rows <= 0xffffffffll, what, "slot ", row0 + rows, " out of range");
  if (nq <= 0 || rows <= 0) return;
  const int k2 = pow2_at_least(k);
  const size_t smem = BlockTopK<1>::bytes(k2);
  const unsigned grid = static_cast<unsigned>(nq);  // one block per query
  allow_dynamic_smem(knn_select_tile_kernel, smem, what, "knn_select_tile_kernel");
  knn_select_tile_kernel<<<grid, kThreads, smem, stream>>>(ip, query_norms, gallery_norms, rows,
                                                           row0, k, k2, running);
  FN_LAUNCH_CHECK("knn_select_tile_kernel");
}

void knn_merge_partial(const uint64_t* partial, int lists, int64_t nq, int k, uint64_t* out,
                       cudaStream_t stream) {
  const char* what = "knn_merge_partial";
  check_range(k, 1, kKnnMaxK, what, "k");
  check_arg(lists >= 1, what, "lists = ", lists, " must be >= 1");
  if (nq <= 0) return;
  const int k2 = pow2_at_least(k);
  const size_t smem = BlockTopK<1>::bytes(k2);
  const unsigned grid = static_cast<unsigned>(nq);  // one block per query
  allow_dynamic_smem(knn_merge_kernel, smem, what, "knn_merge_kernel");
  knn_merge_kernel<<<grid, kThreads, smem, stream>>>(partial, lists, nq, k, k2, out);
  FN_LAUNCH_CHECK("knn_merge_kernel");
}

void knn_keys_to_results(const uint64_t* keys, int64_t count, const int64_t* ids, float* distances,
                         int64_t* labels, cudaStream_t stream) {
  if (count <= 0) return;
  constexpr int kBlock = 256;
  const unsigned grid = blocks_for(count, kBlock);
  knn_keys_to_results_kernel<<<grid, kBlock, 0, stream>>>(keys, count, ids, distances, labels);
  FN_LAUNCH_CHECK("knn_keys_to_results_kernel");
}

}  // namespace facenet
