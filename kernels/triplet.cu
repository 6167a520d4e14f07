// CUDA kernels of the triplet loss: register-tiled Gram distances (upper tile triangle,
// mirrored) with batch-hard mining fused into the epilogue, per-anchor batch-all and semi-hard
// mining, fixed-order loss sums, and the gradient.
// Over 600 lines for a reason: one op whose kernels share the static device helpers above
// them (block reductions, ordered compaction, the Gram tile), which must stay in this file.
#include "kernels/triplet.h"

#include <climits>
#include <cmath>

#include "engine/core/cuda_util.h"
#include "engine/core/error.h"
#include "kernels/launch.cuh"

namespace facenet {
namespace {

constexpr int kTile = 128;         // rows and columns of a distance tile
constexpr int kBk = 8;             // k-slice staged in shared memory per step
constexpr int kTileThreads = 256;  // 16 x 16 threads, 8 x 8 outputs each
constexpr int kPad = 4;            // keeps rows 16-byte aligned, staggers banks
constexpr int kWarps = kTileThreads / 32;
constexpr int kAnchorThreads = 256;  // per-anchor mining kernels
constexpr int kGatherThreads = 128;  // deterministic gradient gather
constexpr int kSumThreads = 1024;    // the one block of the fixed-order sums
constexpr int kGatherFloats = 8192;  // shared accumulator of the gather: rows * dim floats
constexpr int64_t kMaxGatherDim = 12288;
constexpr unsigned kFull = 0xffffffffu;
constexpr int32_t kNone = INT32_MAX;  // "no candidate" index; loses every tie

// ---- small device helpers --------------------------------------------------------------------

// Candidate order for the farthest positive (kMax) or the closest negative: better value, then
// the smaller index. Order-independent, so every reduction tree gives the same answer.
template <bool kMax>
__device__ __forceinline__ void take_better(float& v, int32_t& i, float ov, int32_t oi) {
  const bool better = kMax ? ov > v : ov < v;
  if (better || (ov == v && oi < i)) {
    v = ov;
    i = oi;
  }
}

template <bool kMax>
__device__ __forceinline__ void shfl_xor_better(float& v, int32_t& i, int lane_mask) {
  const float ov = __shfl_xor_sync(kFull, v, lane_mask);
  const int32_t oi = __shfl_xor_sync(kFull, i, lane_mask);
  take_better<kMax>(v, i, ov, oi);
}

template <bool kMax>
__device__ __forceinline__ void warp_better(float& v, int32_t& i) {
  for (int m = 16; m > 0; m >>= 1) shfl_xor_better<kMax>(v, i, m);
}

// Every thread ends with the block's best candidate. s_v, s_i: 32 entries of shared memory.
template <bool kMax>
__device__ void block_better(float& v, int32_t& i, float* s_v, int32_t* s_i) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  warp_better<kMax>(v, i);
  if (lane == 0) {
    s_v[warp] = v;
    s_i[warp] = i;
  }
  __syncthreads();
  v = s_v[0];
  i = s_i[0];
  for (int w = 1; w < static_cast<int>(blockDim.x >> 5); ++w)
    take_better<kMax>(v, i, s_v[w], s_i[w]);
  __syncthreads();
}

// Fixed-order block sum of (v, c): butterfly in each warp, then warps in index order. The
// result is valid in thread 0. s_v, s_c: 32 entries of shared memory.
__device__ void block_sum(double& v, long long& c, double* s_v, long long* s_c) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int m = 16; m > 0; m >>= 1) {
    v += __shfl_xor_sync(kFull, v, m);
    c += __shfl_xor_sync(kFull, c, m);
  }
  if (lane == 0) {
    s_v[warp] = v;
    s_c[warp] = c;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < static_cast<int>(blockDim.x >> 5); ++w) {
      v += s_v[w];
      c += s_c[w];
    }
  }
}

// Ordered stream compaction: writes the j in [0, n) with pred(j) to list, ascending, and
// returns their number (in every thread). All threads of the block call it; s_warp holds 32
// ints. Reading `list` afterwards is safe: the last step ends with a barrier.
template <typename Pred>
__device__ int block_compact(int64_t n, Pred pred, int32_t* list, int* s_warp) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = static_cast<int>(blockDim.x >> 5);
  int total = 0;
  for (int64_t j0 = 0; j0 < n; j0 += blockDim.x) {
    const int64_t j = j0 + threadIdx.x;
    const bool take = j < n && pred(j);
    const unsigned ballot = __ballot_sync(kFull, take);
    if (lane == 0) s_warp[warp] = __popc(ballot);
    __syncthreads();
    int base = total, step = 0;
    for (int w = 0; w < warps; ++w) {
      if (w < warp) base += s_warp[w];
      step += s_warp[w];
    }
    if (take) list[base + __popc(ballot & ((1u << lane) - 1u))] = static_cast<int32_t>(j);
    total += step;
    __syncthreads();
  }
  return total;
}

// ---- distance tiles --------------------------------------------------------------------------

struct TileShared {
  float a[kBk][kTile + kPad];  // k-slice of the row block, transposed: a[k][row]
  float b[kBk][kTile + kPad];  // k-slice of the column block, transposed
};

