// Triplet loss: a hand-derived fixture, the CPU reference against brute force and central
// finite differences, edge cases, and the CUDA path against the CPU reference.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <tuple>
#include <vector>

#include "engine/core/error.h"
#include "engine/train/triplet.h"
#ifdef FACENET_HAS_CUDA
#include "engine/core/cuda_util.h"
#include "engine/core/gpu.h"
#endif
#include "tests/test_util.h"

namespace facenet {
namespace {

using test::expect_error;

// ---- the hand fixture ------------------------------------------------------------------------
// Five 2-D points, margin 0.2, labels {0, 0, 1, 1, 1}:
//   e0 = (0, 0), e1 = (1, 0) | e2 = (0, 1.05), e3 = (0, 1.1), e4 = (0, -0.5)
// Squared distances: D01 = 1, D02 = 1.1025, D03 = 1.21, D04 = 0.25, D12 = 2.1025, D13 = 2.21,
// D14 = 1.25, D23 = 0.0025, D24 = 2.4025, D34 = 2.56.
//
// batch_hard (farthest positive, closest negative), count 5:
//   a0: p1 (1), n4 (0.25): 0.95      a1: p0 (1), n4 (1.25): -0.05 -> 0
//   a2: p4 (2.4025), n0 (1.1025): 1.5    a3: p4 (2.56), n0 (1.21): 1.55
//   a4: p3 (2.56), n0 (0.25): 2.51
//   sum 6.51, active 4.
// semi_hard (per anchor-positive pair; closest negative in (D_ap, D_ap + 0.2), else the
// closest negative), count 8:
//   (0,1): negatives > 1 are 1.1025, 1.21 -> 1.1025 < 1.2 is semi-hard: n2, 0.0975
//   (1,0): closest > 1 is 1.25, not < 1.2 -> hardest n4 (1.25): 0
//   (2,3): 0.0025 -> hardest n0: 0      (2,4): 2.4025 -> none greater, hardest n0: 1.5
//   (3,2): 0                              (3,4): 2.56 -> hardest n0 (1.21): 1.55
//   (4,2): 2.4025 - 0.25 + 0.2 = 2.3525  (4,3): 2.56 - 0.25 + 0.2 = 2.51
//   sum 8.01, active 5.
// batch_all, count 1*3 + 1*3 + 3 * (2*2) = 18:
//   (0,1,*): n2 0.0975, n3 -0.01 -> 0, n4 0.95     (1,0,*): all negative
//   (2,3,*), (3,2,*): all negative                  (2,4,*): n0 1.5, n1 0.5
//   (3,4,*): n0 1.55, n1 0.55    (4,2,*): n0 2.3525, n1 1.3525    (4,3,*): n0 2.51, n1 1.51
//   sum 12.8725, active 10.
// explicit triplets (0,1,2), (4,3,1), (1,0,4): 0.0975, 2.56 - 1.25 + 0.2 = 1.51, 0 -> sum 1.6075.
//   Gradient: (0,1,2) adds g0 += 2(e2 - e1) = (-2, 2.1), g1 += 2(e1 - e0) = (2, 0),
//   g2 += 2(e0 - e2) = (0, -2.1); (4,3,1) adds g4 += 2(e1 - e3) = (2, -2.2),
//   g3 += 2(e3 - e4) = (0, 3.2), g1 += 2(e4 - e1) = (-2, -1); (1,0,4) is inactive.
//   g = [(-2, 2.1), (0, -1), (0, -2.1), (0, 3.2), (2, -2.2)].
const std::vector<float> kFixture = {0, 0, 1, 0, 0, 1.05f, 0, 1.1f, 0, -0.5f};
const std::vector<int32_t> kFixtureLabels = {0, 0, 1, 1, 1};
const std::vector<Triplet> kFixtureTriplets = {{0, 1, 2}, {4, 3, 1}, {1, 0, 4}};
const std::vector<float> kFixtureGrad = {-2, 2.1f, 0, -1, 0, -2.1f, 0, 3.2f, 2, -2.2f};

struct Expected {
  Mining mode;
  double sum;
  int64_t active, count;
};
const Expected kFixtureExpected[] = {{Mining::kBatchHard, 6.51, 4, 5},
                                     {Mining::kSemiHard, 8.01, 5, 8},
                                     {Mining::kBatchAll, 12.8725, 10, 18}};

TripletOptions with_triplets() {
  TripletOptions o;
  o.want_triplets = true;
  return o;
}

void expect_fixture(const TripletResult& r, const Expected& x) {
  EXPECT_NEAR(r.loss_sum, x.sum, 1e-5) << to_string(x.mode);
  EXPECT_NEAR(r.loss_mean, x.sum / x.count, 1e-5) << to_string(x.mode);
  EXPECT_EQ(r.active, x.active) << to_string(x.mode);
  EXPECT_EQ(r.count, x.count) << to_string(x.mode);
}

void expect_fixture_selection(const TripletResult& r, Mining mode) {
  if (mode == Mining::kBatchHard) {
    const std::vector<Triplet> want = {{0, 1, 4}, {1, 0, 4}, {2, 4, 0}, {3, 4, 0}, {4, 3, 0}};
    EXPECT_EQ(r.triplets, want);
  } else if (mode == Mining::kSemiHard) {
    const std::vector<Triplet> want = {{0, 1, 2}, {1, 0, 4}, {2, 3, 0}, {2, 4, 0},
                                       {3, 2, 0}, {3, 4, 0}, {4, 2, 0}, {4, 3, 0}};
    EXPECT_EQ(r.triplets, want);
    ASSERT_EQ(r.losses.size(), 8u);
    EXPECT_NEAR(r.losses[0], 0.0975, 1e-5);
  } else {
    EXPECT_EQ(r.triplets.size(), 10u);  // batch_all lists the active triplets
    EXPECT_EQ(r.triplets.front(), (Triplet{0, 1, 2}));
    EXPECT_EQ(r.triplets.back(), (Triplet{4, 3, 1}));
  }
}

TEST(Triplet, HandFixtureMinedModes) {
  for (const Expected& x : kFixtureExpected) {
    const TripletResult r =
        triplet_loss(kFixture.data(), 5, 2, kFixtureLabels, x.mode, with_triplets());
    expect_fixture(r, x);
    expect_fixture_selection(r, x.mode);
  }
}

TEST(Triplet, HandFixtureExplicitTripletsAndGradient) {
  const TripletResult r = triplet_loss(kFixture.data(), 5, 2, kFixtureTriplets);
  EXPECT_NEAR(r.loss_sum, 1.6075, 1e-5);
  EXPECT_EQ(r.active, 2);
  EXPECT_EQ(r.count, 3);
  ASSERT_EQ(r.losses.size(), 3u);
  EXPECT_NEAR(r.losses[1], 1.51, 1e-5);
  ASSERT_EQ(r.grad.size(), kFixtureGrad.size());
  for (size_t i = 0; i < r.grad.size(); ++i) EXPECT_NEAR(r.grad[i], kFixtureGrad[i], 1e-5) << i;
}

// ---- random batches and an independent brute force --------------------------------------------

struct Batch {
  int64_t b = 0, d = 0;
  std::vector<float> e;
  std::vector<int32_t> labels;
  std::vector<double> e64() const { return {e.begin(), e.end()}; }
};

// Unit-scale Gaussian rows; labels i / per_class, shuffled.
Batch random_batch(int64_t b, int64_t d, int per_class, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  Batch x{b, d, std::vector<float>(b * d), std::vector<int32_t>(b)};
  for (float& v : x.e) v = normal(rng) / std::sqrt(static_cast<float>(d));
  for (int64_t i = 0; i < b; ++i) x.labels[i] = static_cast<int32_t>(i / per_class);
  std::shuffle(x.labels.begin(), x.labels.end(), rng);
  return x;
}

double direct_sq_l2(const std::vector<double>& e, int64_t d, int64_t i, int64_t j) {
  double s = 0;
  for (int64_t k = 0; k < d; ++k)
    s += (e[i * d + k] - e[j * d + k]) * (e[i * d + k] - e[j * d + k]);
  return s;
}

// Triple loops straight from the definitions in triplet.h, float64, direct differences.
TripletResult64 brute_force(const Batch& x, Mining mode, double margin) {
  const std::vector<double> e = x.e64();
  TripletResult64 r;
  auto add = [&](int64_t a, int64_t p, int64_t n, double dap, double dan) {
    const double l = std::max(dap - dan + margin, 0.0);
    r.loss_sum += l;
    r.active += l > 0;
    ++r.count;
    r.triplets.push_back({int32_t(a), int32_t(p), int32_t(n)});
  };
  for (int64_t a = 0; a < x.b; ++a) {
    auto dist = [&](int64_t j) { return direct_sq_l2(e, x.d, a, j); };
    auto positive = [&](int64_t j) { return j != a && x.labels[j] == x.labels[a]; };
    auto negative = [&](int64_t j) { return x.labels[j] != x.labels[a]; };
    int64_t far_p = -1, near_n = -1;
    for (int64_t j = 0; j < x.b; ++j) {
      if (positive(j) && (far_p < 0 || dist(j) > dist(far_p))) far_p = j;
      if (negative(j) && (near_n < 0 || dist(j) < dist(near_n))) near_n = j;
    }
    if (near_n < 0) continue;
    if (mode == Mining::kBatchHard) {
      if (far_p >= 0) add(a, far_p, near_n, dist(far_p), dist(near_n));
      continue;
    }
    for (int64_t p = 0; p < x.b; ++p) {
      if (!positive(p)) continue;
      int64_t semi = -1;
      for (int64_t n = 0; n < x.b; ++n) {
        if (!negative(n)) continue;
        if (mode == Mining::kBatchAll) add(a, p, n, dist(p), dist(n));
        if (dist(n) > dist(p) && dist(n) < dist(p) + margin && (semi < 0 || dist(n) < dist(semi)))
          semi = n;
      }
      if (mode == Mining::kSemiHard)
        add(a, p, semi >= 0 ? semi : near_n, dist(p), dist(semi >= 0 ? semi : near_n));
    }
  }
  r.loss_mean = r.count ? r.loss_sum / r.count : 0;
  return r;
}

const Mining kModes[] = {Mining::kBatchAll, Mining::kBatchHard, Mining::kSemiHard};

TEST(Triplet, CpuMatchesBruteForceOnRandomBatches) {
  for (auto [b, d, k, seed] : {std::tuple<int64_t, int64_t, int, uint64_t>{40, 16, 4, 1},
                               {57, 3, 5, 2},
                               {64, 128, 2, 3},
                               {33, 7, 1, 4}}) {
    const Batch x = random_batch(b, d, k, seed);
    for (Mining mode : kModes) {
      SCOPED_TRACE(::testing::Message() << to_string(mode) << " B=" << b << " d=" << d
                                        << " per_class=" << k << " seed=" << seed);
      TripletOptions o;
      o.want_triplets = mode != Mining::kBatchAll;
      const TripletResult r = triplet_loss(x.e.data(), b, d, x.labels, mode, o);
      const TripletResult64 ref = brute_force(x, mode, o.margin);
      EXPECT_NEAR(r.loss_sum, ref.loss_sum, 1e-4 * std::max(1.0, ref.loss_sum));
      EXPECT_EQ(r.count, ref.count);
      EXPECT_NEAR(static_cast<double>(r.active), static_cast<double>(ref.active),
                  0.002 * ref.count + 1);
      if (k > 1) {
        EXPECT_GT(r.count, 0);
      }
      if (o.want_triplets) {
        EXPECT_EQ(r.triplets, ref.triplets);
      }
    }
  }
}

TEST(Triplet, GramDistancesMatchDirectDifferences) {
  const Batch x = random_batch(50, 33, 5, 7);
  const std::vector<float> dist = pairwise_sq_l2_gram(x.e.data(), x.b, x.d);
  const std::vector<double> e = x.e64();
  for (int64_t i = 0; i < x.b; ++i)
    for (int64_t j = 0; j < x.b; ++j) {
      EXPECT_NEAR(dist[i * x.b + j], direct_sq_l2(e, x.d, i, j), 2e-6) << i << "," << j;
      if (i == j) {
        EXPECT_EQ(dist[i * x.b + j], 0.f);
      }
    }
}

TEST(Triplet, FloatAndDoublePathsAgree) {
  const Batch x = random_batch(48, 20, 4, 11);
  const std::vector<double> e64 = x.e64();
  for (Mining mode : kModes) {
    const TripletResult f = triplet_loss(x.e.data(), x.b, x.d, x.labels, mode);
    const TripletResult64 d = triplet_loss(e64.data(), x.b, x.d, x.labels, mode);
    EXPECT_NEAR(f.loss_sum, d.loss_sum, 1e-4 * std::max(1.0, d.loss_sum)) << to_string(mode);
    ASSERT_EQ(f.grad.size(), d.grad.size());
    for (size_t i = 0; i < f.grad.size(); ++i)
      EXPECT_NEAR(f.grad[i], d.grad[i], 1e-3 * std::max(1.0, std::abs(d.grad[i])))
          << to_string(mode) << " element " << i;
  }
}

// ---- gradients against central finite differences in float64 ---------------------------------

template <typename Loss>
void expect_gradient_matches_fd(std::vector<double> e, const std::vector<double>& grad, Loss loss,
                                const std::string& what) {
  const double h = 1e-6;
  ASSERT_EQ(grad.size(), e.size()) << what;
  double max_abs = 0;
  for (double g : grad) max_abs = std::max(max_abs, std::abs(g));
  EXPECT_GT(max_abs, 0) << what << ": gradient is all zero";
  for (size_t i = 0; i < e.size(); ++i) {
    const double keep = e[i];
    e[i] = keep + h;
    const double up = loss(e);
    e[i] = keep - h;
    const double down = loss(e);
    e[i] = keep;
    EXPECT_NEAR(grad[i], (up - down) / (2 * h), 1e-6 * std::max(1.0, std::abs(grad[i])))
        << what << " element " << i;
  }
}

TEST(Triplet, MinedGradientsMatchCentralFiniteDifferences) {
  const Batch x = random_batch(12, 5, 3, 21);
  TripletOptions o;
  o.margin = 0.5f;
  for (Mining mode : kModes) {
    const std::vector<double> e = x.e64();
    const TripletResult64 r = triplet_loss(e.data(), x.b, x.d, x.labels, mode, o);
    ASSERT_GT(r.active, 0) << to_string(mode);
    expect_gradient_matches_fd(
        e, r.grad,
        [&](const std::vector<double>& p) {
          return triplet_loss(p.data(), x.b, x.d, x.labels, mode, o).loss_sum;
        },
        to_string(mode));
  }
}

TEST(Triplet, ExplicitGradientMatchesCentralFiniteDifferences) {
  const Batch x = random_batch(9, 4, 3, 5);
  const std::vector<Triplet> t = {{0, 1, 2}, {3, 4, 5}, {6, 7, 8}, {2, 0, 6}, {5, 5, 1}};
  TripletOptions o;
  o.margin = 1.0f;
  const std::vector<double> e = x.e64();
  const TripletResult64 r = triplet_loss(e.data(), x.b, x.d, t, o);
  expect_gradient_matches_fd(
      e, r.grad,
      [&](const std::vector<double>& p) { return triplet_loss(p.data(), x.b, x.d, t, o).loss_sum; },
      "explicit");
}

// ---- edge cases ------------------------------------------------------------------------------

void expect_empty(const TripletResult& r, int64_t b, int64_t d) {
  EXPECT_EQ(r.count, 0);
  EXPECT_EQ(r.active, 0);
  EXPECT_EQ(r.loss_sum, 0);
  EXPECT_EQ(r.loss_mean, 0);
  EXPECT_EQ(r.grad, std::vector<float>(b * d, 0.f));
}

TEST(Triplet, SingleSampleLabelIsNeverAnAnchorButStillANegative) {
  // Labels {0, 0, 7}: row 2 has no positive. Batch-hard: anchors 0 and 1 only, both with n = 2.
  const std::vector<float> e = {0, 0, 1, 0, 0, 0.5f};
  const TripletResult r =
      triplet_loss(e.data(), 3, 2, {0, 0, 7}, Mining::kBatchHard, with_triplets());
  EXPECT_EQ(r.count, 2);
  const std::vector<Triplet> want = {{0, 1, 2}, {1, 0, 2}};
  EXPECT_EQ(r.triplets, want);
  // D01 = 1, D02 = 0.25, D12 = 1.25: losses 0.95 and 0.
  EXPECT_NEAR(r.loss_sum, 0.95, 1e-6);
  EXPECT_EQ(triplet_loss(e.data(), 3, 2, {0, 0, 7}, Mining::kBatchAll).count, 2);
  EXPECT_EQ(triplet_loss(e.data(), 3, 2, {0, 0, 7}, Mining::kSemiHard).count, 2);
}

TEST(Triplet, AllOneLabelAndSingleRowHaveNoTriplets) {
  const Batch x = random_batch(10, 4, 10, 3);
  for (Mining mode : kModes) {
    expect_empty(triplet_loss(x.e.data(), 10, 4, std::vector<int32_t>(10, 5), mode), 10, 4);
    expect_empty(triplet_loss(x.e.data(), 1, 4, std::vector<int32_t>{0}, mode), 1, 4);
  }
  expect_empty(triplet_loss(x.e.data(), 10, 4, std::vector<Triplet>{}), 10, 4);
}

TEST(Triplet, RejectsNaNInfAndBadArguments) {
  Batch x = random_batch(6, 3, 2, 9);
  x.e[3 * 3 + 1] = std::nanf("");
  for (Mining mode : kModes)
    expect_error([&] { triplet_loss(x.e.data(), 6, 3, x.labels, mode); }, {"row 3"});
  x.e[3 * 3 + 1] = 0;
  x.e[5 * 3] = INFINITY;
  expect_error([&] { triplet_loss(x.e.data(), 6, 3, std::vector<Triplet>{{0, 1, 2}}); }, {"row 5"});
  x.e[5 * 3] = 0;
  expect_error([&] { triplet_loss(x.e.data(), 6, 3, {0, 1}, Mining::kBatchHard); }, {"labels"});
  expect_error(
      [&] {
        triplet_loss(x.e.data(), 6, 3, std::vector<Triplet>{{0, 1, 6}});
      },
      {"index 6"});
  TripletOptions bad;
  bad.margin = -1;
  expect_error([&] { triplet_loss(x.e.data(), 6, 3, x.labels, Mining::kBatchAll, bad); },
               {"margin"});
  expect_error([&] { triplet_loss(x.e.data(), 0, 3, {}, Mining::kBatchAll); }, {"B >= 1"});
  expect_error([] { parse_mining("hardest"); }, {"hardest"});
  EXPECT_EQ(parse_mining("semi_hard"), Mining::kSemiHard);
}

TEST(Triplet, CpuResultDoesNotDependOnThreadCount) {
  const Batch x = random_batch(300, 32, 4, 13);
  const int threads = omp_get_max_threads();
  for (Mining mode : kModes) {
    omp_set_num_threads(1);
    const TripletResult one = triplet_loss(x.e.data(), x.b, x.d, x.labels, mode);
    omp_set_num_threads(std::max(2, threads));
    const TripletResult many = triplet_loss(x.e.data(), x.b, x.d, x.labels, mode);
    EXPECT_EQ(one.loss_sum, many.loss_sum) << to_string(mode);
    EXPECT_EQ(one.grad, many.grad) << to_string(mode);
  }
  omp_set_num_threads(threads);
}

// ---- the CUDA path -----------------------------------------------------------------------------

TEST(TripletGpu, ConstructionWithoutGpuThrowsAClearError) {
  if (gpu_available()) GTEST_SKIP() << "a GPU is present: " << gpu_status();
  expect_error([] { TripletLossCuda gpu; }, {"TripletLossCuda"});
}

TEST(TripletGpu, HandFixture) {
  FN_REQUIRE_GPU();
  TripletLossCuda gpu;
  for (bool deterministic : {false, true}) {
    TripletOptions o = with_triplets();
    o.deterministic = deterministic;
    for (const Expected& x : kFixtureExpected) {
      const TripletResult r = gpu.compute(kFixture.data(), 5, 2, kFixtureLabels, x.mode, o);
      expect_fixture(r, x);
      expect_fixture_selection(r, x.mode);
    }
    const TripletResult r = gpu.compute(kFixture.data(), 5, 2, kFixtureTriplets, o);
    EXPECT_NEAR(r.loss_sum, 1.6075, 1e-5);
    ASSERT_EQ(r.grad.size(), kFixtureGrad.size());
    for (size_t i = 0; i < r.grad.size(); ++i) EXPECT_NEAR(r.grad[i], kFixtureGrad[i], 1e-5);
  }
}

double rel_l2(const std::vector<float>& x, const std::vector<float>& ref) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    diff += (double(x[i]) - ref[i]) * (double(x[i]) - ref[i]);
    norm += double(ref[i]) * ref[i];
  }
  return std::sqrt(diff / std::max(norm, 1e-30));
}

