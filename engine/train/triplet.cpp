// Triplet loss: the CPU reference (Gram distances via BLAS, mining parallel over anchors) and
// the host side of the CUDA path.
#include "engine/train/triplet.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <type_traits>
#include <unordered_map>

#include "engine/core/blas.h"
#include "engine/core/error.h"
#include "engine/core/gpu.h"

#ifdef FACENET_HAS_CUDA
#include "engine/core/cuda_util.h"
#include "kernels/triplet.h"
#endif

namespace facenet {

static_assert(sizeof(Triplet) == 3 * sizeof(int32_t), "Triplet is copied as int32 triples");

std::string to_string(Mining mining) {
  switch (mining) {
    case Mining::kBatchAll:
      return "batch_all";
    case Mining::kBatchHard:
      return "batch_hard";
    case Mining::kSemiHard:
      return "semi_hard";
  }
  return "unknown";
}

Mining parse_mining(const std::string& name) {
  for (Mining m : {Mining::kBatchAll, Mining::kBatchHard, Mining::kSemiHard})
    if (to_string(m) == name) return m;
  fail("mining mode '", name, "' is unknown (expected batch_all, batch_hard or semi_hard)");
}

namespace {

// ---- input validation (shared by the CPU and GPU paths) -------------------------------------

template <typename Real>
void validate_embeddings(const Real* e, int64_t batch, int64_t dim) {
  if (batch < 1 || dim < 1)
    fail("triplet loss: embeddings must be B x d with B >= 1 and d >= 1, got ", batch, " x ", dim);
  if (batch > std::numeric_limits<int32_t>::max())
    fail("triplet loss: batch of ", batch, " rows exceeds the int32 index range");
  if (!e) fail("triplet loss: embeddings pointer is null");
  for (int64_t i = 0; i < batch; ++i)
    for (int64_t k = 0; k < dim; ++k)
      if (!std::isfinite(e[i * dim + k]))
        fail("triplet loss: embeddings row ", i, " column ", k, " is ", e[i * dim + k],
             "; NaN/Inf input is rejected");
}

void validate_options(const TripletOptions& o) {
  if (!std::isfinite(o.margin) || o.margin < 0)
    fail("triplet loss: margin must be finite and >= 0, got ", o.margin);
}

void validate_labels(const std::vector<int32_t>& labels, int64_t batch) {
  if (static_cast<int64_t>(labels.size()) != batch)
    fail("triplet loss: labels has ", labels.size(), " entries, expected one per row (", batch,
         ")");
}

void validate_triplets(const std::vector<Triplet>& triplets, int64_t batch) {
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

LabelStats label_stats(const std::vector<int32_t>& labels) {
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

// ---- CPU reference ---------------------------------------------------------------------------

// float: the full A A^T as oneDNN SGEMM panels split over the OpenMP threads (every GEMM call
// single-threaded, see blas.h); twice syrk's work, but on every core. The upper triangle is what
// callers read. double (the float64 overloads behind gradient checks; no hot path): the system
// CBLAS, which runs on one thread too.
void blas_syrk_upper(int64_t n, int64_t k, const float* a, float* c) {
  parallel_sgemm(n, n, k, a, k, a, k, c, n, /*trans_b=*/true);
}
void blas_syrk_upper(int64_t n, int64_t k, const double* a, double* c) {
  cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, n, k, 1.0, a, k, 0.0, c, n);
}
// c (m x n) = a (m x k) * b (k x n), all row-major.
void blas_gemm(int64_t m, int64_t n, int64_t k, const float* a, const float* b, float* c) {
  parallel_sgemm(m, n, k, a, k, b, n, c, n);
}
void blas_gemm(int64_t m, int64_t n, int64_t k, const double* a, const double* b, double* c) {
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0, a, k, b, n, 0.0, c, n);
}

// Sets m(i, j) = m(j, i) = f(m(i, j), m(j, i)) for i > j, in cache-sized blocks.
template <typename Real, typename Combine>
void mirror_upper(std::vector<Real>& m, int64_t batch, Combine f) {
  constexpr int64_t kBlock = 32;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t ib = 0; ib < batch; ib += kBlock) {
    const int64_t i_end = std::min(ib + kBlock, batch);
    for (int64_t jb = 0; jb <= ib; jb += kBlock)
      for (int64_t i = ib; i < i_end; ++i) {
        Real* lower = m.data() + i * batch;
        const int64_t j_end = std::min(jb + kBlock, i);
        for (int64_t j = jb; j < j_end; ++j) {
          Real& upper = m[j * batch + i];
          lower[j] = upper = f(lower[j], upper);
        }
      }
  }
}

// D(i, j) = G(i, i) + G(j, j) - 2 G(i, j), G = E E^T from one SYRK; clamped at 0, D(i, i) = 0.
template <typename Real>
std::vector<Real> gram_sq_l2(const Real* e, int64_t batch, int64_t dim) {
  std::vector<Real> d(batch * batch);
  blas_syrk_upper(batch, dim, e, d.data());
  std::vector<Real> norm(batch);
  for (int64_t i = 0; i < batch; ++i) norm[i] = d[i * batch + i];
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t i = 0; i < batch; ++i) {
    Real* row = d.data() + i * batch;
    row[i] = 0;
    for (int64_t j = i + 1; j < batch; ++j)
      row[j] = std::max(norm[i] + norm[j] - Real(2) * row[j], Real(0));
  }
  mirror_upper(d, batch, [](Real, Real upper) { return upper; });
  return d;
}