// Linear block index -> (ti, tj) with ti <= tj, row-major over the upper tile triangle.
__device__ __forceinline__ void upper_tile(int linear, int tiles, int& ti, int& tj) {
  ti = 0;
  int len = tiles;
  while (linear >= len) {
    linear -= len;
    ++ti;
    --len;
  }
  tj = ti + linear;
}

// Tile row (or column) of output m (0..7) of thread coordinate t (0..15): two groups of four,
// 64 apart, so that shared-memory reads are float4 and conflict-free.
__device__ __forceinline__ int tile_offset(int t, int m) {
  return (m < 4 ? 0 : 64) + t * 4 + (m & 3);
}

__device__ __forceinline__ float4 load_slice4(const float* e, int64_t row, int64_t k, int64_t batch,
                                              int64_t dim, bool vec) {
  float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
  if (row >= batch || k >= dim) return v;
  const float* p = e + row * dim + k;
  if (vec) return *reinterpret_cast<const float4*>(p);  // dim % 4 == 0, so k + 3 < dim
  v.x = p[0];
  if (k + 1 < dim) v.y = p[1];
  if (k + 2 < dim) v.z = p[2];
  if (k + 3 < dim) v.w = p[3];
  return v;
}

// acc[m][n] = e_i . e_j for i = i0 + tile_offset(ty, m), j = j0 + tile_offset(tx, n); rows
// past the batch read as zero. Thread (ty, tx) = (tid / 16, tid % 16). Global loads of the
// next k-slice are in flight while the current one is multiplied.
__device__ void gram_tile(const float* e, int64_t batch, int64_t dim, int64_t i0, int64_t j0,
                          TileShared& sh, float (&acc)[8][8]) {
  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  const int lrow = tid / 2, lk = (tid % 2) * 4;  // 256 threads load 128 rows x 8 k
  const bool vec = dim % 4 == 0;
#pragma unroll
  for (int m = 0; m < 8; ++m)
#pragma unroll
    for (int n = 0; n < 8; ++n) acc[m][n] = 0.f;
  float4 a = load_slice4(e, i0 + lrow, lk, batch, dim, vec);
  float4 b = load_slice4(e, j0 + lrow, lk, batch, dim, vec);
  for (int64_t k0 = 0; k0 < dim; k0 += kBk) {
    sh.a[lk + 0][lrow] = a.x;
    sh.a[lk + 1][lrow] = a.y;
    sh.a[lk + 2][lrow] = a.z;
    sh.a[lk + 3][lrow] = a.w;
    sh.b[lk + 0][lrow] = b.x;
    sh.b[lk + 1][lrow] = b.y;
    sh.b[lk + 2][lrow] = b.z;
    sh.b[lk + 3][lrow] = b.w;
    __syncthreads();
    if (k0 + kBk < dim) {
      a = load_slice4(e, i0 + lrow, k0 + kBk + lk, batch, dim, vec);
      b = load_slice4(e, j0 + lrow, k0 + kBk + lk, batch, dim, vec);
    }
#pragma unroll
    for (int kk = 0; kk < kBk; ++kk) {
      const float4 a0 = *reinterpret_cast<const float4*>(&sh.a[kk][ty * 4]);
      const float4 a1 = *reinterpret_cast<const float4*>(&sh.a[kk][64 + ty * 4]);
      const float4 b0 = *reinterpret_cast<const float4*>(&sh.b[kk][tx * 4]);
      const float4 b1 = *reinterpret_cast<const float4*>(&sh.b[kk][64 + tx * 4]);
      const float ra[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
      const float rb[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
      for (int m = 0; m < 8; ++m)
#pragma unroll
        for (int n = 0; n < 8; ++n) acc[m][n] = fmaf(ra[m], rb[n], acc[m][n]);
    }
    __syncthreads();
  }
}

// Gram -> squared distance in place: max(|e_i|^2 + |e_j|^2 - 2 g, 0), exactly 0 on i == j.
__device__ void gram_to_sq_l2(float (&acc)[8][8], const float* norms, int64_t batch, int64_t i0,
                              int64_t j0) {
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
  float nj[8];
#pragma unroll
  for (int n = 0; n < 8; ++n) {
    const int64_t j = j0 + tile_offset(tx, n);
    nj[n] = j < batch ? norms[j] : 0.f;
  }
#pragma unroll
  for (int m = 0; m < 8; ++m) {
    const int64_t i = i0 + tile_offset(ty, m);
    const float ni = i < batch ? norms[i] : 0.f;
#pragma unroll
    for (int n = 0; n < 8; ++n) {
      const int64_t j = j0 + tile_offset(tx, n);
      acc[m][n] = i == j ? 0.f : fmaxf(ni + nj[n] - 2.f * acc[m][n], 0.f);
    }
  }
}

// Stores up to four consecutive floats; float4 when aligned (row length % 4 == 0) and whole.
__device__ __forceinline__ void store4(float* p, float x, float y, float z, float w, int64_t valid,
                                       bool vec) {
  if (vec && valid >= 4) {
    *reinterpret_cast<float4*>(p) = make_float4(x, y, z, w);
    return;
  }
  if (valid > 0) p[0] = x;
  if (valid > 1) p[1] = y;
  if (valid > 2) p[2] = z;
  if (valid > 3) p[3] = w;
}

// Row norms. Shapes: e B x d, norms B. One warp per row, lanes stride over d.
__global__ void row_norms_kernel(const float* __restrict__ e, int64_t batch, int64_t dim,
                                 float* __restrict__ norms) {
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (row >= batch) return;
  float s = 0.f;
  for (int64_t k = lane; k < dim; k += 32) s = fmaf(e[row * dim + k], e[row * dim + k], s);
  for (int m = 16; m > 0; m >>= 1) s += __shfl_xor_sync(kFull, s, m);
  if (lane == 0) norms[row] = s;
}

// Full distance matrix. Shapes: e B x d, norms B, d_out B x B. One block per upper-triangle
// tile (ti <= tj) of 128 x 128; each thread owns 8 x 8 outputs (rows tile_offset(ty, .),
// columns tile_offset(tx, .)), stores them as float4 runs along rows, and for ti != tj also the
// mirrored tile as float4 runs along columns (each run of 4 rows is contiguous in D^T).
__global__ void __launch_bounds__(kTileThreads, 2)
    sq_l2_kernel(const float* __restrict__ e, const float* __restrict__ norms, int64_t batch,
                 int64_t dim, int tiles, float* __restrict__ d_out) {
  __shared__ __align__(16) TileShared sh;
  int ti, tj;
  upper_tile(blockIdx.x, tiles, ti, tj);
  const int64_t i0 = static_cast<int64_t>(ti) * kTile, j0 = static_cast<int64_t>(tj) * kTile;
  float acc[8][8];
  gram_tile(e, batch, dim, i0, j0, sh, acc);
  gram_to_sq_l2(acc, norms, batch, i0, j0);
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
  const bool vec = batch % 4 == 0;
#pragma unroll
  for (int m = 0; m < 8; ++m) {
    const int64_t i = i0 + tile_offset(ty, m);
    if (i >= batch) continue;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t j = j0 + h * 64 + tx * 4;
      store4(d_out + i * batch + j, acc[m][4 * h], acc[m][4 * h + 1], acc[m][4 * h + 2],
             acc[m][4 * h + 3], batch - j, vec);
    }
  }
  if (ti == tj) return;
#pragma unroll
  for (int n = 0; n < 8; ++n) {
    const int64_t j = j0 + tile_offset(tx, n);
    if (j >= batch) continue;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t i = i0 + h * 64 + ty * 4;
      store4(d_out + j * batch + i, acc[4 * h][n], acc[4 * h + 1][n], acc[4 * h + 2][n],
             acc[4 * h + 3][n], batch - i, vec);
    }
  }
}

