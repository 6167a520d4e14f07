// Every op of the fast CPU path (CNHW layout, GEMM convolution) against the straightforward
// NCHW reference on seeded random inputs.
#include <cmath>
#include <random>

#include "engine/cpu_ops.h"
#include "engine/cpu_reference.h"
#include "tests/test_util.h"

namespace facenet {
namespace {

HostTensor random_tensor(Shape shape, uint32_t seed, float lo = -1.f, float hi = 1.f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  HostTensor t(std::move(shape));
  for (auto& v : t.data) v = u(rng);
  return t;
}

std::vector<float> to_cnhw(const HostTensor& t) {
  std::vector<float> y(t.size());
  nchw_to_cnhw(t.data.data(), t.shape[0], t.shape[1], t.shape[2] * t.shape[3], y.data());
  return y;
}

HostTensor from_cnhw(const std::vector<float>& x, Shape nchw) {
  HostTensor t(nchw);
  cnhw_to_nchw(x.data(), nchw[0], nchw[1], nchw[2] * nchw[3], t.data.data());
  return t;
}

// max |a-b| / max |b|: scale-free error for float math.
double normalized_error(const HostTensor& a, const HostTensor& b) {
  EXPECT_EQ(a.shape, b.shape);
  double num = 0, den = 0;
  for (int64_t i = 0; i < b.size(); ++i) {
    EXPECT_TRUE(std::isfinite(a.data[i]));
    num = std::max(num, std::fabs(static_cast<double>(a.data[i]) - b.data[i]));
    den = std::max(den, std::fabs(static_cast<double>(b.data[i])));
  }
  EXPECT_GT(den, 0.0) << "reference output is all zero: the test would prove nothing";
  return num / den;
}

struct ConvCase {
  int n, c, h, w, out, k, s, p;
};

class ConvGemm : public ::testing::TestWithParam<ConvCase> {};

TEST_P(ConvGemm, MatchesDirectConvolution) {
  const ConvCase cc = GetParam();
  const uint32_t seed = 100 + cc.k * 10 + cc.s;
  HostTensor x = random_tensor({cc.n, cc.c, cc.h, cc.w}, seed);
  HostTensor w = random_tensor({cc.out, cc.c, cc.k, cc.k}, seed + 1);
  HostTensor b = random_tensor({cc.out}, seed + 2);
  for (bool relu : {false, true}) {
    HostTensor ref = conv2d_direct(x, w, b, cc.s, cc.p);
    if (relu) ref = relu_direct(ref);
    const std::vector<float> xc = to_cnhw(x);
    std::vector<float> y(ref.size()), col;
    conv_gemm(xc.data(), {cc.c, cc.n, cc.h, cc.w}, w.data.data(), b.data.data(), cc.out, cc.k, cc.s,
              cc.p, relu, y.data(), col);
    EXPECT_LT(normalized_error(from_cnhw(y, ref.shape), ref), 1e-5)
        << "seed " << seed << " relu " << relu;
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, ConvGemm,
                         ::testing::Values(ConvCase{2, 3, 20, 18, 8, 7, 2, 3},  // stem-like 7x7/2
                                           ConvCase{3, 16, 9, 9, 12, 1, 1, 0},  // 1x1: no im2col
                                           ConvCase{2, 8, 12, 12, 6, 3, 1, 1},  // 3x3 same
                                           ConvCase{2, 8, 12, 11, 6, 3, 2, 1},  // 3x3/2
                                           ConvCase{2, 4, 6, 6, 5, 5, 2, 2},    // 5x5/2 pad 2
                                           ConvCase{1, 4, 1, 1, 3, 5, 1,
                                                    2},  // window wider than the map
                                           ConvCase{1, 5, 3, 3, 7, 3, 1, 0}),  // valid conv
                         [](const auto& info) {
                           const ConvCase& c = info.param;
                           return "n" + std::to_string(c.n) + "c" + std::to_string(c.c) + "h" +
                                  std::to_string(c.h) + "w" + std::to_string(c.w) + "o" +
                                  std::to_string(c.out) + "k" + std::to_string(c.k) + "s" +
                                  std::to_string(c.s) + "p" + std::to_string(c.p);
                         });

class Winograd : public ::testing::TestWithParam<ConvCase> {};

TEST_P(Winograd, MatchesDirectConvolution) {
  const ConvCase cc = GetParam();
  const uint32_t seed = 300 + cc.h * 7 + cc.w;
  const HostTensor x = random_tensor({cc.n, cc.c, cc.h, cc.w}, seed);
  const HostTensor w = random_tensor({cc.out, cc.c, 3, 3}, seed + 1);
  const HostTensor b = random_tensor({cc.out}, seed + 2);
  const std::vector<float> u = winograd_weights(w.data.data(), cc.out, cc.c);
  for (bool relu : {false, true}) {
    HostTensor ref = conv2d_direct(x, w, b, 1, 1);
    if (relu) ref = relu_direct(ref);
    const std::vector<float> xc = to_cnhw(x);
    std::vector<float> y(ref.size(), NAN), scratch;
    conv_winograd_3x3(xc.data(), {cc.c, cc.n, cc.h, cc.w}, u.data(), b.data.data(), cc.out, relu,
                      y.data(), scratch);
    EXPECT_LT(normalized_error(from_cnhw(y, ref.shape), ref), 1e-5)
        << "seed " << seed << " relu " << relu;
  }
}

// Even and odd map sizes (a ragged last tile row/column), one pixel, many channels.
INSTANTIATE_TEST_SUITE_P(Shapes, Winograd,
                         ::testing::Values(ConvCase{2, 8, 12, 12, 6, 3, 1, 1},
                                           ConvCase{3, 5, 7, 9, 4, 3, 1, 1},
                                           ConvCase{1, 3, 1, 1, 2, 3, 1, 1},
                                           ConvCase{2, 64, 24, 24, 16, 3, 1, 1}),
                         [](const auto& info) {
                           const ConvCase& c = info.param;
                           return "n" + std::to_string(c.n) + "c" + std::to_string(c.c) + "h" +
                                  std::to_string(c.h) + "w" + std::to_string(c.w);
                         });

struct PoolCase {
  int n, c, h, w, k, s, p;
};

class Pools : public ::testing::TestWithParam<PoolCase> {};

TEST_P(Pools, MatchReference) {
  const PoolCase pc = GetParam();
  // ReLU-like non-negative inputs for max pooling with padding (the network's situation),
  // and signed inputs for the others.
  const HostTensor pos = random_tensor({pc.n, pc.c, pc.h, pc.w}, 7, 0.f, 1.f);
  const HostTensor sgn = random_tensor({pc.n, pc.c, pc.h, pc.w}, 8);
  const int64_t planes = pc.n * pc.c;
  struct {
    PoolKind kind;
    const HostTensor& x;
    HostTensor (*ref)(const HostTensor&, int, int, int);
  } cases[] = {{PoolKind::max, pos, maxpool_direct},
               {PoolKind::max, sgn, maxpool_direct},
               {PoolKind::avg, sgn, avgpool_direct},
               {PoolKind::l2, sgn, l2pool_direct}};
  for (const auto& c : cases) {
    const HostTensor ref = c.ref(c.x, pc.k, pc.s, pc.p);
    HostTensor y(ref.shape);
    pool_planes(c.x.data.data(), planes, pc.h, pc.w, pc.k, pc.s, pc.p, c.kind, y.data.data());
    EXPECT_LT(normalized_error(y, ref), 1e-6) << "kind " << static_cast<int>(c.kind);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, Pools,
                         ::testing::Values(PoolCase{2, 3, 48, 48, 3, 2, 1},  // stem max 3/2 pad 1
                                           PoolCase{2, 5, 12, 12, 3, 2, 0},  // 3a pool -> 5x5
                                           PoolCase{1, 4, 12, 12, 3, 3, 0},  // L2 3/3 -> 4x4
                                           PoolCase{3, 2, 3, 3, 3, 1, 0},    // head avg 3/1
                                           PoolCase{1, 2, 7, 5, 2, 2, 1}),
                         [](const auto& info) {
                           const PoolCase& c = info.param;
                           return "h" + std::to_string(c.h) + "w" + std::to_string(c.w) + "k" +
                                  std::to_string(c.k) + "s" + std::to_string(c.s) + "p" +
                                  std::to_string(c.p);
                         });

TEST(Lrn, MatchesReferenceAcrossChannelEdges) {
  for (int channels : {1, 3, 7, 64}) {
    const HostTensor x = random_tensor({3, channels, 5, 6}, 11 + channels, -4.f, 4.f);
    const HostTensor ref = lrn_direct(x, 5, 1e-4 * 500, 0.75, 1.0);  // large alpha: visible effect
    const std::vector<float> xc = to_cnhw(x);
    std::vector<float> y(xc.size());
    lrn_channels(xc.data(), channels, 3 * 5 * 6, 5, 1e-4f * 500, 0.75f, 1.0f, y.data());
    EXPECT_LT(normalized_error(from_cnhw(y, x.shape), ref), 1e-6) << "channels " << channels;
  }
}

// dlib's add_prev rule: output dims are the larger of each input, missing elements are 0.
TEST(AddPadded, MatchesReferenceForEqualAndMismatchedShapes) {
  struct Case {
    Shape a, b;
  } cases[] = {{{2, 4, 5, 5}, {2, 4, 5, 5}},   // identity skip
               {{2, 8, 3, 3}, {2, 4, 4, 4}},   // dlib ResNet 128->256 stage: 3x3 conv + 4x4 pool
               {{3, 6, 4, 4}, {3, 6, 4, 4}}};  // same dims again (fast path)
  for (const auto& c : cases) {
    const HostTensor a = random_tensor(c.a, 31), b = random_tensor(c.b, 32);
    for (bool relu : {false, true}) {
      HostTensor ref = add_direct(a, b);
      if (relu) ref = relu_direct(ref);
      const std::vector<float> ac = to_cnhw(a), bc = to_cnhw(b);
      std::vector<float> y(ref.size());
      add_padded(ac.data(), {c.a[1], c.a[0], c.a[2], c.a[3]}, bc.data(),
                 {c.b[1], c.b[0], c.b[2], c.b[3]}, relu, y.data());
      EXPECT_EQ(normalized_error(from_cnhw(y, ref.shape), ref), 0.0)
          << shape_string(c.a) << " + " << shape_string(c.b) << " relu " << relu;
    }
  }
  // The zero-extension itself: a 1x1x1x1 tensor plus a 1x2x2x2 one.
  const HostTensor y = add_direct(HostTensor({1, 1, 1, 1}, {5.f}),
                                  HostTensor({1, 2, 2, 2}, {1, 2, 3, 4, 5, 6, 7, 8}));
  EXPECT_EQ(y.data, (std::vector<float>{6, 2, 3, 4, 5, 6, 7, 8}));
}

TEST(Affine, FoldedIntoConvMatchesConvThenAffine) {
  const HostTensor x = random_tensor({2, 3, 9, 9}, 41);
  const HostTensor w = random_tensor({5, 3, 3, 3}, 42), b = random_tensor({5}, 43);
  const HostTensor g = random_tensor({5}, 44), be = random_tensor({5}, 45);
  const HostTensor ref = affine_direct(conv2d_direct(x, w, b, 2, 0), g, be);
  std::vector<float> wf = w.data, bf = b.data, col;
  fold_affine(wf, bf, 27, g.data.data(), be.data.data());
  const std::vector<float> xc = to_cnhw(x);
  std::vector<float> y(ref.size());
  conv_gemm(xc.data(), {3, 2, 9, 9}, wf.data(), bf.data(), 5, 3, 2, 0, false, y.data(), col);
  EXPECT_LT(normalized_error(from_cnhw(y, ref.shape), ref), 1e-5);
  std::vector<float> ya(ref.size());
  const std::vector<float> rc = to_cnhw(conv2d_direct(x, w, b, 2, 0));
  affine_channels(rc.data(), 5, 2 * ref.shape[2] * ref.shape[3], g.data.data(), be.data.data(),
                  ya.data());
  EXPECT_LT(normalized_error(from_cnhw(ya, ref.shape), ref), 1e-6);
}

TEST(CopyCentred, MatchesReferenceConcatPadding) {
  const HostTensor big = random_tensor({2, 3, 12, 12}, 21);
  const HostTensor small = random_tensor({2, 4, 5, 5}, 22);
  const HostTensor ref = concat_direct({&big, &small});
  // Fast path: CNHW concat buffer, big copied as-is, small centred into its slice.
  std::vector<float> y(ref.size(), -7.f);
  const std::vector<float> bc = to_cnhw(big), sc = to_cnhw(small);
  std::copy(bc.begin(), bc.end(), y.begin());
  copy_centred(sc.data(), 4 * 2, 5, 5, y.data() + bc.size(), 12, 12);
  EXPECT_EQ(from_cnhw(y, ref.shape).data, ref.data);
}

TEST(Dense, MatchesReference) {
  const HostTensor x = random_tensor({5, 12, 1, 1}, 31);
  const HostTensor w = random_tensor({7, 12}, 32);
  const HostTensor b = random_tensor({7}, 33);
  const HostTensor ref = dense_direct(x, w, b);
  const std::vector<float> xc = to_cnhw(x);  // [12][5]
  std::vector<float> y(7 * 5);
  dense_gemm(xc.data(), 12, 5, w.data.data(), b.data.data(), 7, y.data());
  EXPECT_LT(normalized_error(from_cnhw(y, ref.shape), ref), 1e-6);
}

TEST(L2Norm, MatchesReferenceAndGivesUnitRows) {
  const HostTensor x = random_tensor({4, 128, 1, 1}, 41);
  const HostTensor ref = l2norm_direct(x, 1e-12);
  const std::vector<float> xc = to_cnhw(x);
  HostTensor y(x.shape);
  l2norm_columns(xc.data(), 128, 4, 1e-12, y.data.data());
  EXPECT_LT(normalized_error(y, ref), 1e-6);
  for (int i = 0; i < 4; ++i) {
    double ss = 0;
    for (int j = 0; j < 128; ++j) ss += y.data[i * 128 + j] * y.data[i * 128 + j];
    EXPECT_NEAR(ss, 1.0, 1e-5);
  }
}

TEST(FoldBatchnorm, ConvWithFoldedBnMatchesConvThenBn) {
  const HostTensor x = random_tensor({2, 4, 8, 8}, 51);
  const HostTensor w = random_tensor({6, 4, 3, 3}, 52);
  const HostTensor b = random_tensor({6}, 53);
  const HostTensor gamma = random_tensor({6}, 54, 0.5f, 2.f);
  const HostTensor beta = random_tensor({6}, 55);
  const HostTensor mean = random_tensor({6}, 56);
  const HostTensor var = random_tensor({6}, 57, 0.1f, 3.f);
  const HostTensor ref =
      batchnorm_direct(conv2d_direct(x, w, b, 1, 1), gamma, beta, mean, var, 1e-3);
  std::vector<float> wf = w.data, bf = b.data;
  fold_batchnorm(wf, bf, 4 * 9, gamma.data.data(), beta.data.data(), mean.data.data(),
                 var.data.data(), 1e-3);
  const HostTensor folded =
      conv2d_direct(x, HostTensor(w.shape, wf), HostTensor(b.shape, bf), 1, 1);
  EXPECT_LT(normalized_error(folded, ref), 1e-5);
}

}  // namespace
}  // namespace facenet