// S = C + C^T in place.
template <typename Real>
void symmetrize_sum(std::vector<Real>& m, int64_t batch) {
  mirror_upper(m, batch, [](Real lower, Real upper) { return lower + upper; });
}

// Mined or given triplets with their losses; those with loss > 0 reach the gradient.
template <typename Real>
struct Selection {
  std::vector<Triplet> triplets;
  std::vector<Real> losses;
};

template <typename Real>
Real hinge(Real d_ap, Real d_an, Real margin) {
  return std::max(d_ap - d_an + margin, Real(0));
}

// One anchor's row of D split into positives (ascending) and negatives with their distances.
template <typename Real>
struct AnchorRow {
  const Real* row = nullptr;
  std::vector<int32_t> pos, neg;
  std::vector<Real> neg_d;

  void split(const std::vector<Real>& d, const std::vector<int32_t>& labels, int64_t a) {
    const int64_t batch = static_cast<int64_t>(labels.size());
    row = d.data() + a * batch;
    pos.clear();
    neg.clear();
    neg_d.clear();
    for (int64_t j = 0; j < batch; ++j) {
      if (labels[j] != labels[a]) {
        neg.push_back(static_cast<int32_t>(j));
        neg_d.push_back(row[j]);
      } else if (j != a) {
        pos.push_back(static_cast<int32_t>(j));
      }
    }
  }

  // Position in neg of the closest negative with D > floor (ties: first), or neg.size().
  size_t closest_negative_above(Real floor) const {
    size_t best = neg.size();
    Real best_d = std::numeric_limits<Real>::infinity();
    for (size_t k = 0; k < neg_d.size(); ++k)
      if (neg_d[k] > floor && neg_d[k] < best_d) {
        best_d = neg_d[k];
        best = k;
      }
    return best;
  }
};

// Farthest positive: the largest D over same-label j != a; closest negative: the smallest D over
// different-label j. Ties keep the smallest index (strict comparisons, ascending scan).
template <typename Real>
Selection<Real> mine_batch_hard(const std::vector<Real>& d, const std::vector<int32_t>& labels,
                                Real margin) {
  const int64_t batch = static_cast<int64_t>(labels.size());
  std::vector<Triplet> slot(batch, Triplet{-1, -1, -1});
  std::vector<Real> loss(batch, 0);
#pragma omp parallel for schedule(static)
  for (int64_t a = 0; a < batch; ++a) {
    const Real* row = d.data() + a * batch;
    int32_t p = -1, n = -1;
    for (int64_t j = 0; j < batch; ++j) {
      if (labels[j] == labels[a]) {
        if (j != a && (p < 0 || row[j] > row[p])) p = static_cast<int32_t>(j);
      } else if (n < 0 || row[j] < row[n]) {
        n = static_cast<int32_t>(j);
      }
    }
    if (p < 0 || n < 0) continue;
    slot[a] = Triplet{static_cast<int32_t>(a), p, n};
    loss[a] = hinge(row[p], row[n], margin);
  }
  Selection<Real> s;
  for (int64_t a = 0; a < batch; ++a)
    if (slot[a].p >= 0) {
      s.triplets.push_back(slot[a]);
      s.losses.push_back(loss[a]);
    }
  return s;
}