// Batch-hard candidate updates; TripletHardPartial starts as hard_none().
__device__ __forceinline__ TripletHardPartial hard_none() {
  return {-INFINITY, INFINITY, kNone, kNone};
}

// Candidate j at distance v for the anchor `self`: a negative when labels differ, a positive
// when they agree and j != self.
__device__ __forceinline__ void hard_consider(TripletHardPartial& h, float v, int64_t j,
                                              bool same_label, int64_t self) {
  if (!same_label)
    take_better<false>(h.neg_val, h.neg_idx, v, static_cast<int32_t>(j));
  else if (j != self)
    take_better<true>(h.pos_val, h.pos_idx, v, static_cast<int32_t>(j));
}

__device__ __forceinline__ void hard_merge(TripletHardPartial& h, const TripletHardPartial& o) {
  take_better<true>(h.pos_val, h.pos_idx, o.pos_val, o.pos_idx);
  take_better<false>(h.neg_val, h.neg_idx, o.neg_val, o.neg_idx);
}

__device__ __forceinline__ void hard_merge_lane_xor(TripletHardPartial& h, int lane_mask) {
  shfl_xor_better<true>(h.pos_val, h.pos_idx, lane_mask);
  shfl_xor_better<false>(h.neg_val, h.neg_idx, lane_mask);
}

