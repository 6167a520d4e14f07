// CUDA backend: each hand-written kernel against its CPU reference on seeded random inputs
// (both layouts, and the 16-bit types where they apply), then the whole model against the
// golden embeddings for every precision, and dlib's ResNet against the CPU backend on aligned
// face chips. Every test skips without a GPU.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <optional>
#include <random>

#include "engine/backend/backend.h"
#include "engine/backend/cuda/cuda_backend.h"
#include "engine/backend/lowering.h"
#include "engine/backend/reference/cpu_reference.h"
#include "engine/core/cuda_util.h"
#include "engine/face/cnn_detector_cuda.h"
#include "engine/pipeline/pipeline.h"
#include "kernels/inception_ops.h"
#include "tests/dlib_fixture.h"
#include "tests/golden_fixture.h"
#include "tests/mmod_cases.h"

namespace facenet {
namespace {

HostTensor random_tensor(Shape shape, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  HostTensor t(std::move(shape));
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uni(lo, hi);
  for (auto& v : t.data) v = uni(rng);
  return t;
}

// A host NCHW tensor on the device in `layout` (float32), with its view.
struct DeviceTensor {
  DeviceBuffer<float> buf;
  TensorView4 view;
};

DeviceTensor to_device(const HostTensor& t, Layout layout) {
  const int64_t n = t.shape[0], c = t.shape[1], h = t.shape[2], w = t.shape[3];
  DeviceTensor d{DeviceBuffer<float>(t.size()), {}};
  d.view = packed_view(d.buf.data(), DType::kFloat32, layout, n, c, h, w, c, 0);
  std::vector<float> host(t.size());
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < c; ++j)
      for (int64_t y = 0; y < h; ++y)
        for (int64_t x = 0; x < w; ++x)
          host[i * d.view.sn + j * d.view.sc + y * d.view.sh + x * d.view.sw] =
              t.data[((i * c + j) * h + y) * w + x];
  d.buf.upload(host.data(), host.size());
  return d;
}

DeviceTensor empty_device(Shape shape, Layout layout) {
  return to_device(HostTensor(std::move(shape)), layout);
}

// Back to host NCHW, whatever the view's layout.
HostTensor to_host(const DeviceTensor& d) {
  const TensorView4& v = d.view;
  std::vector<float> host(d.buf.size());
  d.buf.download(host.data(), host.size());
  FN_GPU_CHECK(cudaDeviceSynchronize());
  HostTensor t({v.n, v.c, v.h, v.w});
  for (int64_t i = 0; i < v.n; ++i)
    for (int64_t j = 0; j < v.c; ++j)
      for (int64_t y = 0; y < v.h; ++y)
        for (int64_t x = 0; x < v.w; ++x)
          t.data[((i * v.c + j) * v.h + y) * v.w + x] =
              host[i * v.sn + j * v.sc + y * v.sh + x * v.sw];
  return t;
}

// Max |a - b| / (1 + |b|); outputs must be finite and not all zero.
double normalised_error(const HostTensor& got, const HostTensor& want) {
  EXPECT_EQ(got.shape, want.shape);
  double err = 0, mass = 0;
  for (int64_t i = 0; i < want.size(); ++i) {
    EXPECT_TRUE(std::isfinite(got.data[i])) << "element " << i;
    err = std::max(err, std::fabs(got.data[i] - want.data[i]) / (1.0 + std::fabs(want.data[i])));
    mass += std::fabs(got.data[i]);
  }
  EXPECT_GT(mass, 0.0) << "all-zero output";
  return err;
}

const char* layout_name(Layout l) {
  return l == Layout::kNchw ? "nchw" : "nhwc";
}

class KernelTest : public ::testing::TestWithParam<Layout> {};

TEST_P(KernelTest, PoolingMatchesReference) {
  FN_REQUIRE_GPU();
  struct Case {
    PoolKind kind;
    int k, s, p;
  };
  const Case cases[] = {{PoolKind::kMax, 3, 2, 1},
                        {PoolKind::kMax, 3, 2, 0},
                        {PoolKind::kL2, 3, 3, 0},
                        {PoolKind::kAvg, 3, 1, 0},
                        {PoolKind::kAvg, 3, 3, 0}};
  uint32_t seed = 11;
  for (const Case& c : cases) {
    const HostTensor x = random_tensor({3, 5, 12, 11}, ++seed, 0.0f, 1.0f);
    const HostTensor want = c.kind == PoolKind::kMax   ? maxpool_direct(x, c.k, c.s, c.p)
                            : c.kind == PoolKind::kAvg ? avgpool_direct(x, c.k, c.s, c.p)
                                                       : l2pool_direct(x, c.k, c.s, c.p);
    DeviceTensor dx = to_device(x, GetParam()), dy = empty_device(want.shape, GetParam());
    launch_pool2d(dx.view, dy.view, c.kind, c.k, c.s, c.p, nullptr);
    EXPECT_LE(normalised_error(to_host(dy), want), 1e-6)
        << "seed " << seed << " kind " << static_cast<int>(c.kind) << " k/s/p " << c.k << "/" << c.s
        << "/" << c.p << " " << layout_name(GetParam());
  }
}

TEST_P(KernelTest, LrnMatchesReference) {
  FN_REQUIRE_GPU();
  const uint32_t seed = 21;
  // Large values so the normaliser is far from 1 and the test sees the math.
  const HostTensor x = random_tensor({2, 13, 7, 6}, seed, 0.0f, 40.0f);
  const HostTensor want = lrn_direct(x, 5, 1e-2, 0.75, 1.0);
  DeviceTensor dx = to_device(x, GetParam()), dy = empty_device(x.shape, GetParam());
  launch_lrn(dx.view, dy.view, 5, 1e-2f, 0.75f, 1.0f, nullptr);
  EXPECT_LE(normalised_error(to_host(dy), want), 1e-5) << "seed " << seed;
}

TEST_P(KernelTest, CentredCopyIntoSliceMatchesReference) {
  FN_REQUIRE_GPU();
  const uint32_t seed = 31;
  const int64_t n = 2, c = 3, h = 5, w = 4, C = 8, H = 12, W = 12, c0 = 4;
  const HostTensor x = random_tensor({n, c, h, w}, seed);
  // Reference: each plane centred (floor((H-h)/2) rows before) into an NCHW [n][C][H][W]
  // buffer at channel c0, zeros around it.
  HostTensor want({n, C, H, W});
  const int64_t top = (H - h) / 2, left = (W - w) / 2;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t ch = 0; ch < c; ++ch)
      for (int64_t y = 0; y < h; ++y)
        for (int64_t xx = 0; xx < w; ++xx)
          want.data[((i * C + c0 + ch) * H + y + top) * W + xx + left] =
              x.data[((i * c + ch) * h + y) * w + xx];
  DeviceTensor dx = to_device(x, GetParam());
  DeviceTensor dy = to_device(random_tensor({n, C, H, W}, seed + 1), GetParam());
  // The slice view covers channels [c0, c0 + c); the rest of y must be left untouched.
  const HostTensor before = to_host(dy);
  TensorView4 slice = packed_view(dy.buf.data(), DType::kFloat32, GetParam(), n, c, H, W, C, c0);
  launch_copy_centred(dx.view, slice, nullptr);
  const HostTensor got = to_host(dy);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < C; ++j)
      for (int64_t p = 0; p < H * W; ++p) {
        const int64_t at = (i * C + j) * H * W + p;
        const bool in_slice = j >= c0 && j < c0 + c;
        ASSERT_EQ(got.data[at], in_slice ? want.data[at] : before.data[at])
            << "image " << i << " channel " << j << " pixel " << p << " seed " << seed;
      }
}