// Per anchor-positive pair: the closest negative with D(a,p) < D(a,n) < D(a,p) + margin, else
// the closest negative overall. The anchor's negatives are gathered once, then scanned per
// positive: O(B * sum of positives).
template <typename Real>
Selection<Real> mine_semi_hard(const std::vector<Real>& d, const std::vector<int32_t>& labels,
                               const LabelStats& stats, Real margin) {
  const int64_t batch = static_cast<int64_t>(labels.size());
  Selection<Real> s;
  s.triplets.resize(stats.count_semi_hard);
  s.losses.resize(stats.count_semi_hard);
#pragma omp parallel
  {
    AnchorRow<Real> r;
#pragma omp for schedule(dynamic, 8)
    for (int64_t a = 0; a < batch; ++a) {
      if (stats.pair_offset[a + 1] == stats.pair_offset[a]) continue;
      r.split(d, labels, a);
      const size_t hardest = r.closest_negative_above(-std::numeric_limits<Real>::infinity());
      int64_t out = stats.pair_offset[a];
      for (int32_t p : r.pos) {
        const Real d_ap = r.row[p];
        size_t n = r.closest_negative_above(d_ap);
        if (n == r.neg.size() || !(r.neg_d[n] < d_ap + margin)) n = hardest;
        s.triplets[out] = Triplet{static_cast<int32_t>(a), p, r.neg[n]};
        s.losses[out] = hinge(d_ap, r.neg_d[n], margin);
        ++out;
      }
    }
  }
  return s;
}

template <typename Real>
Real sq_l2_direct(const Real* x, const Real* y, int64_t dim) {
  Real s = 0;
  for (int64_t k = 0; k < dim; ++k) s += (x[k] - y[k]) * (x[k] - y[k]);
  return s;
}

template <typename Real>
Selection<Real> given_triplets(const Real* e, int64_t dim, const std::vector<Triplet>& triplets,
                               Real margin) {
  Selection<Real> s{triplets, std::vector<Real>(triplets.size())};
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < static_cast<int64_t>(triplets.size()); ++t) {
    const Triplet& x = triplets[t];
    s.losses[t] = hinge(sq_l2_direct(e + x.a * dim, e + x.p * dim, dim),
                        sq_l2_direct(e + x.a * dim, e + x.n * dim, dim), margin);
  }
  return s;
}

// dJ/dE for a list of triplets: an active (a, p, n) adds 2(e_n - e_p) to row a, 2(e_p - e_a)
// to row p and 2(e_a - e_n) to row n. Sequential in triplet order (deterministic).
template <typename Real>
std::vector<Real> sparse_gradient(const Real* e, int64_t batch, int64_t dim,
                                  const Selection<Real>& s) {
  std::vector<Real> g(batch * dim, 0);
  for (size_t t = 0; t < s.triplets.size(); ++t) {
    if (!(s.losses[t] > 0)) continue;
    const Triplet& x = s.triplets[t];
    const Real *ea = e + x.a * dim, *ep = e + x.p * dim, *en = e + x.n * dim;
    Real *ga = g.data() + x.a * dim, *gp = g.data() + x.p * dim, *gn = g.data() + x.n * dim;
    for (int64_t k = 0; k < dim; ++k) {
      ga[k] += 2 * (en[k] - ep[k]);
      gp[k] += 2 * (ep[k] - ea[k]);
      gn[k] += 2 * (ea[k] - en[k]);
    }
  }
  return g;
}