// GPU and CPU distances differ in rounding, so a mined choice can differ where two distances
// are within rounding of each other (batch-hard ties) or of a semi-hard bound (D(a,n) vs
// D(a,p)). Allow a small share of differences; for batch-hard the picks must tie in distance.
void expect_same_selection(const TripletResult& gpu, const TripletResult& cpu, const Batch& x,
                           Mining mode) {
  ASSERT_EQ(gpu.triplets.size(), cpu.triplets.size());
  const std::vector<double> e = x.e64();
  size_t differ = 0;
  for (size_t t = 0; t < cpu.triplets.size(); ++t) {
    const Triplet &g = gpu.triplets[t], &c = cpu.triplets[t];
    if (g == c) continue;
    ++differ;
    EXPECT_EQ(g.a, c.a);
    if (mode != Mining::kBatchHard) continue;
    EXPECT_NEAR(direct_sq_l2(e, x.d, g.a, g.p), direct_sq_l2(e, x.d, c.a, c.p), 1e-4);
    EXPECT_NEAR(direct_sq_l2(e, x.d, g.a, g.n), direct_sq_l2(e, x.d, c.a, c.n), 1e-4);
  }
  EXPECT_LE(differ, cpu.triplets.size() / 100 + 1);
}

// The gradient of a mined mode is checked against the CPU gradient of the GPU's own triplets
// (selection is checked separately); batch-all against the CPU reference directly.
void expect_gradient_matches(const TripletResult& g, const TripletResult& c, const Batch& x,
                             Mining mode, const TripletOptions& o) {
  for (float v : g.grad) ASSERT_TRUE(std::isfinite(v));
  TripletResult ref = c;
  if (mode != Mining::kBatchAll) {
    TripletOptions given;
    given.margin = o.margin;
    ref = triplet_loss(x.e.data(), x.b, x.d, g.triplets, given);
  }
  if (ref.active > 0) {
    EXPECT_LT(rel_l2(g.grad, ref.grad), 1e-3);
  } else {
    EXPECT_EQ(g.grad, ref.grad);
  }
}