// Equal to image_io's rule to the bit: OpenFace's x / 255 and dlib's (x - mean_c) / 256.
TEST_P(KernelTest, Bgr8ToInputIsExact) {
  FN_REQUIRE_GPU();
  const int64_t n = 3, h = 9, w = 7;
  std::mt19937 rng(41);
  std::vector<uint8_t> bgr(n * h * w * 3);
  for (auto& v : bgr) v = static_cast<uint8_t>(rng() & 0xff);
  DeviceBuffer<uint8_t> dbgr(bgr.size());
  dbgr.upload(bgr.data(), bgr.size());
  struct Rule {
    float mean[3];
    float scale;
    bool rgb;
  };
  const Rule rules[] = {{{0.f, 0.f, 0.f}, 1.0f / 255.0f, true},
                        {{122.782f, 117.001f, 104.298f}, 1.0f / 256.0f, true},
                        {{10.5f, 20.25f, 30.0f}, 0.5f, false}};
  for (const Rule& r : rules) {
    DeviceTensor dy = empty_device({n, 3, h, w}, GetParam());
    launch_bgr8_to_input(dbgr.data(), dy.view, r.mean, r.scale, r.rgb, nullptr);
    const HostTensor got = to_host(dy);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t c = 0; c < 3; ++c)
        for (int64_t p = 0; p < h * w; ++p) {
          const float v = bgr[(i * h * w + p) * 3 + (r.rgb ? 2 - c : c)];
          ASSERT_EQ(got.data[(i * 3 + c) * h * w + p], (v - r.mean[c]) * r.scale)
              << "image " << i << " channel " << c << " pixel " << p << " mean " << r.mean[c]
              << " scale " << r.scale;
        }
  }
}

TEST_P(KernelTest, PooledDenseHeadMatchesReference) {
  FN_REQUIRE_GPU();
  const uint32_t seed = 51;
  const int out = 128;
  // 19 images: two full blocks of 8 and a ragged one.
  const HostTensor x = random_tensor({19, 736, 3, 3}, seed, 0.0f, 2.0f);
  const HostTensor w = random_tensor({out, 736}, seed + 1, -0.05f, 0.05f);
  const HostTensor b = random_tensor({out}, seed + 2);
  const HostTensor want = l2norm_direct(dense_direct(avgpool_direct(x, 3, 1, 0), w, b), 1e-10);
  std::vector<float> wt(w.size());
  for (int o = 0; o < out; ++o)
    for (int c = 0; c < 736; ++c) wt[c * out + o] = w.data[o * 736 + c];
  DeviceTensor dx = to_device(x, GetParam());
  DeviceBuffer<float> dwt(wt.size()), db(out), dy(19 * out);
  dwt.upload(wt.data(), wt.size());
  db.upload(b.data.data(), out);
  launch_pooled_dense_head(dx.view, dwt.data(), db.data(), out, true, 1e-10f, dy.data(), nullptr);
  HostTensor got({19, out, 1, 1});
  dy.download(got.data.data(), got.data.size());
  FN_GPU_CHECK(cudaDeviceSynchronize());
  EXPECT_LE(normalised_error(got, want), 1e-5) << "seed " << seed;
}