// Batch-hard mining fused into the distance tiles. Shapes: e B x d, norms/labels B, partials
// B x tiles. One block per upper-triangle tile (ti <= tj), thread layout as sq_l2_kernel.
// Rows of tile ti reduce over the tile's columns (8 per thread, then 16 lanes of a half-warp
// by shuffles) into partial [i][tj]. For ti != tj the tile also serves the rows of tile tj
// (D is symmetric): columns reduce over the 8 rows of a thread, the two half-warps by a
// shuffle, the 8 warps through shared memory, into partial [j][ti]. Every (row, tile) pair
// is written exactly once, so D itself never reaches global memory.
__global__ void __launch_bounds__(kTileThreads, 2)
    batch_hard_tiles_kernel(const float* __restrict__ e, const float* __restrict__ norms,
                            const int32_t* __restrict__ labels, int64_t batch, int64_t dim,
                            int tiles, TripletHardPartial* __restrict__ partials) {
  __shared__ __align__(16) TileShared sh;
  __shared__ int32_t s_lab_i[kTile], s_lab_j[kTile];
  __shared__ TripletHardPartial s_col[kWarps][kTile];
  int ti, tj;
  upper_tile(blockIdx.x, tiles, ti, tj);
  const int64_t i0 = static_cast<int64_t>(ti) * kTile, j0 = static_cast<int64_t>(tj) * kTile;
  for (int t = threadIdx.x; t < kTile; t += blockDim.x) {
    s_lab_i[t] = i0 + t < batch ? labels[i0 + t] : 0;
    s_lab_j[t] = j0 + t < batch ? labels[j0 + t] : 0;
  }
  float acc[8][8];
  gram_tile(e, batch, dim, i0, j0, sh, acc);  // its barriers publish s_lab_*
  gram_to_sq_l2(acc, norms, batch, i0, j0);
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

#pragma unroll
  for (int m = 0; m < 8; ++m) {
    const int r = tile_offset(ty, m);
    const int64_t i = i0 + r;
    TripletHardPartial h = hard_none();
#pragma unroll
    for (int n = 0; n < 8; ++n) {
      const int c = tile_offset(tx, n);
      if (j0 + c < batch) hard_consider(h, acc[m][n], j0 + c, s_lab_j[c] == s_lab_i[r], i);
    }
    for (int mask = 1; mask < 16; mask <<= 1) hard_merge_lane_xor(h, mask);
    if (tx == 0 && i < batch) partials[i * tiles + tj] = h;
  }
  if (ti == tj) return;

#pragma unroll
  for (int n = 0; n < 8; ++n) {
    const int c = tile_offset(tx, n);
    TripletHardPartial h = hard_none();
#pragma unroll
    for (int m = 0; m < 8; ++m) {
      const int r = tile_offset(ty, m);
      if (i0 + r < batch) hard_consider(h, acc[m][n], i0 + r, s_lab_i[r] == s_lab_j[c], j0 + c);
    }
    hard_merge_lane_xor(h, 16);  // lanes l and l ^ 16: same tx, ty = 2w and 2w + 1
    if (lane < 16) s_col[warp][c] = h;
  }
  __syncthreads();
  for (int c = threadIdx.x; c < kTile; c += blockDim.x) {
    if (j0 + c >= batch) continue;
    TripletHardPartial h = s_col[0][c];
    for (int w = 1; w < kWarps; ++w) hard_merge(h, s_col[w][c]);
    partials[(j0 + c) * tiles + ti] = h;
  }
}

// Batch-hard selection. Shapes: partials B x tiles, triplets B x 3, losses B. One thread per
// anchor reduces its row of partials in tile order and applies the hinge.
__global__ void batch_hard_select_kernel(const TripletHardPartial* __restrict__ partials,
                                         int64_t batch, int tiles, float margin,
                                         int32_t* __restrict__ triplets,
                                         float* __restrict__ losses) {
  const int64_t a = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (a >= batch) return;
  TripletHardPartial h = hard_none();
  for (int t = 0; t < tiles; ++t) hard_merge(h, partials[a * tiles + t]);
  const bool valid = h.pos_idx != kNone && h.neg_idx != kNone;
  triplets[3 * a] = static_cast<int32_t>(a);
  triplets[3 * a + 1] = valid ? h.pos_idx : -1;
  triplets[3 * a + 2] = valid ? h.neg_idx : -1;
  losses[a] = valid ? fmaxf(h.pos_val - h.neg_val + margin, 0.f) : 0.f;
}

// ---- per-anchor mining from D -----------------------------------------------------------------

// Semi-hard mining. Shapes: d B x B, labels B, pair_offset B + 1, triplets/losses per pair.
// One block per anchor a: compacts its positives in index order into shared memory, finds the
// closest negative (block reduction), then each warp takes positives k = warp, warp + 8, ...
// and its lanes scan the row for the closest negative beyond D(a, p). Dynamic shared memory:
// max_positives x (index, D(a, p)).
__global__ void __launch_bounds__(kAnchorThreads)
    semi_hard_kernel(const float* __restrict__ d, const int32_t* __restrict__ labels, int64_t batch,
                     const int64_t* __restrict__ pair_offset, int64_t max_positives, float margin,
                     int32_t* __restrict__ triplets, float* __restrict__ losses) {
  extern __shared__ __align__(16) unsigned char smem[];
  int32_t* s_pos = reinterpret_cast<int32_t*>(smem);
  float* s_dap = reinterpret_cast<float*>(s_pos + max_positives);
  __shared__ int s_warp[32];
  __shared__ float s_v[32];
  __shared__ int32_t s_i[32];
  const int64_t a = blockIdx.x;
  const int64_t first = pair_offset[a];
  if (pair_offset[a + 1] == first) return;  // no positive or no negative: nothing mined
  const int32_t la = labels[a];
  const float* row = d + a * batch;
  const int npos = block_compact(
      batch, [&](int64_t j) { return j != a && labels[j] == la; }, s_pos, s_warp);
  for (int k = threadIdx.x; k < npos; k += blockDim.x) s_dap[k] = row[s_pos[k]];
  float hv = INFINITY;
  int32_t hi = kNone;
  for (int64_t j = threadIdx.x; j < batch; j += blockDim.x)
    if (labels[j] != la) take_better<false>(hv, hi, row[j], static_cast<int32_t>(j));
  block_better<false>(hv, hi, s_v, s_i);  // its barriers also publish s_dap
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int k = warp; k < npos; k += blockDim.x >> 5) {
    const float dap = s_dap[k];
    float bv = INFINITY;
    int32_t bi = kNone;
    for (int64_t j = lane; j < batch; j += 32)
      if (labels[j] != la && row[j] > dap)
        take_better<false>(bv, bi, row[j], static_cast<int32_t>(j));
    warp_better<false>(bv, bi);
    if (lane == 0) {
      const bool semi = bi != kNone && bv < dap + margin;
      const int64_t slot = first + k;
      triplets[3 * slot] = static_cast<int32_t>(a);
      triplets[3 * slot + 1] = s_pos[k];
      triplets[3 * slot + 2] = semi ? bi : hi;
      losses[slot] = fmaxf(dap - (semi ? bv : hv) + margin, 0.f);
    }
  }
}