template <typename Real>
void summarize_selection(const Selection<Real>& s, TripletResultT<Real>& r) {
  for (Real l : s.losses) {
    r.loss_sum += static_cast<double>(l);
    r.active += l > 0 ? 1 : 0;
  }
}

// Batch-all. J = sum_{a,p,n} C(a,j) D(a,j) + const with C(a,p) = #active n for (a,p) and
// C(a,n) = -#active p for (a,n). With S = C + C^T: dJ/de_i = 2 (s_i e_i - sum_j S(i,j) e_j),
// s_i = sum_j S(i,j): one GEMM. C lives in `coef` (B x B) when the gradient is wanted.
template <typename Real>
void batch_all(const Real* e, int64_t dim, const std::vector<Real>& d,
               const std::vector<int32_t>& labels, Real margin, const TripletOptions& o,
               TripletResultT<Real>& r) {
  const int64_t batch = static_cast<int64_t>(labels.size());
  std::vector<Real> coef(o.want_grad ? batch * batch : 0, 0);
  std::vector<double> anchor_loss(batch, 0);
  std::vector<int64_t> anchor_active(batch, 0);
  std::vector<std::vector<Triplet>> anchor_triplets(o.want_triplets ? batch : 0);
  std::vector<std::vector<Real>> anchor_losses(o.want_triplets ? batch : 0);
#pragma omp parallel
  {
    AnchorRow<Real> row;
    std::vector<int32_t> neg_active;  // per negative: active positives
#pragma omp for schedule(dynamic, 8)
    for (int64_t a = 0; a < batch; ++a) {
      row.split(d, labels, a);
      neg_active.assign(row.neg.size(), 0);
      for (int32_t p : row.pos) {
        const Real d_ap = row.row[p];
        int64_t active_p = 0;
        double loss_p = 0;
        for (size_t k = 0; k < row.neg.size(); ++k) {  // branch-free: ~half are active
          const Real l = d_ap - row.neg_d[k] + margin;
          const bool on = l > 0;
          loss_p += on ? static_cast<double>(l) : 0.0;
          active_p += on;
          neg_active[k] += on;
        }
        anchor_loss[a] += loss_p;
        anchor_active[a] += active_p;
        if (o.want_grad) coef[a * batch + p] = static_cast<Real>(active_p);
        if (!o.want_triplets) continue;
        for (size_t k = 0; k < row.neg.size(); ++k) {
          const Real l = d_ap - row.neg_d[k] + margin;
          if (!(l > 0)) continue;
          anchor_triplets[a].push_back(Triplet{static_cast<int32_t>(a), p, row.neg[k]});
          anchor_losses[a].push_back(l);
        }
      }
      if (o.want_grad)
        for (size_t k = 0; k < row.neg.size(); ++k)
          coef[a * batch + row.neg[k]] = -static_cast<Real>(neg_active[k]);
    }
  }
  for (int64_t a = 0; a < batch; ++a) {
    r.loss_sum += anchor_loss[a];
    r.active += anchor_active[a];
  }
  for (int64_t a = 0; a < static_cast<int64_t>(anchor_triplets.size()); ++a) {
    r.triplets.insert(r.triplets.end(), anchor_triplets[a].begin(), anchor_triplets[a].end());
    r.losses.insert(r.losses.end(), anchor_losses[a].begin(), anchor_losses[a].end());
  }
  if (!o.want_grad) return;
  symmetrize_sum(coef, batch);
  std::vector<Real> rowsum(batch, 0);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < batch; ++i)
    for (int64_t j = 0; j < batch; ++j) rowsum[i] += coef[i * batch + j];
  std::vector<Real> se(batch * dim);
  blas_gemm(batch, dim, batch, coef.data(), e, se.data());
  r.grad.resize(batch * dim);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < batch; ++i)
    for (int64_t k = 0; k < dim; ++k)
      r.grad[i * dim + k] = 2 * (rowsum[i] * e[i * dim + k] - se[i * dim + k]);
}

template <typename Real>
void finish(TripletResultT<Real>& r) {
  r.loss_mean = r.count > 0 ? r.loss_sum / static_cast<double>(r.count) : 0.0;
}