INSTANTIATE_TEST_SUITE_P(Layouts, KernelTest, ::testing::Values(Layout::kNchw, Layout::kNhwc),
                         [](const auto& info) { return std::string(layout_name(info.param)); });

TEST(KernelValidation, MismatchedShapesAreReported) {
  FN_REQUIRE_GPU();
  DeviceTensor x = empty_device({1, 2, 8, 8}, Layout::kNchw);
  DeviceTensor y = empty_device({1, 2, 5, 5}, Layout::kNchw);
  DeviceBuffer<float> gamma(2), beta(2);
  EXPECT_THROW(launch_pool2d(x.view, y.view, PoolKind::kMax, 3, 2, 1, nullptr), Error);
  EXPECT_THROW(launch_lrn(x.view, y.view, 5, 1e-4f, 0.75f, 1.0f, nullptr), Error);
  EXPECT_THROW(launch_copy_centred(x.view, y.view, nullptr), Error);
  EXPECT_THROW(launch_affine(x.view, gamma.data(), beta.data(), false, y.view, nullptr), Error);
  // add: y must be exactly the larger extent of a and b (8x8 here, not 5x5).
  EXPECT_THROW(launch_add_padded(x.view, y.view, false, y.view, nullptr), Error);
}

// ---- ResNet ops in every storage type ----------------------------------------------------------

struct TypedConfig {
  DType dtype;
  Layout layout;
};

std::string typed_name(const TypedConfig& c) {
  return std::string(dtype_name(c.dtype)) + "_" + layout_name(c.layout);
}

void PrintTo(const TypedConfig& c, std::ostream* os) {
  *os << typed_name(c);
}

// A host NCHW tensor on the device in `dtype` and `layout` (converted there by copy_centred).
struct TypedTensor {
  DeviceBuffer<unsigned char> buf;
  TensorView4 view;
};

TypedTensor to_device(const HostTensor& t, const TypedConfig& cfg) {
  const int64_t n = t.shape[0], c = t.shape[1], h = t.shape[2], w = t.shape[3];
  TypedTensor d{DeviceBuffer<unsigned char>(t.size() * dtype_size(cfg.dtype)), {}};
  d.view = packed_view(d.buf.data(), cfg.dtype, cfg.layout, n, c, h, w, c, 0);
  const DeviceTensor f = to_device(t, cfg.layout);
  launch_copy_centred(f.view, d.view, nullptr);
  FN_GPU_CHECK(cudaDeviceSynchronize());
  return d;
}

HostTensor to_host(const TypedTensor& d) {
  const TensorView4& v = d.view;
  DeviceTensor f = empty_device({v.n, v.c, v.h, v.w}, v.sc == 1 ? Layout::kNhwc : Layout::kNchw);
  launch_copy_centred(v, f.view, nullptr);
  return to_host(f);
}

// Output rounding of one fp32 result to the storage type, relative (the reference runs on the
// device-rounded inputs, so this is all that may differ).
double rounding_tolerance(DType t) {
  return t == DType::kFloat32 ? 1e-6 : t == DType::kFloat16 ? 1e-3 : 8e-3;
}

class TypedKernelTest : public ::testing::TestWithParam<TypedConfig> {};

TEST_P(TypedKernelTest, AddPaddedMatchesReference) {
  FN_REQUIRE_GPU();
  const TypedConfig cfg = GetParam();
  struct Case {
    Shape a, b;
    const char* what;
  };
  // dlib's cases: same shape (res), 32 -> 64 channels zero-extended (first res_down), the 3x3
  // strided-conv branch into the 4x4 pooled skip (res_down at 8x8 input); then both
  // asymmetries at once, each input larger on some axis.
  const Case cases[] = {{{2, 16, 9, 9}, {2, 16, 9, 9}, "same shape"},
                        {{2, 64, 9, 9}, {2, 32, 9, 9}, "channel padding"},
                        {{3, 24, 3, 3}, {3, 24, 4, 4}, "strided branch into pooled skip"},
                        {{2, 40, 3, 5}, {2, 24, 4, 4}, "mixed"}};
  uint32_t seed = 71;
  for (const Case& c : cases)
    for (bool relu : {false, true}) {
      const TypedTensor a = to_device(random_tensor(c.a, ++seed), cfg);
      const TypedTensor b = to_device(random_tensor(c.b, ++seed), cfg);
      HostTensor want = add_direct(to_host(a), to_host(b));
      if (relu) want = relu_direct(want);
      // y starts as garbage (not zeros): every element must be written.
      const TypedTensor y = to_device(random_tensor(want.shape, ++seed, 5.0f, 6.0f), cfg);
      launch_add_padded(a.view, b.view, relu, y.view, nullptr);
      EXPECT_LE(normalised_error(to_host(y), want), rounding_tolerance(cfg.dtype))
          << c.what << ", relu " << relu << ", seed " << seed << " " << typed_name(cfg);
    }
}

TEST_P(TypedKernelTest, AffineMatchesReference) {
  FN_REQUIRE_GPU();
  const TypedConfig cfg = GetParam();
  const uint32_t seed = 81;
  const TypedTensor x = to_device(random_tensor({3, 37, 6, 5}, seed), cfg);
  const HostTensor gamma = random_tensor({37}, seed + 1, -2.0f, 2.0f);
  const HostTensor beta = random_tensor({37}, seed + 2);
  DeviceBuffer<float> dgamma(37), dbeta(37);
  dgamma.upload(gamma.data.data(), 37);
  dbeta.upload(beta.data.data(), 37);
  for (bool relu : {false, true}) {
    HostTensor want = affine_direct(to_host(x), gamma, beta);
    if (relu) want = relu_direct(want);
    const TypedTensor y = to_device(HostTensor(want.shape), cfg);
    launch_affine(x.view, dgamma.data(), dbeta.data(), relu, y.view, nullptr);
    EXPECT_LE(normalised_error(to_host(y), want), rounding_tolerance(cfg.dtype))
        << "relu " << relu << ", seed " << seed << " " << typed_name(cfg);
  }
}

