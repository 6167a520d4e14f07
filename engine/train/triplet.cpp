// Triplet loss, the CPU reference: Gram distances via BLAS, mining parallel over anchors, the
// gradient as one GEMM (batch-all) or a sparse scatter.
#include "engine/train/triplet.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "engine/core/blas.h"
#include "engine/core/error.h"
#include "engine/train/triplet_common.h"

namespace facenet {

using namespace triplet_detail;  // the private helpers of triplet_common.h

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

}  // namespace facenet