// Batch-all. Shapes: d B x B, labels B, anchor_loss/anchor_active B, coef B x B, colsum B.
// One block per anchor a: positives compacted into shared memory (index, D(a,p), count); each
// thread takes negatives j = tid, tid + 256, ... and loops over all positives, so a negative's
// count is a register and a positive's count is a warp ballot added to shared memory. Row a
// of coef is written completely (negatives in the loop, positives and a itself after it).
// Emit mode (emit_offset set) writes the active triplets instead, at a warp-aggregated cursor.
// Dynamic shared memory: max_positives x (index, D(a, p), count).
__global__ void __launch_bounds__(kAnchorThreads)
    batch_all_kernel(const float* __restrict__ d, const int32_t* __restrict__ labels, int64_t batch,
                     int64_t max_positives, float margin, double* __restrict__ anchor_loss,
                     int64_t* __restrict__ anchor_active, float* __restrict__ coef,
                     int32_t* __restrict__ colsum, const int64_t* __restrict__ emit_offset,
                     int32_t* __restrict__ triplets, float* __restrict__ losses) {
  extern __shared__ __align__(16) unsigned char smem[];
  int32_t* s_pos = reinterpret_cast<int32_t*>(smem);
  float* s_dap = reinterpret_cast<float*>(s_pos + max_positives);
  int* s_cnt = reinterpret_cast<int*>(s_dap + max_positives);
  __shared__ int s_warp[32];
  __shared__ double s_sum[32];
  __shared__ long long s_act[32];
  __shared__ int s_cursor;
  const int64_t a = blockIdx.x;
  const int32_t la = labels[a];
  const float* row = d + a * batch;
  const bool emit = emit_offset != nullptr;
  const int lane = threadIdx.x & 31;
  const int npos = block_compact(
      batch, [&](int64_t j) { return j != a && labels[j] == la; }, s_pos, s_warp);
  for (int k = threadIdx.x; k < npos; k += blockDim.x) {
    s_dap[k] = row[s_pos[k]];
    s_cnt[k] = 0;
  }
  if (threadIdx.x == 0) s_cursor = 0;
  __syncthreads();
  double loss = 0;
  long long active = 0;
  for (int64_t j0 = 0; j0 < batch; j0 += blockDim.x) {  // warp-uniform: ballots below
    const int64_t j = j0 + threadIdx.x;
    const bool neg = j < batch && labels[j] != la;
    const float dn = neg ? row[j] : 0.f;
    int cnt = 0;
    for (int k = 0; k < npos; ++k) {
      const float l = s_dap[k] - dn + margin;
      const bool on = neg && l > 0.f;
      if (on) {
        loss += l;
        ++cnt;
      }
      const unsigned ballot = __ballot_sync(kFull, on);
      if (emit) {
        int base = 0;
        if (lane == 0 && ballot) base = atomicAdd(&s_cursor, __popc(ballot));
        base = __shfl_sync(kFull, base, 0);
        if (on) {
          const int64_t slot = emit_offset[a] + base + __popc(ballot & ((1u << lane) - 1u));
          triplets[3 * slot] = static_cast<int32_t>(a);
          triplets[3 * slot + 1] = s_pos[k];
          triplets[3 * slot + 2] = static_cast<int32_t>(j);
          losses[slot] = l;
        }
      } else if (coef && lane == 0 && ballot) {
        atomicAdd(&s_cnt[k], __popc(ballot));
      }
    }
    active += cnt;
    if (!emit && coef && neg) {
      coef[a * batch + j] = static_cast<float>(-cnt);
      if (cnt) atomicAdd(&colsum[j], -cnt);
    }
  }
  if (emit) return;
  __syncthreads();  // s_cnt complete
  if (coef) {
    for (int k = threadIdx.x; k < npos; k += blockDim.x) {
      coef[a * batch + s_pos[k]] = static_cast<float>(s_cnt[k]);
      if (s_cnt[k]) atomicAdd(&colsum[s_pos[k]], s_cnt[k]);
    }
    if (threadIdx.x == 0) coef[a * batch + a] = 0.f;
  }
  block_sum(loss, active, s_sum, s_act);
  if (threadIdx.x == 0) {
    anchor_loss[a] = loss;
    anchor_active[a] = active;
  }
}

// Given triplets. Shapes: e B x d, triplets T x 3, losses T. One warp per triplet, lanes
// stride over d, direct differences (no Gram cancellation).
__global__ void given_kernel(const float* __restrict__ e, int64_t dim,
                             const int32_t* __restrict__ triplets, int64_t count, float margin,
                             float* __restrict__ losses) {
  const int64_t t = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (t >= count) return;
  const float* ea = e + triplets[3 * t] * dim;
  const float* ep = e + triplets[3 * t + 1] * dim;
  const float* en = e + triplets[3 * t + 2] * dim;
  float sap = 0.f, san = 0.f;
  for (int64_t k = lane; k < dim; k += 32) {
    const float dp = ea[k] - ep[k], dn = ea[k] - en[k];
    sap = fmaf(dp, dp, sap);
    san = fmaf(dn, dn, san);
  }
  for (int m = 16; m > 0; m >>= 1) {
    sap += __shfl_xor_sync(kFull, sap, m);
    san += __shfl_xor_sync(kFull, san, m);
  }
  if (lane == 0) losses[t] = fmaxf(sap - san + margin, 0.f);
}