INSTANTIATE_TEST_SUITE_P(Types, TypedKernelTest,
                         ::testing::Values(TypedConfig{DType::kFloat32, Layout::kNchw},
                                           TypedConfig{DType::kFloat32, Layout::kNhwc},
                                           TypedConfig{DType::kFloat16, Layout::kNhwc},
                                           TypedConfig{DType::kBFloat16, Layout::kNhwc},
                                           TypedConfig{DType::kFloat16, Layout::kNchw}),
                         [](const auto& info) { return typed_name(info.param); });

// ---- whole model -----------------------------------------------------------------------------

struct GpuConfig {
  std::string variant, precision, layout;
  bool graphs;
};

std::string config_name(const GpuConfig& c) {
  return c.variant + "_" + c.precision + "_" + c.layout + (c.graphs ? "_graph" : "_eager");
}

void PrintTo(const GpuConfig& c, std::ostream* os) {
  *os << config_name(c);
}

// Nearest other image (plain L2) for each of n embeddings of dimension 128.
std::vector<int> nearest_neighbours(const std::vector<float>& e, size_t n) {
  std::vector<int> nn(n, -1);
  for (size_t i = 0; i < n; ++i) {
    double best = INFINITY;
    for (size_t j = 0; j < n; ++j) {
      if (j == i) continue;
      double d = 0;
      for (int k = 0; k < 128; ++k) d += std::pow(e[i * 128 + k] - e[j * 128 + k], 2);
      if (d < best) best = d, nn[i] = static_cast<int>(j);
    }
  }
  return nn;
}

class GpuGolden : public ::testing::TestWithParam<GpuConfig> {};

TEST_P(GpuGolden, ReproducesEveryImage) {
  FN_REQUIRE_GPU();
  const GpuConfig& c = GetParam();
  const Model m = load_model(test::converted_model(c.variant));
  const auto imgs = test::golden(c.variant);
  ASSERT_EQ(imgs.size(), 18u);
  const std::vector<float> x = test::load_inputs(m, imgs);
  BackendOptions opt;
  opt.device = Device::kCuda;
  opt.precision = c.precision;
  opt.layout = c.layout;
  opt.cuda_graphs = c.graphs;
  auto backend = make_backend(m, opt);
  std::vector<float> y(imgs.size() * 128);
  // Three calls: eager, captured, replayed — all must agree with the golden file.
  for (int call = 0; call < 3; ++call) {
    std::fill(y.begin(), y.end(), NAN);
    backend->forward(x.data(), static_cast<int64_t>(imgs.size()), y.data());
    const double err = test::max_abs_error(y, imgs, imgs.size());
    std::printf("[ measured ] %s (%s), call %d: max abs error %.3g over 18 images\n",
                config_name(c).c_str(), backend->name().c_str(), call, err);
    EXPECT_LE(err, c.precision == "fp32" ? 1e-4 : 2e-2) << "call " << call;
  }
  std::vector<float> want;
  for (const auto& g : imgs) want.insert(want.end(), g.embedding.begin(), g.embedding.end());
  EXPECT_EQ(nearest_neighbours(y, imgs.size()), nearest_neighbours(want, imgs.size()));

  // Batch composition must not change a result (another batch size = another plan, possibly
  // another cuDNN algorithm, hence the golden tolerance rather than a tighter one; a batch-mixing
  // bug shows up as errors of order 0.1).
  std::vector<float> single(128);
  backend->forward(x.data() + 5 * element_count(m.graph.input_shape), 1, single.data());
  for (int d = 0; d < 128; ++d)
    EXPECT_NEAR(single[d], y[5 * 128 + d], c.precision == "fp32" ? 1e-4 : 1e-2) << d;
}

INSTANTIATE_TEST_SUITE_P(Configs, GpuGolden,
                         ::testing::Values(GpuConfig{"openface", "fp32", "nchw", true},
                                           GpuConfig{"coursera", "fp32", "nchw", true},
                                           GpuConfig{"openface", "fp32", "nchw", false},
                                           GpuConfig{"openface", "fp32", "nhwc", true},
                                           GpuConfig{"openface", "fp16", "nhwc", true},
                                           GpuConfig{"openface", "bf16", "nhwc", true},
                                           GpuConfig{"openface", "fp16", "nchw", true},
                                           GpuConfig{"coursera", "fp16", "nhwc", true}),
                         [](const auto& info) { return config_name(info.param); });