template <typename Real>
TripletResultT<Real> mined_cpu(const Real* e, int64_t batch, int64_t dim,
                               const std::vector<int32_t>& labels, Mining mining,
                               const TripletOptions& o) {
  validate_embeddings(e, batch, dim);
  validate_labels(labels, batch);
  validate_options(o);
  const LabelStats stats = label_stats(labels);
  const Real margin = static_cast<Real>(o.margin);
  TripletResultT<Real> r;
  r.count = stats.count(mining);
  const std::vector<Real> d = gram_sq_l2(e, batch, dim);
  if (mining == Mining::kBatchAll) {
    batch_all(e, dim, d, labels, margin, o, r);
  } else {
    Selection<Real> s = mining == Mining::kBatchHard ? mine_batch_hard(d, labels, margin)
                                                     : mine_semi_hard(d, labels, stats, margin);
    summarize_selection(s, r);
    if (o.want_grad) r.grad = sparse_gradient(e, batch, dim, s);
    if (o.want_triplets) {
      r.triplets = std::move(s.triplets);
      r.losses = std::move(s.losses);
    }
  }
  if (o.want_grad && r.grad.empty()) r.grad.assign(batch * dim, 0);
  finish(r);
  return r;
}

template <typename Real>
TripletResultT<Real> given_cpu(const Real* e, int64_t batch, int64_t dim,
                               const std::vector<Triplet>& triplets, const TripletOptions& o) {
  validate_embeddings(e, batch, dim);
  validate_triplets(triplets, batch);
  validate_options(o);
  TripletResultT<Real> r;
  r.count = static_cast<int64_t>(triplets.size());
  Selection<Real> s = given_triplets(e, dim, triplets, static_cast<Real>(o.margin));
  summarize_selection(s, r);
  if (o.want_grad) r.grad = sparse_gradient(e, batch, dim, s);
  r.triplets = std::move(s.triplets);
  r.losses = std::move(s.losses);
  finish(r);
  return r;
}

}  // namespace

TripletResult triplet_loss(const float* e, int64_t batch, int64_t dim,
                           const std::vector<int32_t>& labels, Mining mining,
                           const TripletOptions& o) {
  return mined_cpu(e, batch, dim, labels, mining, o);
}
TripletResult64 triplet_loss(const double* e, int64_t batch, int64_t dim,
                             const std::vector<int32_t>& labels, Mining mining,
                             const TripletOptions& o) {
  return mined_cpu(e, batch, dim, labels, mining, o);
}
TripletResult triplet_loss(const float* e, int64_t batch, int64_t dim,
                           const std::vector<Triplet>& triplets, const TripletOptions& o) {
  return given_cpu(e, batch, dim, triplets, o);
}
TripletResult64 triplet_loss(const double* e, int64_t batch, int64_t dim,
                             const std::vector<Triplet>& triplets, const TripletOptions& o) {
  return given_cpu(e, batch, dim, triplets, o);
}

std::vector<float> pairwise_sq_l2_gram(const float* e, int64_t batch, int64_t dim) {
  validate_embeddings(e, batch, dim);
  return gram_sq_l2(e, batch, dim);
}

// ---- GPU -----------------------------------------------------------------------------------
#ifdef FACENET_HAS_CUDA

namespace {

// Grows (never shrinks) a device buffer, so a run at or below the largest batch seen allocates
// nothing.
template <typename T>
void ensure(DeviceBuffer<T>& b, int64_t count) {
  if (static_cast<int64_t>(b.size()) < count) b.resize(static_cast<size_t>(count));
}

template <typename T>
void upload(DeviceBuffer<T>& b, const T* host, int64_t count, cudaStream_t s) {
  ensure(b, count);
  if (count > 0) b.upload(host, static_cast<size_t>(count), s);
}

template <typename T>
std::vector<T> download(const DeviceBuffer<T>& b, int64_t count, cudaStream_t s) {
  std::vector<T> host(static_cast<size_t>(count));
  if (count > 0) b.download(host.data(), host.size(), s);
  return host;
}

// Sorts triplets by (a, p, n), keeping each loss with its triplet.
void sort_by_triplet(std::vector<Triplet>& triplets, std::vector<float>& losses) {
  std::vector<size_t> order(triplets.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  auto key = [&](size_t i) { return std::tie(triplets[i].a, triplets[i].p, triplets[i].n); };
  std::sort(order.begin(), order.end(), [&](size_t x, size_t y) { return key(x) < key(y); });
  std::vector<Triplet> t(order.size());
  std::vector<float> l(order.size());
  for (size_t i = 0; i < order.size(); ++i) {
    t[i] = triplets[order[i]];
    l[i] = losses[order[i]];
  }
  triplets = std::move(t);
  losses = std::move(l);
}

}  // namespace

struct TripletLossCuda::Impl {
  enum class Input { kNone, kLabels, kTriplets };

