// Launchers of the triplet-loss kernels: Gram distances with fused batch-hard mining,
// per-anchor batch-all / semi-hard mining, fixed-order loss sums and the gradient.
//
// All pointers are device pointers; matrices are row-major. Embeddings E are B x d float32,
// labels B int32, triplets T x 3 int32 (a, p, n). D(i, j) is the squared L2 distance
// |e_i|^2 + |e_j|^2 - 2 e_i.e_j clamped at 0, with D(i, i) = 0.
// Launchers enqueue on `stream` and return without synchronising.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace facenet {

// Side of the square distance tile; batch-hard partials are B x triplet_tile_count(B).
int64_t triplet_tile_count(int64_t batch);

// norms[i] = |e_i|^2.
void launch_triplet_row_norms(const float* e, int64_t batch, int64_t dim, float* norms,
                              cudaStream_t stream);

// d (B x B) = D, computed for the upper tile triangle and mirrored.
void launch_triplet_sq_l2(const float* e, const float* norms, int64_t batch, int64_t dim, float* d,
                          cudaStream_t stream);

// Batch-hard candidates of one anchor over a set of columns: the farthest positive and the
// closest negative (index INT32_MAX, value -inf / +inf, when there is none).
struct TripletHardPartial {
  float pos_val, neg_val;
  int32_t pos_idx, neg_idx;
};

// Batch-hard mining fused into the distance tiles: D never reaches global memory. For row i
// and column tile t, writes the candidates among that tile's columns to partials[i * tiles + t].
void launch_triplet_batch_hard_tiles(const float* e, const float* norms, const int32_t* labels,
                                     int64_t batch, int64_t dim, TripletHardPartial* partials,
                                     cudaStream_t stream);

// Reduces the partials per anchor: triplets[a] = (a, p, n) and losses[a] = hinge, or
// (a, -1, -1) with loss 0 when the anchor has no positive or no negative.
void launch_triplet_batch_hard_select(const TripletHardPartial* partials, int64_t batch,
                                      float margin, int32_t* triplets, float* losses,
                                      cudaStream_t stream);

// Semi-hard mining from D: for each anchor a with a negative, its k-th positive (ascending
// index) gets slot pair_offset[a] + k of triplets/losses. max_positives bounds shared memory.
void launch_triplet_semi_hard(const float* d, const int32_t* labels, int64_t batch,
                              const int64_t* pair_offset, int64_t max_positives, float margin,
                              int32_t* triplets, float* losses, cudaStream_t stream);

// Batch-all from D. Always: anchor_loss[a] (sum of hinges) and anchor_active[a] (count > 0).
// coef != nullptr: writes row a of C (C(a,p) = #active n, C(a,n) = -#active p, else 0) and
// adds column sums of C into colsum (must be zeroed). emit_offset != nullptr: instead writes
// every active triplet of anchor a (order within the anchor unspecified) from
// emit_offset[a] on, with its loss.
void launch_triplet_batch_all(const float* d, const int32_t* labels, int64_t batch,
                              int64_t max_positives, float margin, double* anchor_loss,
                              int64_t* anchor_active, float* coef, int32_t* colsum,
                              const int64_t* emit_offset, int32_t* triplets, float* losses,
                              cudaStream_t stream);

// Given triplets: losses[t] = hinge of direct-difference distances.
void launch_triplet_given(const float* e, int64_t dim, const int32_t* triplets, int64_t count,
                          float margin, float* losses, cudaStream_t stream);

// Fixed-order sums (one block; same bits every run): sum[0] = sum of values, active[0] =
// number of values > 0 (or the sum of `counts` when given).
void launch_triplet_sum(const float* values, int64_t count, double* sum, int64_t* active,
                        cudaStream_t stream);
void launch_triplet_sum(const double* values, const int64_t* counts, int64_t count, double* sum,
                        int64_t* active, cudaStream_t stream);

// grad (B x d) = dJ/dE over the triplets with loss > 0 (entries with p < 0 are skipped).
// deterministic: each row gathers its contributions in triplet order; otherwise atomics.
void launch_triplet_grad_sparse(const float* e, int64_t batch, int64_t dim, const int32_t* triplets,
                                const float* losses, int64_t count, bool deterministic, float* grad,
                                cudaStream_t stream);

// Batch-all gradient from C: grad = 2 (s_i e_i - (C + C^T) E) with s = colsum (row sums of C
// are 0). work is B x d scratch. Uses cuBLAS SGEMM on `cublas` (bound to the same stream).
void launch_triplet_grad_dense(cublasHandle_t cublas, const float* e, int64_t batch, int64_t dim,
                               const float* coef, const int32_t* colsum, float* work, float* grad,
                               cudaStream_t stream);

}  // namespace facenet