// Fixed-order sum. Shapes: values (and counts) n. One block of kSumThreads: thread t adds
// elements t, t + 1024, ... in order, then block_sum. Same bits every run.
template <typename T>
__global__ void __launch_bounds__(kSumThreads)
    sum_kernel(const T* __restrict__ values, const int64_t* __restrict__ counts, int64_t n,
               double* __restrict__ sum, int64_t* __restrict__ active) {
  __shared__ double s_sum[32];
  __shared__ long long s_act[32];
  double v = 0;
  long long c = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    v += static_cast<double>(values[i]);
    c += counts ? counts[i] : (values[i] > 0 ? 1 : 0);
  }
  block_sum(v, c, s_sum, s_act);
  if (threadIdx.x == 0) {
    *sum = v;
    *active = c;
  }
}

// Deterministic sparse gradient. Shapes: e/grad B x d, triplets T x 3, losses T. One block
// per `rows` consecutive rows, accumulating them in shared memory (rows x d floats). The block
// walks the triplets in chunks of 128, compacts (in order) those with loss > 0 that touch its
// rows, and applies them one by one; thread t owns columns t, t + 128, ... so each element
// receives its terms in triplet order, without atomics.
__global__ void __launch_bounds__(kGatherThreads)
    grad_gather_kernel(const float* __restrict__ e, int64_t batch, int64_t dim,
                       const int32_t* __restrict__ triplets, const float* __restrict__ losses,
                       int64_t count, int rows, float* __restrict__ grad) {
  extern __shared__ __align__(16) unsigned char smem[];
  float* s_acc = reinterpret_cast<float*>(smem);
  __shared__ int32_t s_list[kGatherThreads];
  __shared__ int s_warp[32];
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * rows;
  const int64_t r1 = min(r0 + rows, batch);
  auto mine = [&](int32_t x) { return x >= r0 && x < r1; };
  for (int64_t q = threadIdx.x; q < (r1 - r0) * dim; q += blockDim.x) s_acc[q] = 0.f;
  for (int64_t c0 = 0; c0 < count; c0 += blockDim.x) {
    const int64_t chunk = min(static_cast<int64_t>(blockDim.x), count - c0);
    const int hits = block_compact(
        chunk,
        [&](int64_t q) {
          const int64_t t = c0 + q;
          return losses[t] > 0.f &&
                 (mine(triplets[3 * t]) || mine(triplets[3 * t + 1]) || mine(triplets[3 * t + 2]));
        },
        s_list, s_warp);  // its first barrier also orders the zeroing above
    for (int h = 0; h < hits; ++h) {
      const int64_t t = c0 + s_list[h];
      const int32_t a = triplets[3 * t], p = triplets[3 * t + 1], n = triplets[3 * t + 2];
      for (int64_t k = threadIdx.x; k < dim; k += blockDim.x) {
        const float ea = e[a * dim + k], ep = e[p * dim + k], en = e[n * dim + k];
        if (mine(a)) s_acc[(a - r0) * dim + k] += 2.f * (en - ep);
        if (mine(p)) s_acc[(p - r0) * dim + k] += 2.f * (ep - ea);
        if (mine(n)) s_acc[(n - r0) * dim + k] += 2.f * (ea - en);
      }
    }
  }
  __syncthreads();
  for (int64_t q = threadIdx.x; q < (r1 - r0) * dim; q += blockDim.x) grad[r0 * dim + q] = s_acc[q];
}

// Sparse gradient with atomics (grad zeroed beforehand). One warp per triplet, lanes stride
// over d; the order of the float additions varies from run to run.
__global__ void grad_scatter_kernel(const float* __restrict__ e, int64_t dim,
                                    const int32_t* __restrict__ triplets,
                                    const float* __restrict__ losses, int64_t count,
                                    float* __restrict__ grad) {
  const int64_t t = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  if (t >= count || !(losses[t] > 0.f)) return;
  const int64_t a = triplets[3 * t], p = triplets[3 * t + 1], n = triplets[3 * t + 2];
  for (int64_t k = threadIdx.x & 31; k < dim; k += 32) {
    const float ea = e[a * dim + k], ep = e[p * dim + k], en = e[n * dim + k];
    atomicAdd(&grad[a * dim + k], 2.f * (en - ep));
    atomicAdd(&grad[p * dim + k], 2.f * (ep - ea));
    atomicAdd(&grad[n * dim + k], 2.f * (ea - en));
  }
}

// Batch-all gradient epilogue. Shapes: e/work/grad B x d, colsum B. One thread per element:
// grad = 2 (colsum_i e_ik - work_ik), work = (C + C^T) E.
__global__ void grad_dense_finish_kernel(const float* __restrict__ e, int64_t batch, int64_t dim,
                                         const int32_t* __restrict__ colsum,
                                         const float* __restrict__ work, float* __restrict__ grad) {
  const int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q >= batch * dim) return;
  grad[q] = 2.f * (static_cast<float>(colsum[q / dim]) * e[q] - work[q]);
}

// ---- the triplet launchers' shape check (the generic checks are in launch.cuh) ---------------