  explicit Impl(int device) : ctx(device) {}

  GpuContext ctx;
  Input input = Input::kNone;
  int64_t batch = 0, dim = 0;
  LabelStats stats;
  std::vector<Triplet> given;
  // What the last run() enqueued, for fetch().
  bool ran = false;
  Mining mining = Mining::kBatchHard;
  TripletOptions options;
  int64_t slots = 0;  // entries of `triplets`/`losses` the run filled

  DeviceBuffer<float> e, norms, dist, coef, work, grad, losses;
  DeviceBuffer<int32_t> labels, triplets, colsum;
  DeviceBuffer<TripletHardPartial> partials;
  DeviceBuffer<int64_t> pair_offset, anchor_active, emit_offset, active;
  DeviceBuffer<double> anchor_loss, sum;

  void upload_embeddings(const float* host, int64_t b, int64_t d) {
    validate_embeddings(host, b, d);
    batch = b;
    dim = d;
    upload(e, host, b * d, ctx.stream());
    ran = false;
  }

  void sparse_grad(const TripletOptions& o) {
    if (!o.want_grad) return;
    ensure(grad, batch * dim);
    launch_triplet_grad_sparse(e.data(), batch, dim, triplets.data(), losses.data(), slots,
                               o.deterministic, grad.data(), ctx.stream());
  }

  void run_batch_hard(const TripletOptions& o) {
    const cudaStream_t s = ctx.stream();
    ensure(partials, batch * triplet_tile_count(batch));
    launch_triplet_batch_hard_tiles(e.data(), norms.data(), labels.data(), batch, dim,
                                    partials.data(), s);
    slots = batch;
    ensure(triplets, 3 * slots);
    ensure(losses, slots);
    launch_triplet_batch_hard_select(partials.data(), batch, o.margin, triplets.data(),
                                     losses.data(), s);
    launch_triplet_sum(losses.data(), slots, sum.data(), active.data(), s);
    sparse_grad(o);
  }

  void distances() {
    ensure(dist, batch * batch);
    launch_triplet_sq_l2(e.data(), norms.data(), batch, dim, dist.data(), ctx.stream());
  }

  void run_semi_hard(const TripletOptions& o) {
    const cudaStream_t s = ctx.stream();
    distances();
    slots = stats.count_semi_hard;
    ensure(triplets, 3 * slots);
    ensure(losses, slots);
    launch_triplet_semi_hard(dist.data(), labels.data(), batch, pair_offset.data(),
                             stats.max_positives, o.margin, triplets.data(), losses.data(), s);
    launch_triplet_sum(losses.data(), slots, sum.data(), active.data(), s);
    sparse_grad(o);
  }

  void run_batch_all(const TripletOptions& o) {
    const cudaStream_t s = ctx.stream();
    distances();
    ensure(anchor_loss, batch);
    ensure(anchor_active, batch);
    if (o.want_grad) {
      ensure(coef, batch * batch);
      ensure(colsum, batch);
      ensure(work, batch * dim);
      ensure(grad, batch * dim);
      FN_GPU_CHECK(cudaMemsetAsync(colsum.data(), 0, batch * sizeof(int32_t), s));
    }
    launch_triplet_batch_all(dist.data(), labels.data(), batch, stats.max_positives, o.margin,
                             anchor_loss.data(), anchor_active.data(),
                             o.want_grad ? coef.data() : nullptr, colsum.data(), nullptr, nullptr,
                             nullptr, s);
    launch_triplet_sum(anchor_loss.data(), anchor_active.data(), batch, sum.data(), active.data(),
                       s);
    if (o.want_grad)
      launch_triplet_grad_dense(ctx.cublas(), e.data(), batch, dim, coef.data(), colsum.data(),
                                work.data(), grad.data(), s);
  }