// Truncated after each block, the GPU graph must match the fast CPU path: localises a
// mismatch to a block (and exercises exporting a non-head output).
TEST(GpuBlocks, EveryBlockMatchesCpu) {
  FN_REQUIRE_GPU();
  const Model full = load_model(test::converted_model("openface"));
  const auto imgs = test::golden("openface");
  const std::vector<float> x = test::load_inputs(full, {imgs[0], imgs[1]});
  for (const auto& [block, stats] : imgs[0].blocks.items()) {
    const Model m = test::truncated_after(full, test::block_node(block));
    const int64_t size = element_count(m.shapes.back());
    std::vector<float> cpu(2 * size), gpu(2 * size);
    make_backend(m, {})->forward(x.data(), 2, cpu.data());
    BackendOptions opt;
    opt.device = Device::kCuda;
    make_backend(m, opt)->forward(x.data(), 2, gpu.data());
    double err = 0;
    for (int64_t i = 0; i < 2 * size; ++i)
      err = std::max(err, std::fabs(gpu[i] - cpu[i]) / (1.0 + std::fabs(cpu[i])));
    EXPECT_LE(err, 1e-4) << block;
  }
}

// Decoding to uint8 and converting on the GPU gives the same embeddings as float input.
TEST(GpuInput, Bgr8PathEqualsFloatPath) {
  FN_REQUIRE_GPU();
  const Model m = load_model(test::converted_model("openface"));
  const int64_t n = 4, hw = 96 * 96;
  std::mt19937 rng(61);
  std::vector<uint8_t> bgr(n * hw * 3);
  for (auto& v : bgr) v = static_cast<uint8_t>(rng() & 0xff);
  std::vector<float> x(n * 3 * hw);
  for (int64_t i = 0; i < n; ++i)
    for (int c = 0; c < 3; ++c)
      for (int64_t p = 0; p < hw; ++p)
        x[(i * 3 + c) * hw + p] = bgr[(i * hw + p) * 3 + (2 - c)] * (1.0f / 255.0f);
  BackendOptions opt;
  opt.device = Device::kCuda;
  auto backend = make_cuda_backend(m, opt);
  std::vector<float> a(n * 128), b(n * 128);
  backend->forward(x.data(), n, a.data());
  backend->forward_bgr8(bgr.data(), n, b.data());
  for (int64_t i = 0; i < n * 128; ++i) EXPECT_NEAR(a[i], b[i], 1e-6) << i;
}

// Two slots in flight at once, waited for in reverse order: each gets its own images'
// embeddings (the synchronous path's at the same batch size), so uploads, conversions and
// downloads do not cross.
TEST(GpuStaged, SlotsInFlightTogetherKeepTheirOwnResults) {
  FN_REQUIRE_GPU();
  const Model m = load_model(test::converted_model("openface"));
  const int64_t n = 3, bytes = 96 * 96 * 3;
  std::mt19937 rng(67);
  std::vector<uint8_t> bgr(2 * n * bytes);
  for (auto& v : bgr) v = static_cast<uint8_t>(rng() & 0xff);
  BackendOptions opt;
  opt.device = Device::kCuda;
  auto backend = make_cuda_backend(m, opt);
  std::vector<float> want(2 * n * 128);
  for (int s = 0; s < 2; ++s)  // the same batch size, so the same plan and algorithms
    backend->forward_bgr8(bgr.data() + s * n * bytes, n, want.data() + s * n * 128);
  auto staged = backend->make_staged_encoder(2, n);
  ASSERT_TRUE(staged);
  for (int round = 0; round < 3; ++round) {  // eager, capture, replay of the CUDA graph
    for (int s = 0; s < 2; ++s) {
      std::memcpy(staged->input(s), bgr.data() + s * n * bytes, n * bytes);
      staged->submit(s, n);
    }
    for (int s = 1; s >= 0; --s) {
      staged->wait(s);
      for (int64_t i = 0; i < n * 128; ++i)
        EXPECT_NEAR(staged->output(s)[i], want[s * n * 128 + i], 1e-5)
            << "round " << round << ", slot " << s << ", value " << i;
    }
  }
}

// device_output(s) is the slot's own device copy of its embeddings: work queued on the
// backend's context stream after submit(s) reads them there, even after another slot's batch
// (which overwrites the backend's output buffer) was submitted, and they are what output(s)
// receives.
TEST(GpuStaged, DeviceOutputIsEachSlotsOwnOnTheContextStream) {
  FN_REQUIRE_GPU();
  const Model m = load_model(test::converted_model("openface"));
  const int64_t n = 3, bytes = 96 * 96 * 3, dim = 128;
  std::mt19937 rng(73);
  std::vector<uint8_t> bgr(2 * n * bytes);
  for (auto& v : bgr) v = static_cast<uint8_t>(rng() & 0xff);
  BackendOptions opt;
  opt.device = Device::kCuda;
  auto backend = make_cuda_backend(m, opt);
  GpuContext* context = backend->gpu_context();
  ASSERT_NE(context, nullptr);
  EXPECT_EQ(context->stream(), backend->stream());
  auto staged = backend->make_staged_encoder(2, n);
  ASSERT_TRUE(staged);
  ASSERT_NE(staged->device_output(0), nullptr);
  ASSERT_NE(staged->device_output(1), nullptr);
  EXPECT_NE(staged->device_output(0), staged->device_output(1));
  for (int round = 0; round < 3; ++round) {  // eager, capture, replay of the CUDA graph
    for (int s = 0; s < 2; ++s) {
      std::memcpy(staged->input(s), bgr.data() + s * n * bytes, n * bytes);
      staged->submit(s, n);
    }
    std::vector<float> seen(2 * n * dim);  // queued after both batches, no wait before
    for (int s = 0; s < 2; ++s)
      FN_GPU_CHECK(cudaMemcpyAsync(seen.data() + s * n * dim, staged->device_output(s),
                                   n * dim * sizeof(float), cudaMemcpyDeviceToHost,
                                   context->stream()));
    context->synchronize();
    bool slots_differ = false;
    for (int s = 0; s < 2; ++s) {
      staged->wait(s);
      for (int64_t i = 0; i < n * dim; ++i)
        ASSERT_EQ(seen[s * n * dim + i], staged->output(s)[i])
            << "round " << round << ", slot " << s << ", value " << i;
    }
    for (int64_t i = 0; i < n * dim; ++i) slots_differ |= seen[i] != seen[n * dim + i];
    EXPECT_TRUE(slots_differ) << "round " << round;
  }
}