void require_shape(int64_t batch, int64_t dim, const char* what) {
  check_arg(batch >= 1 && dim >= 1 && batch <= INT32_MAX, what,
            "batch must be in [1, 2^31) and dim >= 1, got ", batch, " x ", dim);
}

}  // namespace

// ---- launchers: validate -> sizes -> grid -> launch -> check -----------------------------------

int64_t triplet_tile_count(int64_t batch) {
  return (batch + kTile - 1) / kTile;
}

void launch_triplet_row_norms(const float* e, int64_t batch, int64_t dim, float* norms,
                              cudaStream_t stream) {
  require_shape(batch, dim, "triplet row norms");
  check_not_null(e, "triplet row norms", "embeddings");
  check_not_null(norms, "triplet row norms", "norms");
  const int block = 256;
  const unsigned grid = blocks_for(batch * 32, block);
  row_norms_kernel<<<grid, block, 0, stream>>>(e, batch, dim, norms);
  FN_LAUNCH_CHECK("row_norms_kernel");
}

void launch_triplet_sq_l2(const float* e, const float* norms, int64_t batch, int64_t dim, float* d,
                          cudaStream_t stream) {
  require_shape(batch, dim, "triplet distances");
  check_not_null(e, "triplet distances", "embeddings");
  check_not_null(norms, "triplet distances", "norms");
  check_not_null(d, "triplet distances", "distance matrix");
  const int tiles = static_cast<int>(triplet_tile_count(batch));
  const unsigned grid = static_cast<unsigned>(tiles) * (tiles + 1) / 2;
  sq_l2_kernel<<<grid, kTileThreads, 0, stream>>>(e, norms, batch, dim, tiles, d);
  FN_LAUNCH_CHECK("sq_l2_kernel");
}

void launch_triplet_batch_hard_tiles(const float* e, const float* norms, const int32_t* labels,
                                     int64_t batch, int64_t dim, TripletHardPartial* partials,
                                     cudaStream_t stream) {
  const char* what = "triplet batch-hard tiles";
  require_shape(batch, dim, what);
  check_not_null(e, what, "embeddings");
  check_not_null(norms, what, "norms");
  check_not_null(labels, what, "labels");
  check_not_null(partials, what, "partials");
  const int tiles = static_cast<int>(triplet_tile_count(batch));
  const unsigned grid = static_cast<unsigned>(tiles) * (tiles + 1) / 2;
  batch_hard_tiles_kernel<<<grid, kTileThreads, 0, stream>>>(e, norms, labels, batch, dim, tiles,
                                                             partials);
  FN_LAUNCH_CHECK("batch_hard_tiles_kernel");
}

void launch_triplet_batch_hard_select(const TripletHardPartial* partials, int64_t batch,
                                      float margin, int32_t* triplets, float* losses,
                                      cudaStream_t stream) {
  const char* what = "triplet batch-hard select";
  require_shape(batch, 1, what);
  check_not_null(partials, what, "partials");
  check_not_null(triplets, what, "triplets");
  check_not_null(losses, what, "losses");
  const int tiles = static_cast<int>(triplet_tile_count(batch));
  const int block = 256;
  const unsigned grid = blocks_for(batch, block);
  batch_hard_select_kernel<<<grid, block, 0, stream>>>(partials, batch, tiles, margin, triplets,
                                                       losses);
  FN_LAUNCH_CHECK("batch_hard_select_kernel");
}

void launch_triplet_semi_hard(const float* d, const int32_t* labels, int64_t batch,
                              const int64_t* pair_offset, int64_t max_positives, float margin,
                              int32_t* triplets, float* losses, cudaStream_t stream) {
  const char* what = "triplet semi-hard mining";
  require_shape(batch, 1, what);
  check_not_null(d, what, "distance matrix");
  check_not_null(labels, what, "labels");
  check_not_null(pair_offset, what, "pair offsets");
  const size_t smem = static_cast<size_t>(max_positives) * (sizeof(int32_t) + sizeof(float));
  allow_dynamic_smem(semi_hard_kernel, smem, what, "semi_hard_kernel", "the largest class");
  const unsigned grid = static_cast<unsigned>(batch);
  semi_hard_kernel<<<grid, kAnchorThreads, smem, stream>>>(d, labels, batch, pair_offset,
                                                           max_positives, margin, triplets, losses);
  FN_LAUNCH_CHECK("semi_hard_kernel");
}

void launch_triplet_batch_all(const float* d, const int32_t* labels, int64_t batch,
                              int64_t max_positives, float margin, double* anchor_loss,
                              int64_t* anchor_active, float* coef, int32_t* colsum,
                              const int64_t* emit_offset, int32_t* triplets, float* losses,
                              cudaStream_t stream) {
  const char* what = "triplet batch-all mining";
  require_shape(batch, 1, what);
  check_not_null(d, what, "distance matrix");
  check_not_null(labels, what, "labels");
  if (emit_offset) {
    check_not_null(triplets, what, "triplets");
    check_not_null(losses, what, "losses");
  } else {
    check_not_null(anchor_loss, what, "anchor losses");
    check_not_null(anchor_active, what, "anchor active counts");
    if (coef) check_not_null(colsum, what, "column sums");
  }
  const size_t smem = static_cast<size_t>(max_positives) * (2 * sizeof(int32_t) + sizeof(float));
  allow_dynamic_smem(batch_all_kernel, smem, what, "batch_all_kernel", "the largest class");
  const unsigned grid = static_cast<unsigned>(batch);
  batch_all_kernel<<<grid, kAnchorThreads, smem, stream>>>(d, labels, batch, max_positives, margin,
                                                           anchor_loss, anchor_active, coef, colsum,
                                                           emit_offset, triplets, losses);
  FN_LAUNCH_CHECK("batch_all_kernel");
}