TEST(TripletGpu, MatchesCpuReferenceOnRandomBatches) {
  FN_REQUIRE_GPU();
  TripletLossCuda gpu;
  for (auto [b, d, k, seed] : {std::tuple<int64_t, int64_t, int, uint64_t>{1, 8, 1, 1},
                               {7, 3, 2, 2},
                               {130, 128, 4, 3},
                               {300, 130, 3, 4},
                               {1000, 64, 5, 5},
                               {513, 17, 1, 6}}) {
    const Batch x = random_batch(b, d, k, seed);
    for (Mining mode : kModes)
      for (bool deterministic : {false, true}) {
        SCOPED_TRACE(::testing::Message()
                     << to_string(mode) << " B=" << b << " d=" << d << " per_class=" << k
                     << " seed=" << seed << " deterministic=" << deterministic);
        TripletOptions o;
        o.want_triplets = true;
        o.deterministic = deterministic;
        const TripletResult g = gpu.compute(x.e.data(), b, d, x.labels, mode, o);
        const TripletResult c = triplet_loss(x.e.data(), b, d, x.labels, mode, o);
        EXPECT_EQ(g.count, c.count);
        EXPECT_NEAR(g.loss_sum, c.loss_sum, 1e-4 * std::max(1.0, c.loss_sum));
        EXPECT_NEAR(static_cast<double>(g.active), static_cast<double>(c.active),
                    0.001 * c.count + 1);
        expect_gradient_matches(g, c, x, mode, o);
        if (mode != Mining::kBatchAll) expect_same_selection(g, c, x, mode);
      }
  }
}

