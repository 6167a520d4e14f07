// Exact L2 k-NN: CPU index against a double-precision brute force, GPU index against the CPU.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "engine/core/error.h"
#include "engine/search/knn.h"
#include "tests/knn_agreement.h"
#include "tests/test_util.h"

namespace facenet {
namespace {

using test::compare_knn;
using test::expect_error;
using test::KnnAgreement;

// n unit vectors of dimension dim from a seeded normal distribution.
std::vector<float> unit_vectors(int64_t n, int dim, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> x(n * dim);
  for (int64_t i = 0; i < n; ++i) {
    float* row = &x[i * dim];
    double s = 0;
    for (int c = 0; c < dim; ++c) {
      row[c] = normal(rng);
      s += double(row[c]) * row[c];
    }
    for (int c = 0; c < dim; ++c) row[c] = static_cast<float>(row[c] / std::sqrt(s));
  }
  return x;
}

struct Knn {
  std::vector<float> dist;
  std::vector<int64_t> labels;
  Knn(int64_t nq, int k) : dist(nq * k), labels(nq * k) {}
};

// Squared L2 by direct differences in double, sorted by (distance, position): the reference.
Knn brute_force(const std::vector<float>& gallery, const std::vector<int64_t>& ids,
                const std::vector<float>& queries, int dim, int k) {
  const int64_t n = static_cast<int64_t>(ids.size());
  const int64_t nq = static_cast<int64_t>(queries.size()) / dim;
  Knn out(nq, k);
  for (int64_t q = 0; q < nq; ++q) {
    std::vector<std::pair<double, int64_t>> all(n);
    for (int64_t s = 0; s < n; ++s) {
      double d = 0;
      for (int c = 0; c < dim; ++c) {
        const double diff = double(queries[q * dim + c]) - gallery[s * dim + c];
        d += diff * diff;
      }
      all[s] = {d, s};
    }
    std::sort(all.begin(), all.end());
    for (int i = 0; i < k; ++i) {
      const bool real = i < n;
      out.dist[q * k + i] =
          real ? static_cast<float>(all[i].first) : std::numeric_limits<float>::infinity();
      out.labels[q * k + i] = real ? ids[all[i].second] : -1;
    }
  }
  return out;
}

Knn cpu_search(const CpuFlatIndex& index, const std::vector<float>& queries, int k,
               KnnAlgorithm algorithm, CpuSearchStats* stats = nullptr) {
  const int64_t nq = static_cast<int64_t>(queries.size()) / index.dim();
  Knn out(nq, k);
  index.search(queries.data(), nq, index.dim(), k, out.dist.data(), out.labels.data(), algorithm,
               stats);
  return out;
}

constexpr CpuStorage kStorages[] = {CpuStorage::kFloat32, CpuStorage::kBFloat16};
constexpr KnnAlgorithm kCpuAlgorithms[] = {KnnAlgorithm::kFused, KnnAlgorithm::kGemm};

std::string describe(CpuStorage storage, KnnAlgorithm algorithm) {
  return std::string(to_string(storage)) + " " + to_string(algorithm);
}

// Distances within `tol`, every differing label explained by a tie within `tol`, and at most
// `max_share` of the ranks tie-reordered.
void expect_agree(const Knn& a, const Knn& b, int64_t nq, int k, double tol, double max_share) {
  const KnnAgreement r =
      compare_knn(a.dist.data(), a.labels.data(), b.dist.data(), b.labels.data(), nq, k, tol);
  EXPECT_LE(r.max_distance_error, tol);
  EXPECT_EQ(r.unexplained, 0) << r.label_mismatches << " label mismatches";
  EXPECT_LE(double(r.label_mismatches), max_share * double(r.compared));
  for (size_t i = 0; i < a.dist.size(); ++i) {
    ASSERT_FALSE(std::isnan(a.dist[i])) << "rank " << i;
    ASSERT_GE(a.dist[i], 0.f) << "rank " << i;
  }
}

struct Shape {
  int64_t n, nq;
  int dim, k;
};

std::string describe(const Shape& s, uint32_t seed) {
  return "n=" + std::to_string(s.n) + " nq=" + std::to_string(s.nq) +
         " dim=" + std::to_string(s.dim) + " k=" + std::to_string(s.k) +
         " seed=" + std::to_string(seed);
}

std::vector<int64_t> sequential_ids(int64_t n, int64_t first) {
  std::vector<int64_t> ids(n);
  std::iota(ids.begin(), ids.end(), first);
  return ids;
}

// bf16 storage re-ranks its candidates with the fp32 fused scan's own arithmetic, so where the
// bound keeps every row of the exact top-k the two results are the same bits.
void expect_same_bits(const Knn& got, const Knn& want) {
  ASSERT_EQ(got.dist.size(), want.dist.size());
  for (size_t i = 0; i < want.dist.size(); ++i) {
    ASSERT_EQ(got.labels[i], want.labels[i]) << "rank " << i;
    ASSERT_EQ(got.dist[i], want.dist[i]) << "rank " << i;
  }
}

// Both storages against the double-precision reference; bf16 storage re-ranks its candidates
// with the fp32 fused scan's own arithmetic, so it must also give that scan's bits exactly.
TEST(CpuFlatIndex, ScanAndGemmMatchDoublePrecisionBruteForce) {
  const Shape shapes[] = {{1, 3, 16, 1},        {700, 5, 128, 10}, {3000, 40, 128, 10},
                          {2049, 300, 64, 100}, {513, 2, 24, 600}, {5000, 17, 128, 1},
                          {1, 2, 7, 1},         {900, 5, 24, 10},  {3000, 300, 100, 50},
                          {257, 3, 128, 300}};
  uint32_t seed = 11;
  for (const Shape& s : shapes) {
    SCOPED_TRACE(describe(s, seed));
    const auto gallery = unit_vectors(s.n, s.dim, seed);
    const auto queries = unit_vectors(s.nq, s.dim, seed + 1);
    const auto ids = sequential_ids(s.n, 1000);  // labels differ from slots on purpose
    const Knn want = brute_force(gallery, ids, queries, s.dim, s.k);
    CpuFlatIndex fp32(s.dim), bf16(s.dim, CpuStorage::kBFloat16);
    fp32.add(gallery.data(), s.n, s.dim, ids.data());
    bf16.add(gallery.data(), s.n, s.dim, ids.data());
    const Knn fused = cpu_search(fp32, queries, s.k, KnnAlgorithm::kFused);
    for (KnnAlgorithm algorithm : kCpuAlgorithms) {
      SCOPED_TRACE(to_string(algorithm));
      expect_agree(cpu_search(fp32, queries, s.k, algorithm), want, s.nq, s.k, 2e-5, 0.01);
      CpuSearchStats stats;
      const Knn got = cpu_search(bf16, queries, s.k, algorithm, &stats);
      expect_agree(got, want, s.nq, s.k, 2e-5, 0.01);
      expect_same_bits(got, fused);
      EXPECT_GE(stats.reranked, s.nq * std::min<int64_t>(s.k, s.n));
      // The bound is worth having: far fewer rows than the gallery are re-ranked.
      if (s.n >= 1000 && s.k <= 10) {
        EXPECT_LT(stats.reranked, s.nq * s.n / 20);
      }
    }
    seed += 2;
  }
}

TEST(CpuFlatIndex, KBeyondGalleryPadsWithMinusOneAndInfinity) {
  const auto gallery = unit_vectors(3, 8, 5);
  const auto queries = unit_vectors(2, 8, 6);
  for (CpuStorage storage : kStorages)
    for (KnnAlgorithm algorithm : kCpuAlgorithms) {
      SCOPED_TRACE(describe(storage, algorithm));
      CpuFlatIndex index(8, storage);
      index.add(gallery.data(), 3, 8);
      const Knn got = cpu_search(index, queries, 5, algorithm);
      for (int q = 0; q < 2; ++q) {
        for (int i = 0; i < 3; ++i) EXPECT_TRUE(std::isfinite(got.dist[q * 5 + i]));
        for (int i = 3; i < 5; ++i) {
          EXPECT_EQ(got.labels[q * 5 + i], -1);
          EXPECT_EQ(got.dist[q * 5 + i], std::numeric_limits<float>::infinity());
        }
      }
    }
  CpuFlatIndex empty(8);
  const Knn none = cpu_search(empty, queries, 2, KnnAlgorithm::kAuto);
  EXPECT_EQ(none.labels, std::vector<int64_t>(4, -1));
}

TEST(CpuFlatIndex, EqualDistancesOrderBySmallerSlot) {
  // Five copies of one vector under descending ids: slot order, not id order, breaks the tie.
  const auto one = unit_vectors(1, 16, 3);
  std::vector<float> gallery;
  for (int i = 0; i < 5; ++i) gallery.insert(gallery.end(), one.begin(), one.end());
  const std::vector<int64_t> ids = {50, 40, 30, 20, 10};
  for (CpuStorage storage : kStorages) {
    CpuFlatIndex index(16, storage);
    index.add(gallery.data(), 5, 16, ids.data());
    for (KnnAlgorithm algorithm : kCpuAlgorithms) {
      const Knn got = cpu_search(index, one, 5, algorithm);
      EXPECT_EQ(got.labels, ids) << describe(storage, algorithm);
    }
  }
}

TEST(CpuFlatIndex, RemoveKeepsSearchExactAndLabelsRight) {
  const int dim = 32;
  const int64_t n = 400;
  const auto gallery = unit_vectors(n, dim, 21);
  const auto queries = unit_vectors(20, dim, 22);
  const auto ids = sequential_ids(n, 0);
  // Last slots (chains of swap-with-last), a middle one, an unknown id and a repeat.
  const std::vector<int64_t> gone = {399, 398, 5, 397, 12345, 5, 0, 250};

  std::vector<float> kept;
  std::vector<int64_t> kept_ids;
  for (int64_t i = 0; i < n; ++i)
    if (std::find(gone.begin(), gone.end(), i) == gone.end()) {
      kept.insert(kept.end(), &gallery[i * dim], &gallery[(i + 1) * dim]);
      kept_ids.push_back(i);
    }
  const Knn want = brute_force(kept, kept_ids, queries, dim, 10);
  for (CpuStorage storage : kStorages) {
    CpuFlatIndex index(dim, storage);
    index.add(gallery.data(), n, dim, ids.data());
    EXPECT_EQ(index.remove(gone.data(), static_cast<int64_t>(gone.size())), 6);
    EXPECT_EQ(index.size(), n - 6);
    for (KnnAlgorithm algorithm : kCpuAlgorithms) {
      SCOPED_TRACE(describe(storage, algorithm));
      expect_agree(cpu_search(index, queries, 10, algorithm), want, 20, 10, 2e-5, 0.01);
    }
  }
}

// Adversarial for the bound: q = c (1, ..., 1) with c on a bf16 rounding midpoint, and two
// families of rows x (1, ..., 1) just below (bf16 rounds them down) and just above (rounds up)
// it, at the same spread of true distances. The rounding error g - bf16(g) is parallel to q,
// where Cauchy-Schwarz is tight: the bf16 distances push every "below" row ~0.0055 away and
// pull every "above" row as close, so the bf16 top-k holds no "below" row while the exact
// top-k holds about half. A bound short by a factor 2 would drop them.
TEST(CpuFlatIndex, Bf16BoundKeepsRowsThatRoundingPushesOut) {
  const int dim = 128;
  const int64_t per_family = 600;
  const float ulp = std::ldexp(1.f, -11);  // bf16 spacing in [2^-4, 2^-3)
  const float mid = 181.5f * ulp;          // ~0.0886: q is near unit norm
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> spread(0.f, 0.45f);
  std::vector<float> gallery;
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < 2 * per_family; ++i) {
    const bool below = i < per_family;
    const float x = mid + (below ? -1.f : 1.f) * (0.01f + spread(rng)) * ulp;
    gallery.insert(gallery.end(), dim, x);
    ids.push_back(i);  // ids < per_family: the "below" family
  }
  const auto others = unit_vectors(3000, dim, 8);
  gallery.insert(gallery.end(), others.begin(), others.end());
  for (int64_t i = 0; i < 3000; ++i) ids.push_back(2 * per_family + i);
  const std::vector<float> query(dim, mid);
  const int64_t n = static_cast<int64_t>(ids.size());
  const int k = 20;