void launch_triplet_given(const float* e, int64_t dim, const int32_t* triplets, int64_t count,
                          float margin, float* losses, cudaStream_t stream) {
  const char* what = "triplet loss of given triplets";
  if (count == 0) return;
  require_shape(count, dim, what);
  check_not_null(e, what, "embeddings");
  check_not_null(triplets, what, "triplets");
  check_not_null(losses, what, "losses");
  const int block = 256;
  const unsigned grid = blocks_for(count * 32, block);
  given_kernel<<<grid, block, 0, stream>>>(e, dim, triplets, count, margin, losses);
  FN_LAUNCH_CHECK("given_kernel");
}

void launch_triplet_sum(const float* values, int64_t count, double* sum, int64_t* active,
                        cudaStream_t stream) {
  check_not_null(sum, "triplet loss sum", "sum");
  check_not_null(active, "triplet loss sum", "active count");
  if (count > 0) check_not_null(values, "triplet loss sum", "values");
  sum_kernel<float><<<1, kSumThreads, 0, stream>>>(values, nullptr, count, sum, active);
  FN_LAUNCH_CHECK("sum_kernel<float>");
}

void launch_triplet_sum(const double* values, const int64_t* counts, int64_t count, double* sum,
                        int64_t* active, cudaStream_t stream) {
  check_not_null(sum, "triplet loss sum", "sum");
  check_not_null(active, "triplet loss sum", "active count");
  if (count > 0) check_not_null(values, "triplet loss sum", "values");
  sum_kernel<double><<<1, kSumThreads, 0, stream>>>(values, counts, count, sum, active);
  FN_LAUNCH_CHECK("sum_kernel<double>");
}

void launch_triplet_grad_sparse(const float* e, int64_t batch, int64_t dim, const int32_t* triplets,
                                const float* losses, int64_t count, bool deterministic, float* grad,
                                cudaStream_t stream) {
  const char* what = "triplet sparse gradient";
  require_shape(batch, dim, what);
  check_not_null(e, what, "embeddings");
  check_not_null(grad, what, "gradient");
  if (count > 0) {
    check_not_null(triplets, what, "triplets");
    check_not_null(losses, what, "losses");
  }
  if (deterministic) {
    check_arg(dim <= kMaxGatherDim, what,
              "the deterministic gradient supports dim <= ", kMaxGatherDim, ", got ", dim);
    const int rows =
        static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(32, kGatherFloats / dim)));
    const size_t smem = static_cast<size_t>(rows) * dim * sizeof(float);
    allow_dynamic_smem(grad_gather_kernel, smem, what, "grad_gather_kernel", "dim");
    const unsigned grid = blocks_for(batch, rows);
    grad_gather_kernel<<<grid, kGatherThreads, smem, stream>>>(e, batch, dim, triplets, losses,
                                                               count, rows, grad);
    FN_LAUNCH_CHECK("grad_gather_kernel");
    return;
  }
  FN_GPU_CHECK(cudaMemsetAsync(grad, 0, static_cast<size_t>(batch * dim) * sizeof(float), stream));
  if (count == 0) return;
  const int block = 256;
  const unsigned grid = blocks_for(count * 32, block);
  grad_scatter_kernel<<<grid, block, 0, stream>>>(e, dim, triplets, losses, count, grad);
  FN_LAUNCH_CHECK("grad_scatter_kernel");
}

void launch_triplet_grad_dense(cublasHandle_t cublas, const float* e, int64_t batch, int64_t dim,
                               const float* coef, const int32_t* colsum, float* work, float* grad,
                               cudaStream_t stream) {
  const char* what = "triplet batch-all gradient";
  require_shape(batch, dim, what);
  check_arg(dim <= INT32_MAX, what, "dim ", dim, " exceeds the cuBLAS int range");
  check_not_null(e, what, "embeddings");
  check_not_null(coef, what, "coefficients");
  check_not_null(colsum, what, "column sums");
  check_not_null(work, what, "work");
  check_not_null(grad, what, "gradient");
  // Row-major X is column-major X^T: work^T (d x B) = E^T C^T, then += E^T C.
  const int m = static_cast<int>(dim), n = static_cast<int>(batch);
  const float one = 1.f, zero = 0.f;
  FN_GPU_CHECK(cublasSetStream(cublas, stream));
  FN_GPU_CHECK(
      cublasSgemm(cublas, CUBLAS_OP_N, CUBLAS_OP_N, m, n, n, &one, e, m, coef, n, &zero, work, m));
  FN_GPU_CHECK(
      cublasSgemm(cublas, CUBLAS_OP_N, CUBLAS_OP_T, m, n, n, &one, e, m, coef, n, &one, work, m));
  const int block = 256;
  const unsigned grid = blocks_for(batch * dim, block);
  grad_dense_finish_kernel<<<grid, block, 0, stream>>>(e, batch, dim, colsum, work, grad);
  FN_LAUNCH_CHECK("grad_dense_finish_kernel");
}

}  // namespace facenet