// Staging slots are allocated once and lent again: a later encoder that fits gets the same
// pinned buffers, one that does not (or one asked for while the first is out) gets new ones,
// and device_bytes() counts every set the backend holds.
TEST(GpuStaged, SlotsAreReusedAndCounted) {
  FN_REQUIRE_GPU();
  const Model m = load_model(test::converted_model("openface"));
  // Device bytes per image of a slot: its pixels and its embedding.
  const std::size_t image = 96 * 96 * 3 + 128 * sizeof(float);
  BackendOptions opt;
  opt.device = Device::kCuda;
  auto backend = make_cuda_backend(m, opt);
  const std::size_t base = backend->device_bytes();
  uint8_t* kept = nullptr;
  {
    auto a = backend->make_staged_encoder(2, 8);
    const uint8_t* first = a->input(0);
    EXPECT_EQ(backend->device_bytes(), base + 2 * 8 * image);
    auto b = backend->make_staged_encoder(2, 8);  // while `a` is out: its own slots
    EXPECT_NE(b->input(0), first);
    EXPECT_EQ(backend->device_bytes(), base + 4 * 8 * image);
    kept = b->input(0);  // `b` goes back first (reverse order), so its set is the one kept
  }
  EXPECT_EQ(backend->device_bytes(), base + 2 * 8 * image);
  {
    auto c = backend->make_staged_encoder(2, 5);
    EXPECT_EQ(c->capacity(), 5);
    EXPECT_EQ(c->input(0), kept);
    EXPECT_EQ(backend->device_bytes(), base + 2 * 8 * image);  // no new allocation
  }
  {
    auto d = backend->make_staged_encoder(2, 16);  // too big for the cached set
    EXPECT_EQ(d->capacity(), 16);
    EXPECT_EQ(backend->device_bytes(), base + 2 * 8 * image + 2 * 16 * image);
  }
  EXPECT_EQ(backend->device_bytes(), base + 2 * 16 * image);  // the larger set replaced it
}

// A tail batch runs on a planned batch of at most twice its size (the images past it are
// stale and ignored); a new tail size gets a power-of-two plan, a new largest size its own.
// Every call still gives the CPU backend's embeddings for its own images.
TEST(GpuPlans, TailsRunOnALargerPlanAndMatchCpu) {
  FN_REQUIRE_GPU();
  const Model m = load_model(test::converted_model("openface"));
  const int64_t per = 3 * 96 * 96, most = 20;
  std::mt19937 rng(71);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<float> x(most * per);
  for (auto& v : x) v = u(rng);
  std::vector<float> want(most * 128);
  make_backend(m, {})->forward(x.data(), most, want.data());
  BackendOptions opt;
  opt.device = Device::kCuda;
  auto gpu = make_cuda_backend(m, opt);
  const std::vector<std::pair<int64_t, std::vector<int64_t>>> calls = {
      {8, {8}}, {5, {8}}, {3, {4, 8}}, {20, {4, 8, 20}}, {7, {4, 8, 20}}, {1, {1, 4, 8, 20}}};
  for (const auto& [n, plans] : calls) {
    std::vector<float> got(n * 128);
    gpu->forward(x.data(), n, got.data());
    EXPECT_EQ(gpu->planned_batches(), plans) << "after a batch of " << n;
    EXPECT_LE(test::max_abs_diff(got.data(), want.data(), n * 128), 1e-4) << "batch " << n;
  }
}

// A gallery index built on gpu_context() reserves its scratch in the context's workspace,
// which the backend's convolutions use too. When that moves the workspace, the backend
// re-captures its CUDA graph instead of replaying one that points at the freed buffer.
TEST(GpuPlans, WorkspaceMovedThroughTheSharedContextIsFollowed) {
  FN_REQUIRE_GPU();
  const Model m = load_model(test::converted_model("openface"));
  const int64_t n = 4;
  const std::vector<float> x = random_tensor({n, 3, 96, 96}, 79, 0.0f, 1.0f).data;
  BackendOptions opt;
  opt.device = Device::kCuda;
  auto gpu = make_cuda_backend(m, opt);
  std::vector<float> want(n * 128), got(n * 128);
  // Eager, capture, replay; then the workspace grows past the backend's 128 MiB and moves.
  for (int run = 0; run < 3; ++run) gpu->forward(x.data(), n, want.data());
  gpu->gpu_context()->reserve(std::size_t(512) << 20);
  gpu->forward(x.data(), n, got.data());
  EXPECT_LE(test::max_abs_diff(got.data(), want.data(), n * 128), 1e-6);
}

