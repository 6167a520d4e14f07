// Launchers of the exact L2 k-NN kernels (fused distance + top-k, GEMM-tile selection, merges,
// gallery upkeep). Plain C++: the kernels themselves are static in knn.cu.
//
// Selection works on 64-bit keys: (float bits of the squared distance, clamped at 0) << 32 |
// gallery slot. Non-negative float bits order like the floats, so one integer comparison
// orders by distance and breaks ties by the smaller slot. kKnnEmptyKey pads missing results.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "engine/core/dtype.h"

namespace facenet {

// Gallery rows are stored as DType::kFloat32 or DType::kFloat16.

constexpr int kKnnMaxK = 1024;
constexpr uint64_t kKnnEmptyKey = ~uint64_t{0};

// Rows are fp32 [n][dim]; `dst` receives them in `dtype` (nullable) and `norms` the squared
// norms of the stored (rounded) values (nullable). dim % 8 == 0.
void knn_store_rows(const float* src, int64_t n, int dim, DType dtype, void* dst, float* norms,
                    cudaStream_t stream);

// moves = [dst_0..dst_{m-1}, src_0..src_{m-1}] slots (device); copies vector, norm and id of
// each src slot to its dst slot. Sources and destinations must be disjoint.
void knn_move_rows(const int64_t* moves, int64_t m, int dim, DType dtype, void* vectors,
                   float* norms, int64_t* ids, cudaStream_t stream);

// Queries per block of the fused kernel for this shape (the host sizes its grids with it).
int knn_fused_queries_per_block(int64_t nq, int k);

// Fused distances + top-k: `splits` blocks share the gallery for each tile of queries and each
// writes its top-k keys to partial[split][q][k]. queries fp32 [nq][dim], gallery [n][dim].
void knn_fused_partial(const float* queries, int64_t nq, const void* gallery, DType dtype,
                       const float* norms, int64_t n, int dim, int k, int splits, uint64_t* partial,
                       cudaStream_t stream);

// Selection over one GEMM tile: ip[q * rows + j] = q . g[row0 + j] for nq queries; merges the
// tile's keys into running[q][k] (initialise it with kKnnEmptyKey bytes, 0xFF).
void knn_select_tile(const float* ip, const float* query_norms, const float* gallery_norms,
                     int64_t nq, int64_t rows, int64_t row0, int k, uint64_t* running,
                     cudaStream_t stream);

// Merges `lists` top-k lists per query, partial[list][q][k], into out[q][k].
void knn_merge_partial(const uint64_t* partial, int lists, int64_t nq, int k, uint64_t* out,
                       cudaStream_t stream);

// Keys to results: distance (+inf for kKnnEmptyKey) and label ids[slot] (-1 for empty).
void knn_keys_to_results(const uint64_t* keys, int64_t count, const int64_t* ids, float* distances,
                         int64_t* labels, cudaStream_t stream);

}  // namespace facenet