  // Batch-all triplet list: per-anchor active counts -> offsets -> a second, emitting pass.
  void emit_batch_all(TripletResult& r) {
    const cudaStream_t s = ctx.stream();
    const std::vector<int64_t> per_anchor = download(anchor_active, batch, s);
    ctx.synchronize();
    std::vector<int64_t> offset(batch + 1, 0);
    for (int64_t a = 0; a < batch; ++a) offset[a + 1] = offset[a] + per_anchor[a];
    slots = offset[batch];
    upload(emit_offset, offset.data(), batch + 1, s);
    ensure(triplets, 3 * slots);
    ensure(losses, slots);
    if (slots > 0)
      launch_triplet_batch_all(dist.data(), labels.data(), batch, stats.max_positives,
                               options.margin, nullptr, nullptr, nullptr, nullptr,
                               emit_offset.data(), triplets.data(), losses.data(), s);
    r.triplets.resize(slots);
    if (slots > 0) triplets.download(reinterpret_cast<int32_t*>(r.triplets.data()), 3 * slots, s);
    r.losses = download(losses, slots, s);
  }
};

TripletLossCuda::TripletLossCuda(int device) {
  require_gpu("TripletLossCuda");  // names us, not the context, in the error
  impl_ = std::make_unique<Impl>(device);
}
TripletLossCuda::~TripletLossCuda() = default;

GpuContext& TripletLossCuda::context() {
  return impl_->ctx;
}

void TripletLossCuda::set_batch(const float* embeddings, int64_t batch, int64_t dim,
                                const std::vector<int32_t>& labels) {
  Impl& m = *impl_;
  validate_labels(labels, batch);
  m.upload_embeddings(embeddings, batch, dim);
  m.stats = label_stats(labels);
  upload(m.labels, labels.data(), batch, m.ctx.stream());
  upload(m.pair_offset, m.stats.pair_offset.data(), batch + 1, m.ctx.stream());
  ensure(m.norms, batch);
  m.input = Impl::Input::kLabels;
}

void TripletLossCuda::set_batch(const float* embeddings, int64_t batch, int64_t dim,
                                const std::vector<Triplet>& triplets) {
  Impl& m = *impl_;
  validate_triplets(triplets, batch);
  m.upload_embeddings(embeddings, batch, dim);
  m.given = triplets;
  const int64_t count = static_cast<int64_t>(triplets.size());
  upload(m.triplets, reinterpret_cast<const int32_t*>(triplets.data()), 3 * count, m.ctx.stream());
  m.input = Impl::Input::kTriplets;
}

void TripletLossCuda::run(Mining mining, const TripletOptions& o) {
  Impl& m = *impl_;
  if (m.input != Impl::Input::kLabels)
    fail("TripletLossCuda::run(", to_string(mining), "): call set_batch with labels first");
  validate_options(o);
  ensure(m.sum, 1);
  ensure(m.active, 1);
  launch_triplet_row_norms(m.e.data(), m.batch, m.dim, m.norms.data(), m.ctx.stream());
  switch (mining) {
    case Mining::kBatchHard:
      m.run_batch_hard(o);
      break;
    case Mining::kSemiHard:
      m.run_semi_hard(o);
      break;
    case Mining::kBatchAll:
      m.run_batch_all(o);
      break;
  }
  m.mining = mining;
  m.options = o;
  m.ran = true;
}

void TripletLossCuda::run(const TripletOptions& o) {
  Impl& m = *impl_;
  if (m.input != Impl::Input::kTriplets)
    fail("TripletLossCuda::run: explicit triplets need set_batch with triplets first");
  validate_options(o);
  ensure(m.sum, 1);
  ensure(m.active, 1);
  m.slots = static_cast<int64_t>(m.given.size());
  ensure(m.losses, m.slots);
  launch_triplet_given(m.e.data(), m.dim, m.triplets.data(), m.slots, o.margin, m.losses.data(),
                       m.ctx.stream());
  launch_triplet_sum(m.losses.data(), m.slots, m.sum.data(), m.active.data(), m.ctx.stream());
  m.sparse_grad(o);
  m.options = o;
  m.ran = true;
}

TripletResult TripletLossCuda::fetch() {
  Impl& m = *impl_;
  if (!m.ran) fail("TripletLossCuda::fetch: nothing was run since the last set_batch");
  const cudaStream_t s = m.ctx.stream();
  const bool mined = m.input == Impl::Input::kLabels;
  TripletResult r;
  double sum = 0;
  m.sum.download(&sum, 1, s);
  m.active.download(&r.active, 1, s);
  if (m.options.want_grad) r.grad = download(m.grad, m.batch * m.dim, s);
  if (!mined) {
    r.triplets = m.given;
    r.losses = download(m.losses, m.slots, s);
  } else if (m.options.want_triplets && m.mining == Mining::kBatchAll) {
    m.emit_batch_all(r);
  } else if (m.options.want_triplets) {
    r.triplets.resize(m.slots);
    if (m.slots > 0)
      m.triplets.download(reinterpret_cast<int32_t*>(r.triplets.data()), 3 * m.slots, s);
    r.losses = download(m.losses, m.slots, s);
  }
  m.ctx.synchronize();
  r.loss_sum = sum;
  r.count = mined ? m.stats.count(m.mining) : m.slots;
  if (mined && m.options.want_triplets) {
    // Batch-hard keeps a slot per anchor; drop anchors without a triplet.
    std::vector<Triplet> t;
    std::vector<float> l;
    for (size_t i = 0; i < r.triplets.size(); ++i)
      if (r.triplets[i].p >= 0) {
        t.push_back(r.triplets[i]);
        l.push_back(r.losses[i]);
      }
    r.triplets = std::move(t);
    r.losses = std::move(l);
    sort_by_triplet(r.triplets, r.losses);
  }
  finish(r);
  return r;
}

TripletResult TripletLossCuda::compute(const float* embeddings, int64_t batch, int64_t dim,
                                       const std::vector<int32_t>& labels, Mining mining,
                                       const TripletOptions& o) {
  set_batch(embeddings, batch, dim, labels);
  run(mining, o);
  return fetch();
}

TripletResult TripletLossCuda::compute(const float* embeddings, int64_t batch, int64_t dim,
                                       const std::vector<Triplet>& triplets,
                                       const TripletOptions& o) {
  set_batch(embeddings, batch, dim, triplets);
  run(o);
  return fetch();
}

#else  // built without CUDA: construction throws, so the other members are never reached.

struct TripletLossCuda::Impl {};

namespace {
[[noreturn]] void no_cuda() {
  require_gpu("TripletLossCuda");
  fail("TripletLossCuda: no CUDA");
}
}  // namespace

TripletLossCuda::TripletLossCuda(int) {
  no_cuda();
}
TripletLossCuda::~TripletLossCuda() = default;
GpuContext& TripletLossCuda::context() {
  no_cuda();
}
void TripletLossCuda::set_batch(const float*, int64_t, int64_t, const std::vector<int32_t>&) {
  no_cuda();
}
void TripletLossCuda::set_batch(const float*, int64_t, int64_t, const std::vector<Triplet>&) {
  no_cuda();
}
void TripletLossCuda::run(Mining, const TripletOptions&) {
  no_cuda();
}
void TripletLossCuda::run(const TripletOptions&) {
  no_cuda();
}
TripletResult TripletLossCuda::fetch() {
  no_cuda();
}
TripletResult TripletLossCuda::compute(const float*, int64_t, int64_t, const std::vector<int32_t>&,
                                       Mining, const TripletOptions&) {
  no_cuda();
}
TripletResult TripletLossCuda::compute(const float*, int64_t, int64_t, const std::vector<Triplet>&,
                                       const TripletOptions&) {
  no_cuda();
}

#endif

}  // namespace facenet