// The front door on CUDA (staged 8-bit path, two slots) gives the CPU pipeline's results and
// embeddings on the happy-house photos, with unreadable files interleaved, batches that leave
// a partial last one or exceed the file count, and twice per batch size (the second run
// replays graphs). Then identification searched on the device from the slots' embeddings
// names the same identities at the same distances as the CPU index.
TEST(GpuPipeline, FrontDoorMatchesCpu) {
  FN_REQUIRE_GPU();
  const Model m = load_model(test::converted_model("openface"));
  std::vector<std::filesystem::path> files;
  for (const auto& g : test::golden("openface")) {
    files.push_back(g.path);
    if (files.size() % 7 == 3)
      files.push_back("/nonexistent/missing-" + std::to_string(files.size()) + ".jpg");
  }
  auto inputs = [&] {
    std::vector<ImageInput> in;
    for (const auto& f : files) in.push_back(ImageInput::file(f));
    return in;
  };
  RequestOptions crops;
  crops.faces.detector = DetectorKind::kNone;
  auto embeddings = [](const std::vector<ImageResult>& rs) {
    std::vector<float> out;
    for (const auto& r : rs)
      for (const auto& f : r.faces) out.insert(out.end(), f.embedding.begin(), f.embedding.end());
    return out;
  };
  for (int batch : {4, 64}) {
    PipelineOptions po;
    po.max_batch = batch;
    Pipeline cpu(m, po);
    const auto want = cpu.run(inputs(), crops);
    po.backend.device = Device::kCuda;
    Pipeline gpu(m, po);
    for (int run = 0; run < 2; ++run) {
      const auto got = gpu.run(inputs(), crops);
      ASSERT_EQ(got.size(), want.size());
      for (size_t i = 0; i < got.size(); ++i) {
        EXPECT_EQ(got[i].status, want[i].status) << got[i].name;
        EXPECT_EQ(got[i].faces.size(), want[i].faces.size()) << got[i].name;
      }
      const auto a = embeddings(got), b = embeddings(want);
      ASSERT_EQ(a.size(), 18u * 128);
      ASSERT_EQ(a.size(), b.size());
      double err = 0;
      for (size_t i = 0; i < a.size(); ++i) {
        ASSERT_TRUE(std::isfinite(a[i])) << i;
        err = std::max(err, std::fabs(double(a[i]) - b[i]));
      }
      std::printf("[ measured ] pipeline batch %d run %d: max abs error vs cpu %.3g\n", batch, run,
                  err);
      EXPECT_LE(err, 1e-4) << "batch " << batch << ", run " << run;
    }
    // A gallery of the same photos, one identity each: every probe finds itself first.
    GalleryMatrix g;
    g.spec = embedding_spec(m);
    const auto emb = embeddings(want);
    int64_t row = 0;
    for (const auto& r : want) {
      if (!r.ok()) continue;
      g.identities.push_back({row + 1, "p" + std::to_string(row), "{}", 0, 1});
      g.embedding_ids.push_back(row + 1);
      g.identity_ids.push_back(row + 1);
      ++row;
    }
    g.vectors = emb;
    cpu.set_gallery(g);
    gpu.set_gallery(g);
    RequestOptions id = crops;
    id.task = Task::kIdentify;
    id.k = 3;
    const auto on_cpu = cpu.run(inputs(), id), on_gpu = gpu.run(inputs(), id);
    ASSERT_EQ(on_cpu.size(), on_gpu.size());
    for (size_t i = 0; i < on_cpu.size(); ++i) {
      if (!on_cpu[i].ok()) continue;
      const Identification& c = *on_cpu[i].faces.at(0).match;
      const Identification& d = *on_gpu[i].faces.at(0).match;
      EXPECT_EQ(d.best, c.best) << on_cpu[i].name;
      ASSERT_EQ(d.top.size(), c.top.size());
      for (size_t t = 0; t < c.top.size(); ++t) {
        EXPECT_EQ(d.top[t].name, c.top[t].name) << on_cpu[i].name << " rank " << t;
        EXPECT_NEAR(d.top[t].distance, c.top[t].distance, 1e-3);
      }
    }
  }
}

// ---- dlib ResNet -------------------------------------------------------------------------------

struct DlibConfig {
  std::string precision, layout;
};

std::string dlib_config_name(const DlibConfig& c) {
  return c.precision + "_" + c.layout;
}
// gtest prints parameters (ctest's test names too): the name, not the struct's bytes.
void PrintTo(const DlibConfig& c, std::ostream* os) {
  *os << dlib_config_name(c);
}

// The chips, their float inputs and the fast CPU backend's descriptors: computed once for all
// configurations. Null when the model or the chips are not at hand.
struct DlibCase {
  const Model* model = nullptr;
  std::vector<uint8_t> bgr;
  std::vector<float> x, want;
  int64_t n = 0;
};

const DlibCase* dlib_case() {
  static const std::optional<DlibCase> c = []() -> std::optional<DlibCase> {
    DlibCase d;
    d.model = test::dlib_model();
    d.bgr = test::dlib_chips(8);
    if (!d.model || d.bgr.empty()) return std::nullopt;
    const Graph& g = d.model->graph;
    EXPECT_EQ(g.input_shape, (Shape{3, test::kChipSize, test::kChipSize}));
    d.n = static_cast<int64_t>(d.bgr.size() / test::kChipBytes);
    const InputSpec spec = input_spec(g);
    const int64_t per = element_count(g.input_shape);
    d.x.resize(d.n * per);
    for (int64_t i = 0; i < d.n; ++i)
      bgr8_to_input(d.bgr.data() + i * test::kChipBytes, test::kChipSize, test::kChipSize, spec,
                    d.x.data() + i * per);
    d.want.resize(d.n * 128);
    make_backend(*d.model, {})->forward(d.x.data(), d.n, d.want.data());
    return d;
  }();
  return c ? &*c : nullptr;
}

