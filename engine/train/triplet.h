// Triplet loss (FaceNet): explicit triplets and online mining (batch-all, batch-hard,
// semi-hard) with dJ/dE, on the CPU (the reference) and on a CUDA GPU.
//
//   J = sum_t max(D(a_t, p_t) - D(a_t, n_t) + margin, 0),   D(i, j) = ||e_i - e_j||^2
//
// D is the SQUARED Euclidean distance, exactly as in the FaceNet formula (not its square
// root). Embeddings E are B x d, row-major, one row per sample; no normalisation is applied.
//
// Distances for mining come from the Gram matrix, D(i, j) = |e_i|^2 + |e_j|^2 - 2 e_i.e_j,
// clamped at 0 with D(i, i) = 0 exactly (FAISS-style). Explicit triplets use the direct
// difference sum_k (e_ik - e_jk)^2, which has no cancellation.
//
// Which triplets count, per mode (a != p always; "positive" = same label, "negative" =
// different label):
//   explicit    the given (a, p, n) triplets, in order; count = number of triplets.
//   batch_all   every valid triplet (a, p, n); count = number of valid triplets, so
//               loss_mean = loss_sum / count. (Hermans et al.'s "mean over active" is
//               loss_sum / active.) `triplets` lists the ACTIVE triplets only.
//   batch_hard  one triplet per anchor that has a positive and a negative: the farthest
//               positive and the closest negative; count = number of such anchors.
//   semi_hard   one triplet per anchor-positive pair whose anchor has a negative: the closest
//               negative with D(a, p) < D(a, n) < D(a, p) + margin; when there is none, the
//               closest negative overall (FaceNet); count = number of such pairs.
// Ties pick the smallest index. active = triplets with loss > 0. count == 0 gives
// loss_sum = loss_mean = 0 and a zero gradient.
//
// The gradient is dJ/dE of the SUM J (B x d, row-major), with the mined selection held fixed
// (the usual sub-gradient); divide by `count` for the gradient of loss_mean.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace facenet {

enum class Mining { kBatchAll, kBatchHard, kSemiHard };

// "batch_all" | "batch_hard" | "semi_hard"; parse_mining throws facenet::Error otherwise.
std::string to_string(Mining mining);
Mining parse_mining(const std::string& name);

struct Triplet {
  int32_t a = 0, p = 0, n = 0;
  bool operator==(const Triplet& o) const { return a == o.a && p == o.p && n == o.n; }
};

struct TripletOptions {
  float margin = 0.2f;         // alpha; must be finite and >= 0
  bool want_grad = true;       // fill TripletResult::grad
  bool want_triplets = false;  // fill triplets + losses (mined modes; explicit: always)
  // GPU only (the CPU path is always deterministic): true makes every reduction, the
  // gradient included, run in a fixed order so repeated runs give the same bits; false lets
  // the sparse-mode gradient scatter with atomics. Loss sums are fixed-order either way.
  bool deterministic = false;
};

template <typename Real>
struct TripletResultT {
  double loss_sum = 0;            // J
  double loss_mean = 0;           // J / count (0 when count == 0)
  int64_t count = 0;              // triplets the mean is over (see the table above)
  int64_t active = 0;             // triplets with loss > 0
  std::vector<Real> grad;         // dJ/dE, B x d (empty unless want_grad)
  std::vector<Triplet> triplets;  // sorted by (a, p, n) for mined modes
  std::vector<Real> losses;       // per-triplet loss, aligned with `triplets`
};
using TripletResult = TripletResultT<float>;
using TripletResult64 = TripletResultT<double>;

// ---- CPU (the reference) -------------------------------------------------------------------
// embeddings: batch x dim row-major; labels.size() must equal batch. Throws facenet::Error on
// a bad shape, a bad margin, an out-of-range triplet index, or a NaN/Inf row (named).
// The double overloads run the same algorithm in float64 (gradient checks).
TripletResult triplet_loss(const float* embeddings, int64_t batch, int64_t dim,
                           const std::vector<int32_t>& labels, Mining mining,
                           const TripletOptions& options = {});
TripletResult64 triplet_loss(const double* embeddings, int64_t batch, int64_t dim,
                             const std::vector<int32_t>& labels, Mining mining,
                             const TripletOptions& options = {});
TripletResult triplet_loss(const float* embeddings, int64_t batch, int64_t dim,
                           const std::vector<Triplet>& triplets,
                           const TripletOptions& options = {});
TripletResult64 triplet_loss(const double* embeddings, int64_t batch, int64_t dim,
                             const std::vector<Triplet>& triplets,
                             const TripletOptions& options = {});

// Squared L2 distances via the Gram matrix (B x B, row-major), as used for mining: the CPU
// reference of the GPU distance kernel.
std::vector<float> pairwise_sq_l2_gram(const float* embeddings, int64_t batch, int64_t dim);

// ---- GPU -----------------------------------------------------------------------------------
class GpuContext;

// The CUDA path. Owns a GPU context and device buffers that grow to the largest batch seen,
// so repeated batches of that size allocate nothing. Constructing it without a usable GPU
// (or in a build without CUDA) throws facenet::Error.
//
// One-call use: compute(...). Split use (benchmarks, training loops): set_batch() validates
// on the host and uploads; run() only enqueues kernels on context().stream(); fetch() waits
// and downloads the result.
class TripletLossCuda {
 public:
  explicit TripletLossCuda(int device = 0);
  ~TripletLossCuda();
  TripletLossCuda(const TripletLossCuda&) = delete;
  TripletLossCuda& operator=(const TripletLossCuda&) = delete;

  TripletResult compute(const float* embeddings, int64_t batch, int64_t dim,
                        const std::vector<int32_t>& labels, Mining mining,
                        const TripletOptions& options = {});
  TripletResult compute(const float* embeddings, int64_t batch, int64_t dim,
                        const std::vector<Triplet>& triplets, const TripletOptions& options = {});

  void set_batch(const float* embeddings, int64_t batch, int64_t dim,
                 const std::vector<int32_t>& labels);
  void set_batch(const float* embeddings, int64_t batch, int64_t dim,
                 const std::vector<Triplet>& triplets);
  // A batch already on this GPU (e.g. a CUDA tensor): `embeddings` (batch x dim float32,
  // device memory) is read in place and the gradient is written to `grad` (batch x dim device
  // memory; null when no run wants it), all on context().stream(): the caller orders its own
  // stream before (an event waited on by that stream) and after (the reverse). Both must stay
  // valid until fetch(), which then leaves TripletResult::grad empty. The embeddings are not
  // checked for NaN/Inf: that would cost a pass over them and a sync.
  void set_batch_device(const float* embeddings, int64_t batch, int64_t dim,
                        const std::vector<int32_t>& labels, float* grad);
  void set_batch_device(const float* embeddings, int64_t batch, int64_t dim,
                        const std::vector<Triplet>& triplets, float* grad);
  // Mined modes need labels from set_batch; the explicit mode (no Mining) needs triplets.
  void run(Mining mining, const TripletOptions& options = {});
  void run(const TripletOptions& options = {});
  TripletResult fetch();

  GpuContext& context();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace facenet