TEST(TripletGpu, DeterministicModeGivesTheSameBitsEveryRun) {
  FN_REQUIRE_GPU();
  TripletLossCuda gpu;
  const Batch x = random_batch(777, 128, 4, 8);
  TripletOptions o;
  o.deterministic = true;
  for (Mining mode : kModes) {
    const TripletResult first = gpu.compute(x.e.data(), x.b, x.d, x.labels, mode, o);
    for (int run = 0; run < 3; ++run) {
      const TripletResult again = gpu.compute(x.e.data(), x.b, x.d, x.labels, mode, o);
      EXPECT_EQ(std::memcmp(&first.loss_sum, &again.loss_sum, sizeof(double)), 0)
          << to_string(mode);
      EXPECT_EQ(first.grad, again.grad) << to_string(mode);
    }
  }
}

TEST(TripletGpu, ExplicitTripletsMatchCpu) {
  FN_REQUIRE_GPU();
  const Batch x = random_batch(200, 96, 4, 12);
  std::mt19937 rng(3);
  std::uniform_int_distribution<int32_t> pick(0, 199);
  std::vector<Triplet> t(500);
  for (Triplet& v : t) v = {pick(rng), pick(rng), pick(rng)};
  TripletLossCuda gpu;
  TripletOptions o;
  o.margin = 0.5f;
  const TripletResult c = triplet_loss(x.e.data(), x.b, x.d, t, o);
  for (bool deterministic : {false, true}) {
    o.deterministic = deterministic;
    const TripletResult g = gpu.compute(x.e.data(), x.b, x.d, t, o);
    EXPECT_NEAR(g.loss_sum, c.loss_sum, 1e-4 * std::max(1.0, c.loss_sum));
    EXPECT_EQ(g.count, 500);
    ASSERT_EQ(g.losses.size(), c.losses.size());
    for (size_t i = 0; i < c.losses.size(); ++i) EXPECT_NEAR(g.losses[i], c.losses[i], 1e-4);
    EXPECT_LT(rel_l2(g.grad, c.grad), 1e-4);
  }
}