class GpuDlibResnet : public ::testing::TestWithParam<DlibConfig> {};

// The whole network (affine folded into convs, residual adds with channel and spatial
// zero-padding, 150x150 input with dlib's mean) against the fast CPU backend on real aligned
// chips, both through float input and through the uint8 path that applies the mean on the GPU.
TEST_P(GpuDlibResnet, MatchesCpuBackendOnAlignedChips) {
  FN_REQUIRE_GPU();
  const DlibCase* d = dlib_case();
  if (!d)
    GTEST_SKIP() << "no dlib ResNet or no chips: set FACENET_DLIB_MODEL and FACENET_DLIB_CHIPS, "
                    "or run weights/fetch_dlib_models.sh in a dlib build";
  const std::vector<float>& want = d->want;
  const int64_t n = d->n;
  double norm = 0;
  for (int k = 0; k < 128; ++k) norm += want[k] * want[k];
  ASSERT_GT(std::sqrt(norm), 0.1) << "CPU descriptor suspiciously small";

  const DlibConfig& c = GetParam();
  BackendOptions opt;
  opt.device = Device::kCuda;
  opt.precision = c.precision;
  opt.layout = c.layout;
  auto backend = make_cuda_backend(*d->model, opt);
  const double tol = c.precision == "fp32" ? 1e-4 : 2e-2;
  auto max_error = [&](const std::vector<float>& got) {
    double err = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_TRUE(std::isfinite(got[i])) << i;
      err = std::max(err, std::fabs(static_cast<double>(got[i]) - want[i]));
    }
    return err;
  };
  std::vector<float> y(n * 128);
  // Three float calls (eager, captured, replayed), then the uint8 path.
  for (int call = 0; call < 4; ++call) {
    std::fill(y.begin(), y.end(), NAN);
    if (call < 3)
      backend->forward(d->x.data(), n, y.data());
    else
      backend->forward_bgr8(d->bgr.data(), n, y.data());
    const double err = max_error(y);
    const std::string what = call < 3 ? "float input, call " + std::to_string(call) : "bgr8 input";
    std::printf("[ measured ] dlib ResNet %s (%s), %s: max abs error vs cpu %.3g over %lld chips\n",
                dlib_config_name(c).c_str(), backend->name().c_str(), what.c_str(), err,
                static_cast<long long>(n));
    RecordProperty(call < 3 ? "max_abs_error_call" + std::to_string(call) : "max_abs_error_bgr8",
                   std::to_string(err));
    EXPECT_LE(err, tol) << what;
  }
}

INSTANTIATE_TEST_SUITE_P(Configs, GpuDlibResnet,
                         ::testing::Values(DlibConfig{"fp32", "nchw"}, DlibConfig{"fp32", "nhwc"},
                                           DlibConfig{"fp16", "nhwc"}, DlibConfig{"bf16", "nhwc"},
                                           DlibConfig{"fp16", "nchw"}),
                         [](const auto& info) { return dlib_config_name(info.param); });

// The CNN face detector on the GPU (engine/face/cnn_detector_cuda.h): the pyramid built by the
// kernels from the 8-bit photo and the network on the CUDA backend give the CPU backend's score
// map. The model and the cases come from the dev machine (tools/device_prepare.sh:
// FACENET_MMOD_DIR), which has dlib; this machine needs none.
TEST(CudaCnnDetector, PyramidOnGpuMatchesCpu) {
  FN_REQUIRE_GPU();
  const char* dir = std::getenv("FACENET_MMOD_DIR");
  if (!dir || !std::filesystem::exists(std::filesystem::path(dir) / "cases.raw"))
    GTEST_SKIP() << "FACENET_MMOD_DIR (mmod.safetensors, cases.raw) not given";
  const auto file = std::filesystem::path(dir) / "mmod.safetensors";
  // As the detector runs it on CUDA: channels padded to multiples of 8, 3 copies of each
  // photo in one forward (a plan may cover more images than given).
  const Model base = pad_conv_channels(load_model(file), 8);
  const MmodSettings s = mmod_settings(base, file.string());
  for (const test::MmodCase& c : test::read_mmod_cases(std::filesystem::path(dir) / "cases.raw")) {
    Model m = base;
    m.graph.input_shape = {3, c.pyramid_rows, c.pyramid_cols};
    m.shapes.clear();
    validate_model(m, int64_t{1} << 32);
    BackendOptions o;
    o.device = Device::kCuda;
    const auto backend = make_backend(m, o);
    PyramidLayout layout;
    layout.rows = c.pyramid_rows, layout.cols = c.pyramid_cols, layout.levels = c.levels;
    constexpr int kCopies = 3;
    std::vector<uint8_t> rgb;
    for (int i = 0; i < kCopies; ++i) rgb.insert(rgb.end(), c.rgb.begin(), c.rgb.end());
    std::vector<float> got(kCopies * c.scores.size());
    detail::forward_pyramid_cuda(*backend, s, layout, rgb.data(), kCopies, c.rows, c.cols,
                                 got.data());
    for (int i = 0; i < kCopies; ++i)
      EXPECT_LT(
          test::max_abs_diff(got.data() + i * c.scores.size(), c.scores.data(), c.scores.size()),
          1e-3)
          << c.cols << "x" << c.rows << " copy " << i;
  }
}

}  // namespace
}  // namespace facenet
