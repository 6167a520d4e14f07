// Private to engine/train: what the CPU reference (triplet.cpp) and the CUDA host side
// (triplet_cuda.cpp) share: input validation, per-anchor label statistics, the mean.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <unordered_map>
#include <vector>

#include "engine/core/error.h"
#include "engine/train/triplet.h"

namespace facenet::triplet_detail {

template <typename Real>
void validate_embedding_shape(const Real* e, int64_t batch, int64_t dim) {
  if (batch < 1 || dim < 1)
    fail("triplet loss: embeddings must be B x d with B >= 1 and d >= 1, got ", batch, " x ", dim);
  if (batch > std::numeric_limits<int32_t>::max())
    fail("triplet loss: batch of ", batch, " rows exceeds the int32 index range");
  if (!e) fail("triplet loss: embeddings pointer is null");
}

template <typename Real>
void validate_embeddings(const Real* e, int64_t batch, int64_t dim) {
  validate_embedding_shape(e, batch, dim);
  for (int64_t i = 0; i < batch; ++i)
    for (int64_t k = 0; k < dim; ++k)
      if (!std::isfinite(e[i * dim + k]))
        fail("triplet loss: embeddings row ", i, " column ", k, " is ", e[i * dim + k],
             "; NaN/Inf input is rejected");
}

inline void validate_options(const TripletOptions& o) {
  if (!std::isfinite(o.margin) || o.margin < 0)
    fail("triplet loss: margin must be finite and >= 0, got ", o.margin);
}

inline void validate_labels(const std::vector<int32_t>& labels, int64_t batch) {
  if (static_cast<int64_t>(labels.size()) != batch)
    fail("triplet loss: labels has ", labels.size(), " entries, expected one per row (", batch,
         ")");
}

inline void validate_triplets(const std::vector<Triplet>& triplets, int64_t batch) {
  for (size_t t = 0; t < triplets.size(); ++t)
    for (int32_t idx : {triplets[t].a, triplets[t].p, triplets[t].n})
      if (idx < 0 || idx >= batch)
        fail("triplet loss: triplet ", t, " has index ", idx, " outside the batch [0, ", batch,
             ")");
}

// Per-anchor label facts that fix how many triplets each mode mines, and where each anchor's
// semi-hard triplets start in the output (exclusive scan over anchors).
struct LabelStats {
  std::vector<int64_t> positives;    // same-label rows other than the anchor
  std::vector<int64_t> pair_offset;  // semi-hard: first pair of each anchor, size B + 1
  int64_t max_positives = 0;
  int64_t count_batch_all = 0, count_batch_hard = 0, count_semi_hard = 0;

  int64_t count(Mining m) const {
    switch (m) {
      case Mining::kBatchAll:
        return count_batch_all;
      case Mining::kBatchHard:
        return count_batch_hard;
      case Mining::kSemiHard:
        return count_semi_hard;
    }
    return 0;
  }
};

inline LabelStats label_stats(const std::vector<int32_t>& labels) {
  const int64_t batch = static_cast<int64_t>(labels.size());
  std::unordered_map<int32_t, int64_t> class_size;
  for (int32_t l : labels) ++class_size[l];
  LabelStats s;
  s.positives.resize(batch);
  s.pair_offset.assign(batch + 1, 0);
  for (int64_t a = 0; a < batch; ++a) {
    const int64_t pos = class_size[labels[a]] - 1, neg = batch - 1 - pos;
    s.positives[a] = pos;
    s.max_positives = std::max(s.max_positives, pos);
    s.count_batch_all += pos * neg;
    s.count_batch_hard += (pos > 0 && neg > 0) ? 1 : 0;
    s.pair_offset[a + 1] = s.pair_offset[a] + (neg > 0 ? pos : 0);
  }
  s.count_semi_hard = s.pair_offset[batch];
  return s;
}

template <typename Real>
void finish(TripletResultT<Real>& r) {
  r.loss_mean = r.count > 0 ? r.loss_sum / static_cast<double>(r.count) : 0.0;
}

}  // namespace facenet::triplet_detail