// A batch already on the GPU (a CUDA tensor's memory) gives the host batch's loss, count and
// gradient, with the gradient written to the caller's device buffer.
TEST(TripletGpu, DeviceBatchMatchesHostBatch) {
  FN_REQUIRE_GPU();
#ifdef FACENET_HAS_CUDA
  const Batch x = random_batch(128, 64, 8, 21);
  TripletLossCuda gpu;
  const cudaStream_t s = gpu.context().stream();
  DeviceBuffer<float> e(x.e.size()), grad(x.e.size());
  e.upload(x.e.data(), x.e.size(), s);
  for (Mining mining : {Mining::kBatchAll, Mining::kBatchHard, Mining::kSemiHard}) {
    TripletOptions o;
    o.deterministic = true;
    const TripletResult host = gpu.compute(x.e.data(), x.b, x.d, x.labels, mining, o);
    gpu.set_batch_device(e.data(), x.b, x.d, x.labels, grad.data());
    gpu.run(mining, o);
    const TripletResult dev = gpu.fetch();
    EXPECT_EQ(dev.count, host.count) << to_string(mining);
    EXPECT_EQ(dev.active, host.active) << to_string(mining);
    EXPECT_NEAR(dev.loss_sum, host.loss_sum, 1e-5 * std::max(1.0, host.loss_sum));
    EXPECT_TRUE(dev.grad.empty()) << "a device batch's gradient stays on the device";
    std::vector<float> g(x.e.size());
    grad.download(g.data(), g.size(), s);
    FN_GPU_CHECK(cudaStreamSynchronize(s));
    EXPECT_LT(rel_l2(g, host.grad), 1e-6) << to_string(mining);
  }
  gpu.set_batch_device(e.data(), x.b, x.d, x.labels, nullptr);
  expect_error([&] { gpu.run(Mining::kBatchHard, {}); }, {"set_batch_device's grad"});
#endif
}

TEST(TripletGpu, RejectsNaNAndMisuse) {
  FN_REQUIRE_GPU();
  TripletLossCuda gpu;
  Batch x = random_batch(6, 3, 2, 9);
  x.e[4 * 3] = std::nanf("");
  expect_error([&] { gpu.set_batch(x.e.data(), 6, 3, x.labels); }, {"row 4"});
  expect_error([&] { gpu.fetch(); }, {"nothing was run"});
  x.e[4 * 3] = 0;
  gpu.set_batch(x.e.data(), 6, 3, std::vector<Triplet>{{0, 1, 2}});
  expect_error([&] { gpu.run(Mining::kBatchHard); }, {"labels"});
}

}  // namespace
}  // namespace facenet
