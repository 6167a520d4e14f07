// The engine's oneDNN GEMMs: parallel_sgemm and RowGemm against a double-precision product,
// thread-count independence, and the one-thread-per-call policy inside parallel regions.
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "engine/core/blas.h"
#include "tests/test_util.h"

namespace facenet {
namespace {

std::vector<float> normal_values(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> x(n);
  for (float& v : x) v = normal(rng);
  return x;
}

// C = A op(B) in double; op(B)(p, j) is b[p * ldb + j], or b[j * ldb + p] transposed.
std::vector<double> reference_gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                                   const float* b, int64_t ldb, bool trans_b) {
  std::vector<double> c(m * n, 0.0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t p = 0; p < k; ++p)
        c[i * n + j] += double(a[i * lda + p]) * (trans_b ? b[j * ldb + p] : b[p * ldb + j]);
  return c;
}

// fp32 accumulation of k products of N(0, 1) values: errors of a few u sqrt(k) k, far below 4e-6 k.
void expect_close(const std::vector<float>& c, int64_t ldc, const std::vector<double>& want,
                  int64_t m, int64_t n, int64_t k) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      ASSERT_NEAR(c[i * ldc + j], want[i * n + j], 4e-6 * k) << "C(" << i << ", " << j << ")";
    }
}

TEST(ParallelSgemm, MatchesDoubleProductWithLeadingDimensionsAndTranspose) {
  struct Case {
    int64_t m, n, k;
    bool trans_b;
  };
  for (const Case& s : {Case{7, 600, 33, false}, Case{64, 257, 128, true}, Case{1, 1, 1, false},
                        Case{300, 513, 9, true}}) {
    SCOPED_TRACE("m=" + std::to_string(s.m) + " n=" + std::to_string(s.n) +
                 " k=" + std::to_string(s.k) + " trans_b=" + std::to_string(s.trans_b));
    const int64_t lda = s.k + 3, ldb = (s.trans_b ? s.k : s.n) + 5, ldc = s.n + 2;
    const auto a = normal_values(s.m * lda, 1);
    const auto b = normal_values((s.trans_b ? s.n : s.k) * ldb, 2);
    std::vector<float> c(s.m * ldc, -7.f);
    parallel_sgemm(s.m, s.n, s.k, a.data(), lda, b.data(), ldb, c.data(), ldc, s.trans_b);
    expect_close(c, ldc, reference_gemm(s.m, s.n, s.k, a.data(), lda, b.data(), ldb, s.trans_b),
                 s.m, s.n, s.k);
    for (int64_t i = 0; i < s.m; ++i)  // the padding columns are left alone
      for (int64_t j = s.n; j < ldc; ++j) ASSERT_EQ(c[i * ldc + j], -7.f);
  }
}

TEST(ParallelSgemm, SameBitsForAnyThreadCountAndInsideAParallelRegion) {
  const int64_t m = 96, n = 1000, k = 128;
  const auto a = normal_values(m * k, 3);
  const auto b = normal_values(n * k, 4);
  auto run = [&](int threads) {
    std::vector<float> c(m * n);
    omp_set_num_threads(threads);
    parallel_sgemm(m, n, k, a.data(), k, b.data(), k, c.data(), n, true);
    return c;
  };
  const int saved = omp_get_max_threads();
  const std::vector<float> one = run(1), two = run(2), three = run(3);
  omp_set_num_threads(saved);
  EXPECT_EQ(std::memcmp(one.data(), two.data(), one.size() * 4), 0);
  EXPECT_EQ(std::memcmp(one.data(), three.data(), one.size() * 4), 0);
  // Called from inside a region every thread computes the whole product itself.
  std::vector<std::vector<float>> inside(2, std::vector<float>(m * n));
#pragma omp parallel num_threads(2)
  parallel_sgemm(m, n, k, a.data(), k, b.data(), k, inside[omp_get_thread_num()].data(), n, true);
  for (const auto& c : inside) EXPECT_EQ(std::memcmp(one.data(), c.data(), one.size() * 4), 0);
}

uint16_t to_bf16(float x) {  // round to nearest, ties away (values here are never near inf)
  uint32_t b;
  std::memcpy(&b, &x, 4);
  return static_cast<uint16_t>((b + 0x8000u) >> 16);
}
float from_bf16(uint16_t h) {
  const uint32_t b = uint32_t{h} << 16;
  float x;
  std::memcpy(&x, &b, 4);
  return x;
}

// Every worker of a 2-thread region runs the whole tile: a kernel built for more threads than
// it runs on would leave part of C unwritten (NaN here).
TEST(RowGemm, Fp32AndBf16TilesAreCompleteOnEveryThread) {
  const int64_t m = 37, n = 300, k = 100;
  const auto a = normal_values(m * k, 5);
  const auto b = normal_values(n * k, 6);
  std::vector<uint16_t> a16(a.size()), b16(b.size());
  std::vector<float> a_rounded(a.size()), b_rounded(b.size());
  for (size_t i = 0; i < a.size(); ++i) a_rounded[i] = from_bf16(a16[i] = to_bf16(a[i]));
  for (size_t i = 0; i < b.size(); ++i) b_rounded[i] = from_bf16(b16[i] = to_bf16(b[i]));
  const auto want32 = reference_gemm(m, n, k, a.data(), k, b.data(), k, true);
  const auto want16 = reference_gemm(m, n, k, a_rounded.data(), k, b_rounded.data(), k, true);
  for (DType input : {DType::kFloat32, DType::kBFloat16}) {
    const bool bf16 = input == DType::kBFloat16;
    SCOPED_TRACE(bf16 ? "bf16" : "fp32");
    omp_set_num_threads(2);  // the primitive must not inherit a thread count from here
    const RowGemm gemm(m, n, k, input);
    EXPECT_FALSE(gemm.implementation().empty());
    std::vector<std::vector<float>> c(2, std::vector<float>(m * n, std::nanf("")));
#pragma omp parallel num_threads(2)
    {
      RowGemm::Worker worker(gemm);
      worker.run(bf16 ? static_cast<const void*>(a16.data()) : a.data(),
                 bf16 ? static_cast<const void*>(b16.data()) : b.data(),
                 c[omp_get_thread_num()].data());
    }
    for (const auto& ci : c) expect_close(ci, n, bf16 ? want16 : want32, m, n, k);
    RowGemm::Worker serial(gemm);  // outside a region: the same tile on this thread
    std::vector<float> c0(m * n, std::nanf(""));
    serial.run(bf16 ? static_cast<const void*>(a16.data()) : a.data(),
               bf16 ? static_cast<const void*>(b16.data()) : b.data(), c0.data());
    expect_close(c0, n, bf16 ? want16 : want32, m, n, k);
  }
}

TEST(Blas, DescriptionNamesOneDnnAndTheCblas) {
  const std::string d = blas_description();
  EXPECT_NE(d.find("oneDNN 2."), std::string::npos) << d;
  EXPECT_NE(d.find("double: "), std::string::npos) << d;
  EXPECT_EQ(blas_num_threads(), 1) << "the CBLAS is kept on one thread";
}

}  // namespace
}  // namespace facenet