  // The adversary is real: the estimate the scan ranks by, ||q||^2 + ||g||^2 - 2 q.bf16(g),
  // puts no "below" row in its top-k.
  std::vector<std::pair<double, int64_t>> rounded(n);
  for (int64_t s = 0; s < n; ++s) {
    double d = 0;
    for (int c = 0; c < dim; ++c) {
      const float g = gallery[s * dim + c];
      uint32_t b;
      std::memcpy(&b, &g, 4);
      b = (b + 0x8000u) & 0xffff0000u;
      float h;
      std::memcpy(&h, &b, 4);
      d += double(query[c]) * query[c] + double(g) * g - 2.0 * query[c] * h;
    }
    rounded[s] = {d, s};
  }
  std::sort(rounded.begin(), rounded.end());
  const Knn exact = brute_force(gallery, ids, query, dim, k);
  int64_t below_rounded = 0, below_exact = 0;
  for (int i = 0; i < k; ++i) {
    below_rounded += rounded[i].second < per_family;
    below_exact += exact.labels[i] < per_family;
  }
  ASSERT_EQ(below_rounded, 0);
  ASSERT_GE(below_exact, k / 4);

  CpuFlatIndex fp32(dim), bf16(dim, CpuStorage::kBFloat16);
  fp32.add(gallery.data(), n, dim, ids.data());
  bf16.add(gallery.data(), n, dim, ids.data());
  const Knn want = cpu_search(fp32, query, k, KnnAlgorithm::kFused);
  for (KnnAlgorithm algorithm : kCpuAlgorithms) {
    SCOPED_TRACE(to_string(algorithm));
    CpuSearchStats stats;
    const Knn got = cpu_search(bf16, query, k, algorithm, &stats);
    expect_same_bits(got, want);
    expect_agree(got, exact, 1, k, 2e-5, 1.0);
    EXPECT_GT(stats.reranked, k);
  }
}

// Many rows at nearly the same distance from each query (q plus perturbations far below the
// bf16 spacing, in random directions), and exact duplicates among them: ties and near-ties
// that only the low bits decide.
TEST(CpuFlatIndex, Bf16NearTiesAndDuplicatesMatchFp32) {
  const int dim = 64;
  const auto queries = unit_vectors(6, dim, 31);
  std::mt19937 rng(32);
  std::normal_distribution<float> normal;
  std::vector<float> gallery = unit_vectors(2000, dim, 33);
  for (int64_t j = 0; j < 6; ++j)
    for (int r = 0; r < 150; ++r) {
      const size_t at = gallery.size();
      for (int c = 0; c < dim; ++c) gallery.push_back(queries[j * dim + c] + 3e-5f * normal(rng));
      if (r % 10 == 0)  // duplicate the row just added
        gallery.insert(gallery.end(), gallery.begin() + at, gallery.begin() + at + dim);
    }
  const int64_t n = static_cast<int64_t>(gallery.size()) / dim;
  const auto ids = sequential_ids(n, 0);
  CpuFlatIndex fp32(dim), bf16(dim, CpuStorage::kBFloat16);
  fp32.add(gallery.data(), n, dim);
  bf16.add(gallery.data(), n, dim);
  const Knn want = cpu_search(fp32, queries, 40, KnnAlgorithm::kFused);
  const Knn exact = brute_force(gallery, ids, queries, dim, 40);
  for (KnnAlgorithm algorithm : kCpuAlgorithms) {
    SCOPED_TRACE(to_string(algorithm));
    const Knn got = cpu_search(bf16, queries, 40, algorithm);
    expect_same_bits(got, want);
    expect_agree(got, exact, 6, 40, 2e-5, 1.0);
  }
}

TEST(CpuFlatIndex, Bf16StorageHoldsHalfScanBytesInTheSameMemory) {
  const auto gallery = unit_vectors(100, 32, 3);
  CpuFlatIndex fp32(32), bf16(32, CpuStorage::kBFloat16);
  fp32.add(gallery.data(), 100, 32);
  bf16.add(gallery.data(), 100, 32);
  EXPECT_EQ(bf16.scan_bytes() * 2, fp32.scan_bytes());
  EXPECT_EQ(bf16.gallery_bytes(), fp32.gallery_bytes() + 100 * 2 * sizeof(float));
  EXPECT_EQ(parse_cpu_storage("bf16"), CpuStorage::kBFloat16);
  expect_error([] { parse_cpu_storage("fp16"); }, {"'fp16'", "fp32 or bf16"});
  std::vector<float> huge(32, 1.f);
  huge[5] = 3.397e38f;  // rounds to +inf in bf16
  expect_error([&] { bf16.add(huge.data(), 1, 32); }, {"component 5", "bf16"});
  EXPECT_EQ(bf16.size(), 100);
}

TEST(SlotMap, RemovalPlanMovesTailSlotsIntoHoles) {
  SlotMap slots;
  slots.append(nullptr, 10, "test");
  const std::vector<int64_t> gone = {2, 9, 8, 7, 3};  // 7 was moved into 2, then removed
  const SlotMap::Moves moves = slots.remove(gone.data(), 5);
  EXPECT_EQ(moves.removed, 5);
  ASSERT_EQ(slots.size(), 5);
  for (size_t i = 0; i < moves.dst.size(); ++i) {
    EXPECT_LT(moves.dst[i], 5);
    EXPECT_GE(moves.src[i], 5);
    EXPECT_EQ(slots.id_at(moves.dst[i]), moves.src[i]);  // ids were sequential: id == old slot
  }
  std::vector<int64_t> left(slots.ids(), slots.ids() + 5);
  std::sort(left.begin(), left.end());
  EXPECT_EQ(left, (std::vector<int64_t>{0, 1, 4, 5, 6}));
}

// Runs fn and expects a facenet::Error whose message contains `needle`.
TEST(CpuFlatIndex, BadInputThrowsNamingTheArgument) {
  auto gallery = unit_vectors(4, 8, 1);
  CpuFlatIndex index(8);
  index.add(gallery.data(), 4, 8);
  std::vector<float> dist(8);
  std::vector<int64_t> labels(8);
  auto query = unit_vectors(1, 8, 2);
  expect_error([&] { index.search(query.data(), 1, 8, 0, dist.data(), labels.data()); }, {"k = 0"});
  expect_error([&] { index.search(query.data(), 1, 7, 1, dist.data(), labels.data()); },
               {"dimension 7"});
  query[3] = std::nanf("");
  expect_error([&] { index.search(query.data(), 1, 8, 1, dist.data(), labels.data()); },
               {"component 3"});
  gallery[9] = std::numeric_limits<float>::infinity();
  expect_error([&] { index.add(gallery.data(), 4, 8); }, {"vector 1 component 1"});
  const std::vector<int64_t> taken = {7, 2};
  expect_error([&] { index.add(unit_vectors(2, 8, 3).data(), 2, 8, taken.data()); },
               {"ids[1] = 2"});
  EXPECT_EQ(index.size(), 4);  // the failed adds left the index as it was
  expect_error([] { parse_knn_algorithm("fast"); }, {"'fast'"});
  expect_error([] { CpuFlatIndex bad(0); }, {"dim = 0"});
}

TEST(CompareKnn, TieReordersAreExplainedAndRealMismatchesAreNot) {
  const std::vector<float> da = {0.1f, 0.5f}, db = {0.1f, 0.5f};
  const std::vector<int64_t> la = {1, 2}, tie = {1, 3}, wrong = {1, 3};
  KnnAgreement r = compare_knn(da.data(), la.data(), db.data(), tie.data(), 1, 2, 1e-6);
  EXPECT_EQ(r.label_mismatches, 1);
  EXPECT_EQ(r.unexplained, 0);
  const std::vector<float> farther = {0.1f, 0.4f};
  r = compare_knn(da.data(), la.data(), farther.data(), wrong.data(), 1, 2, 1e-6);
  EXPECT_EQ(r.unexplained, 1);
  EXPECT_NEAR(r.max_distance_error, 0.1, 1e-6);
}

#ifdef FACENET_HAS_CUDA

Knn gpu_search(GpuFlatIndex& index, const std::vector<float>& queries, int k,
               KnnAlgorithm algorithm) {
  const int64_t nq = static_cast<int64_t>(queries.size()) / index.dim();
  Knn out(nq, k);
  index.search(queries.data(), nq, index.dim(), k, out.dist.data(), out.labels.data(), algorithm);
  return out;
}

// fp16 storage rounds each gallery component (relative 2^-11): squared distances of unit
// vectors move by up to ~1e-3, so near-ties may reorder.
double tolerance_for(GpuStorage storage) {
  return storage == GpuStorage::kFloat16 ? 4e-3 : 1e-4;
}
double tie_share_for(GpuStorage storage) {
  return storage == GpuStorage::kFloat16 ? 0.05 : 0.01;
}

TEST(GpuFlatIndex, MatchesCpuForBothAlgorithmsAndStorages) {
  FN_REQUIRE_GPU();
  GpuContext context;
  const Shape shapes[] = {{1, 1, 128, 1},      {5000, 1, 128, 10},   {20000, 7, 128, 100},
                          {3000, 300, 64, 10}, {70000, 130, 128, 1}, {4000, 9, 128, 1024},
                          {100, 3, 128, 300}};
  uint32_t seed = 101;
  for (const Shape& s : shapes) {
    SCOPED_TRACE(describe(s, seed));
    const auto gallery = unit_vectors(s.n, s.dim, seed);
    const auto queries = unit_vectors(s.nq, s.dim, seed + 1);
    const auto ids = sequential_ids(s.n, 7);
    CpuFlatIndex cpu(s.dim);
    cpu.add(gallery.data(), s.n, s.dim, ids.data());
    const Knn want = cpu_search(cpu, queries, s.k, KnnAlgorithm::kAuto);
    for (GpuStorage storage : {GpuStorage::kFloat32, GpuStorage::kFloat16}) {
      GpuFlatIndex gpu(context, s.dim, storage);
      gpu.add(gallery.data(), s.n, s.dim, ids.data());
      for (KnnAlgorithm algorithm : {KnnAlgorithm::kFused, KnnAlgorithm::kGemm}) {
        SCOPED_TRACE(std::string(to_string(storage)) + " " + to_string(algorithm));
        expect_agree(gpu_search(gpu, queries, s.k, algorithm), want, s.nq, s.k,
                     tolerance_for(storage), tie_share_for(storage));
      }
    }
    seed += 2;
  }
}

TEST(GpuFlatIndex, IncrementalAddAndRemoveMatchCpu) {
  FN_REQUIRE_GPU();
  GpuContext context;
  const int dim = 128;
  const auto first = unit_vectors(3000, dim, 31);
  const auto second = unit_vectors(2500, dim, 32);
  const auto queries = unit_vectors(50, dim, 33);
  const auto ids_first = sequential_ids(3000, 0), ids_second = sequential_ids(2500, 3000);
  std::vector<int64_t> gone = {5499, 5498, 17, 3000, 2999, 777};
  for (int64_t i = 4000; i < 4500; ++i) gone.push_back(i);

  CpuFlatIndex cpu(dim);
  GpuFlatIndex gpu(context, dim, GpuStorage::kFloat32);
  for (auto* step : {&first, &second}) {
    const auto& ids = step == &first ? ids_first : ids_second;
    const int64_t n = static_cast<int64_t>(ids.size());
    cpu.add(step->data(), n, dim, ids.data());
    gpu.add(step->data(), n, dim, ids.data());  // second add grows capacity by doubling
  }
  EXPECT_GE(gpu.capacity(), 5500);
  EXPECT_EQ(cpu.remove(gone.data(), static_cast<int64_t>(gone.size())), 506);
  EXPECT_EQ(gpu.remove(gone.data(), static_cast<int64_t>(gone.size())), 506);
  ASSERT_EQ(gpu.size(), cpu.size());
  for (KnnAlgorithm algorithm : {KnnAlgorithm::kFused, KnnAlgorithm::kGemm}) {
    SCOPED_TRACE(to_string(algorithm));
    const Knn got = gpu_search(gpu, queries, 10, algorithm);
    const Knn want = cpu_search(cpu, queries, 10, KnnAlgorithm::kAuto);
    expect_agree(got, want, 50, 10, 1e-4, 0.01);
    for (int64_t label : got.labels)
      EXPECT_EQ(std::find(gone.begin(), gone.end(), label), gone.end()) << label;
  }
}

TEST(GpuFlatIndex, KBeyondGalleryPadsAndKAbove1024IsRejected) {
  FN_REQUIRE_GPU();
  GpuContext context;
  const auto gallery = unit_vectors(3, 8, 5);
  const auto queries = unit_vectors(2, 8, 6);
  GpuFlatIndex index(context, 8, GpuStorage::kFloat16);
  index.add(gallery.data(), 3, 8);
  for (KnnAlgorithm algorithm : {KnnAlgorithm::kFused, KnnAlgorithm::kGemm}) {
    const Knn got = gpu_search(index, queries, 5, algorithm);
    for (int q = 0; q < 2; ++q)
      for (int i = 3; i < 5; ++i) {
        EXPECT_EQ(got.labels[q * 5 + i], -1);
        EXPECT_EQ(got.dist[q * 5 + i], std::numeric_limits<float>::infinity());
      }
  }
  std::vector<float> dist(2 * 1025);
  std::vector<int64_t> labels(2 * 1025);
  expect_error([&] { index.search(queries.data(), 2, 8, 1025, dist.data(), labels.data()); },
               {"k = 1025"});
  expect_error([&] { GpuFlatIndex bad(context, 12, GpuStorage::kFloat32); }, {"dim = 12"});
}

#endif  // FACENET_HAS_CUDA

}  // namespace
}  // namespace facenet
