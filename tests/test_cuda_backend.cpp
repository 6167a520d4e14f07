// CUDA backend: each hand-written kernel against its CPU reference on seeded random inputs
// (both layouts, and the 16-bit types where they apply), then the whole model against the
// golden embeddings for every precision. Every test skips without a GPU.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>

#include "engine/backend.h"
#include "engine/cpu_ops.h"
#include "engine/cpu_reference.h"
#include "engine/cuda_backend.h"
#include "engine/cuda_util.h"
#include "engine/encode.h"
#include "kernels/inception_ops.h"
#include "tests/golden_fixture.h"

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
  d.view = packed_view(d.buf.data(), DType::f32, layout, n, c, h, w, c, 0);
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
  return l == Layout::nchw ? "nchw" : "nhwc";
}

class KernelTest : public ::testing::TestWithParam<Layout> {};

TEST_P(KernelTest, PoolingMatchesReference) {
  FN_REQUIRE_GPU();
  struct Case {
    PoolKind kind;
    int k, s, p;
  };
  const Case cases[] = {{PoolKind::max, 3, 2, 1},
                        {PoolKind::max, 3, 2, 0},
                        {PoolKind::l2, 3, 3, 0},
                        {PoolKind::avg, 3, 1, 0},
                        {PoolKind::avg, 3, 3, 0}};
  uint32_t seed = 11;
  for (const Case& c : cases) {
    const HostTensor x = random_tensor({3, 5, 12, 11}, ++seed, 0.0f, 1.0f);
    const HostTensor want = c.kind == PoolKind::max   ? maxpool_direct(x, c.k, c.s, c.p)
                            : c.kind == PoolKind::avg ? avgpool_direct(x, c.k, c.s, c.p)
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
  // Reference: copy_centred per plane into an NCHW [n][C][H][W] buffer at channel c0.
  HostTensor want({n, C, H, W});
  for (int64_t i = 0; i < n; ++i)
    copy_centred(x.data.data() + i * c * h * w, c, h, w, want.data.data() + (i * C + c0) * H * W, H,
                 W);
  DeviceTensor dx = to_device(x, GetParam());
  DeviceTensor dy = to_device(random_tensor({n, C, H, W}, seed + 1), GetParam());
  // The slice view covers channels [c0, c0 + c); the rest of y must be left untouched.
  const HostTensor before = to_host(dy);
  TensorView4 slice = packed_view(dy.buf.data(), DType::f32, GetParam(), n, c, H, W, C, c0);
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

TEST_P(KernelTest, Bgr8ToInputIsExact) {
  FN_REQUIRE_GPU();
  const int64_t n = 3, h = 9, w = 7;
  std::mt19937 rng(41);
  std::vector<uint8_t> bgr(n * h * w * 3);
  for (auto& v : bgr) v = static_cast<uint8_t>(rng() & 0xff);
  DeviceBuffer<uint8_t> dbgr(bgr.size());
  dbgr.upload(bgr.data(), bgr.size());
  DeviceTensor dy = empty_device({n, 3, h, w}, GetParam());
  const float scale = 1.0f / 255.0f;
  launch_bgr8_to_input(dbgr.data(), dy.view, scale, true, nullptr);
  const HostTensor got = to_host(dy);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < 3; ++c)
      for (int64_t p = 0; p < h * w; ++p)
        ASSERT_EQ(got.data[(i * 3 + c) * h * w + p], bgr[(i * h * w + p) * 3 + (2 - c)] * scale)
            << "image " << i << " channel " << c << " pixel " << p;
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

INSTANTIATE_TEST_SUITE_P(Layouts, KernelTest, ::testing::Values(Layout::nchw, Layout::nhwc),
                         [](const auto& info) { return std::string(layout_name(info.param)); });

TEST(KernelValidation, MismatchedShapesAreReported) {
  FN_REQUIRE_GPU();
  DeviceTensor x = empty_device({1, 2, 8, 8}, Layout::nchw);
  DeviceTensor y = empty_device({1, 2, 5, 5}, Layout::nchw);
  EXPECT_THROW(launch_pool2d(x.view, y.view, PoolKind::max, 3, 2, 1, nullptr), Error);
  EXPECT_THROW(launch_lrn(x.view, y.view, 5, 1e-4f, 0.75f, 1.0f, nullptr), Error);
  EXPECT_THROW(launch_copy_centred(x.view, y.view, nullptr), Error);
}

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
  opt.device = Device::cuda;
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
    opt.device = Device::cuda;
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
  opt.device = Device::cuda;
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
  opt.device = Device::cuda;
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

// encode_files through the CUDA pipeline gives the CPU path's callbacks and embeddings on the
// happy-house photos, with unreadable files interleaved, batches that leave a partial last
// one or exceed the file count, and twice per batch size (the second run replays graphs).
TEST(GpuPipeline, EncodeFilesMatchesCpu) {
  FN_REQUIRE_GPU();
  const Model m = load_model(test::converted_model("openface"));
  std::vector<std::filesystem::path> files;
  for (const auto& g : test::golden("openface")) {
    files.push_back(g.path);
    if (files.size() % 7 == 3)
      files.push_back("/nonexistent/missing-" + std::to_string(files.size()) + ".jpg");
  }
  struct Run {
    std::vector<std::string> events;
    std::vector<float> embeddings;
    EncodeStats stats;
  };
  auto encode = [&](Backend& backend, int batch) {
    Run r;
    EncodeCallbacks cb;
    cb.on_batch = [&](const std::vector<std::filesystem::path>& paths,
                      const std::vector<float>& emb) {
      for (const auto& p : paths) r.events.push_back(p.string());
      r.embeddings.insert(r.embeddings.end(), emb.begin(), emb.end());
    };
    cb.on_error = [&](const std::filesystem::path& p, const std::string&) {
      r.events.push_back("error " + p.string());
    };
    cb.on_progress = [&](size_t done, size_t) { r.events.push_back(std::to_string(done)); };
    r.stats = encode_files(backend, input_spec(m.graph), 128, files, batch, cb);
    return r;
  };
  auto cpu = make_backend(m, {});
  BackendOptions opt;
  opt.device = Device::cuda;
  auto gpu = make_backend(m, opt);
  for (int batch : {4, 64}) {
    const Run want = encode(*cpu, batch);
    ASSERT_EQ(want.stats.encoded, 18u);
    for (int run = 0; run < 2; ++run) {
      const Run got = encode(*gpu, batch);
      EXPECT_EQ(got.stats.encoded, want.stats.encoded);
      EXPECT_EQ(got.stats.failed, want.stats.failed);
      EXPECT_EQ(got.events, want.events);
      ASSERT_EQ(got.embeddings.size(), want.embeddings.size());
      double err = 0;
      for (size_t i = 0; i < got.embeddings.size(); ++i) {
        ASSERT_TRUE(std::isfinite(got.embeddings[i])) << i;
        err = std::max(err, std::fabs(double(got.embeddings[i]) - want.embeddings[i]));
      }
      std::printf("[ measured ] pipeline batch %d run %d: max abs error vs cpu %.3g\n", batch, run,
                  err);
      EXPECT_LE(err, 1e-4) << "batch " << batch << ", run " << run;
    }
  }
}

}  // namespace
}  // namespace facenet
