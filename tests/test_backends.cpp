// The one lowering and every backend that runs it: folds, fusions and storage planning, then
// every shipped graph (both nn4.small2 variants, dlib's ResNet) and a graph that holds every
// op and fusion through every available backend, compared with the reference backend.
#include <climits>
#include <cmath>
#include <random>
#include <set>

#include "engine/backend/backend.h"
#include "engine/backend/cpu/cpu_backend.h"
#include "engine/backend/lowering.h"
#include "engine/backend/reference/cpu_reference.h"
#include "engine/core/blas.h"
#include "tests/dlib_fixture.h"
#include "tests/golden_fixture.h"
#include "tests/model_fixture.h"
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

// max |a-b| / max |b|: scale-free error for float math.
double normalized_error(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    EXPECT_TRUE(std::isfinite(a[i])) << "value " << i;
    EXPECT_TRUE(std::isfinite(b[i])) << "reference value " << i;
    num = std::max(num, std::fabs(static_cast<double>(a[i]) - b[i]));
    den = std::max(den, std::fabs(static_cast<double>(b[i])));
  }
  EXPECT_GT(den, 0.0) << "reference output is all zero: the test would prove nothing";
  return num / den;
}

// Builds a model node by node with seeded random parameters.
class GraphBuilder {
 public:
  explicit GraphBuilder(Shape input) {
    m_.graph.name = "test-ops";
    m_.graph.input = "x";
    m_.graph.input_shape = input;
  }
  std::string add(Node n) {
    const std::string name = n.name;
    m_.graph.nodes.push_back(std::move(n));
    return name;
  }
  std::string conv(const std::string& name, const std::string& in, int in_c, int out, int k, int s,
                   int p) {
    param(name + "_w", {out, in_c, k, k}, 0.5f / std::sqrt(in_c * k * k));
    param(name + "_b", {out}, 0.1f);
    return add(make_conv(name, in, out, k, s, p));
  }
  std::string dense(const std::string& name, const std::string& in, int in_f, int out) {
    param(name + "_w", {out, in_f}, 1.0f / std::sqrt(in_f));
    param(name + "_b", {out}, 0.1f);
    return add(make_dense(name, in, out));
  }
  std::string batchnorm(const std::string& name, const std::string& in, int c) {
    Node n = make_node(OpType::kBatchNorm, name, {in});
    n.gamma = name + "_g", n.beta = name + "_be", n.mean = name + "_m", n.var = name + "_v";
    n.eps = 1e-3;
    param(n.gamma, {c}, 0.5f, 1.0f);  // [0.5, 1.5)
    param(n.beta, {c}, 0.2f);
    param(n.mean, {c}, 0.2f);
    param(n.var, {c}, 0.4f, 1.0f);  // [0.6, 1.4): a variance
    return add(n);
  }
  std::string op(OpType t, const std::string& name, std::vector<std::string> in, int k = 1,
                 int s = 1, int p = 0) {
    return add(make_node(t, name, std::move(in), k, s, p));
  }
  Model finish(const std::string& output) {
    m_.graph.output = output;
    validate_model(m_);
    return std::move(m_);
  }

 private:
  // Uniform in [centre - spread, centre + spread).
  void param(const std::string& name, Shape shape, float spread, float centre = 0.0f) {
    m_.tensors[name] = random_tensor(std::move(shape), seed_++, centre - spread, centre + spread);
  }
  Model m_;
  uint32_t seed_ = 100;
};

// Every op and every fusion of the lowering: conv+BN+ReLU, max/L2/avg pools (odd map, floor
// mode, padding), LRN, a BatchNorm and a ReLU that cannot fold (-> affine), a concat with a
// smaller centred branch, a residual add the backends may fuse, dlib's zero-extending add,
// and global pool + dense + l2norm.
Model all_ops_model() {
  GraphBuilder b({3, 17, 17});
  b.conv("c1", "x", 3, 16, 3, 1, 1);
  b.batchnorm("bn1", "c1", 16);
  b.op(OpType::kRelu, "r1", {"bn1"});
  b.op(OpType::kMaxPool, "pmax", {"r1"}, 3, 2, 1);  // 16 x 9 x 9
  b.op(OpType::kL2Pool, "pl2", {"r1"}, 3, 2, 1);
  b.op(OpType::kAvgPool, "pavg", {"r1"}, 3, 2, 1);
  Node lrn = make_node(OpType::kLrn, "lrn", {"pmax"});
  lrn.size = 5, lrn.alpha = 1e-2;
  b.add(lrn);
  b.conv("c2", "lrn", 16, 8, 1, 1, 0);               // 8 x 9 x 9
  b.batchnorm("bns", "pavg", 16);                    // after a pool: an affine
  b.op(OpType::kRelu, "rs", {"bns"});                // fused into that affine
  b.conv("c3", "pl2", 16, 8, 3, 2, 0);               // 8 x 4 x 4: centred in the concat
  b.op(OpType::kConcat, "cat", {"c2", "rs", "c3"});  // 32 x 9 x 9
  b.conv("c4a", "cat", 32, 32, 1, 1, 0);
  b.conv("c4", "c4a", 32, 32, 3, 1, 1);
  b.op(OpType::kAdd, "add1", {"c4", "cat"});  // same shapes: a residual the cpu fuses
  b.op(OpType::kRelu, "ra", {"add1"});
  b.conv("c5", "ra", 32, 40, 3, 2, 0);               // 40 x 4 x 4
  b.op(OpType::kAvgPool, "skip", {"ra"}, 2, 2, 0);   // 32 x 4 x 4
  b.op(OpType::kAdd, "add2", {"c5", "skip"});        // channels zero-extended
  b.op(OpType::kMaxPool, "pm2", {"add2"}, 2, 2, 0);  // 40 x 2 x 2
  b.op(OpType::kRelu, "r3", {"pm2"});                // standalone: identity affine + ReLU
  b.op(OpType::kAvgPool, "gp", {"r3"}, 2, 1, 0);     // global
  b.dense("fc", "gp", 40, 16);
  Node l2 = make_node(OpType::kL2Norm, "l2", {"fc"});
  l2.eps = 1e-10;
  b.add(l2);
  return b.finish("l2");
}

std::vector<float> forward(const Model& m, const BackendOptions& o, const std::vector<float>& x,
                           int64_t n) {
  auto backend = make_backend(m, o);
  std::vector<float> y(n * m.embedding_dim());
  backend->forward(x.data(), n, y.data());
  return y;
}

std::vector<float> reference(const Model& m, const std::vector<float>& x, int64_t n) {
  BackendOptions o;
  o.device = Device::kCpuReference;
  return forward(m, o, x, n);
}

struct BackendCase {
  std::string name;
  Device device;
  std::string precision;
  double tolerance;  // normalised error vs the reference
};

// Every backend this build and machine can run, with its tolerance.
std::vector<BackendCase> available_backends() {
  std::vector<BackendCase> cases = {{"cpu fp32", Device::kCpu, "fp32", 1e-5}};
  if (cpu_has_bf16()) cases.push_back({"cpu bf16", Device::kCpu, "bf16", 3e-2});
  if (gpu_available()) {
    cases.push_back({"cuda fp32", Device::kCuda, "fp32", 1e-4});
    cases.push_back({"cuda fp16", Device::kCuda, "fp16", 3e-2});
  }
  return cases;
}

void expect_all_backends_match_reference(const Model& m, int64_t n, uint32_t seed,
                                         int micro_batch) {
  const std::vector<float> x =
      random_tensor({n, m.graph.input_shape[0], m.graph.input_shape[1], m.graph.input_shape[2]},
                    seed, 0.0f, 1.0f)
          .data;
  const std::vector<float> want = reference(m, x, n);
  for (const BackendCase& c : available_backends()) {
    BackendOptions o;
    o.device = c.device;
    o.precision = c.precision;
    o.threads = 2;
    o.micro_batch = micro_batch;
    const double err = normalized_error(forward(m, o, x, n), want);
    std::printf("[ measured ] %s, %s: normalised error %.3g vs the reference (%lld images)\n",
                m.graph.name.c_str(), c.name.c_str(), err, static_cast<long long>(n));
    EXPECT_LE(err, c.tolerance) << c.name << ", seed " << seed;
  }
}

TEST(Backends, EveryOpAndFusionMatchesTheReference) {
  // 5 images in micro-batches of 2: full passes and a ragged tail.
  expect_all_backends_match_reference(all_ops_model(), 5, 7, 2);
}

// Convolutions to one output channel (the CPU backend's own kernel when its input has no
// padding channels): on the graph input (any channel count, the scalar path below 16) and on a
// 48-channel map (the blocked path), maps narrower than the kernel, a fused ReLU.
TEST(Backends, SingleOutputConvMatchesTheReference) {
  struct Case {
    int64_t c, kernel, pad, width;
  };
  uint32_t seed = 11;
  for (const Case& k : {Case{3, 9, 4, 31}, Case{45, 9, 4, 6}, Case{16, 3, 1, 2}, Case{5, 1, 0, 7},
                        Case{48, 5, 2, 9}}) {
    GraphBuilder b({k.c, 13, k.width});
    b.conv("s", "x", k.c, 1, static_cast<int>(k.kernel), 1, static_cast<int>(k.pad));
    expect_all_backends_match_reference(b.finish("s"), 3, seed++, 2);
  }
  GraphBuilder b({3, 21, 19});
  b.conv("c48", "x", 3, 48, 3, 1, 1);
  b.op(OpType::kRelu, "r", {"c48"});
  b.conv("s", "r", 48, 1, 9, 1, 4);  // 48 = its slot's channels: the blocked kernel
  b.op(OpType::kRelu, "rs", {"s"});
  expect_all_backends_match_reference(b.finish("rs"), 3, seed, 2);
}

TEST(Backends, Nn4Small2BothVariantsMatchTheReference) {
  for (const char* variant : {"openface", "coursera"})
    expect_all_backends_match_reference(load_model(test::converted_model(variant)), 3, 11, 0);
}

TEST(Backends, DlibResnetMatchesTheReference) {
#if FACENET_HAS_DLIB
  if (!std::filesystem::exists(test::resnet_dat()))
    GTEST_SKIP() << test::resnet_dat() << " not fetched (weights/fetch_dlib_models.sh)";
  expect_all_backends_match_reference(convert_dlib_resnet(test::resnet_dat()), 2, 13, 0);
#else
  GTEST_SKIP() << "this build has no dlib (the ResNet converter)";
#endif
}

// The happy-house scenario (12 people enrolled, 6 camera probes, threshold 0.7): bf16 must give
// every probe the same answer and the same top-3 order as fp32.
TEST(Backends, Bf16KeepsEveryHappyHouseAnswer) {
  if (available_backends().size() < 2 || available_backends()[1].precision != "bf16")
    GTEST_SKIP() << "no bf16 on this CPU (oneDNN ISA " << onednn_isa_name() << ")";
  for (const char* variant : {"openface", "coursera"}) {
    const Model m = load_model(test::converted_model(variant));
    const auto imgs = test::golden(variant);
    const std::vector<float> x = test::load_inputs(m, imgs);
    const int64_t n = static_cast<int64_t>(imgs.size()), d = m.embedding_dim();
    BackendOptions o;
    const std::vector<float> f32 = forward(m, o, x, n);
    o.precision = "bf16";
    const std::vector<float> bf16 = forward(m, o, x, n);
    const double err = test::max_abs_diff(bf16.data(), f32.data(), f32.size());
    std::printf("[ measured ] %s, cpu bf16 vs fp32: max abs embedding difference %.3g\n", variant,
                err);
    EXPECT_LT(err, 5e-2);
    std::vector<int64_t> probes, people;
    for (int64_t i = 0; i < n; ++i)
      (imgs[i].path.find("camera_") != std::string::npos ? probes : people).push_back(i);
    ASSERT_EQ(probes.size(), 6u);
    ASSERT_EQ(people.size(), 12u);
    auto ranking = [&](const std::vector<float>& e, int64_t probe) {
      std::vector<std::pair<double, int64_t>> r;
      for (int64_t p : people) {
        double ss = 0;
        for (int64_t k = 0; k < d; ++k) {
          const double diff = e[probe * d + k] - e[p * d + k];
          ss += diff * diff;
        }
        r.push_back({std::sqrt(ss), p});
      }
      std::sort(r.begin(), r.end());
      return r;
    };
    for (int64_t probe : probes) {
      const auto a = ranking(f32, probe), b = ranking(bf16, probe);
      for (int i = 0; i < 3; ++i) EXPECT_EQ(a[i].second, b[i].second) << imgs[probe].path;
      EXPECT_EQ(a[0].first <= 0.7, b[0].first <= 0.7) << imgs[probe].path;
    }
  }
}

// ---- the lowering itself -----------------------------------------------------------------------

const Step* step_computing(const LoweredGraph& g, const std::string& node) {
  for (const Step& s : g.steps)
    for (const auto& n : s.nodes)
      if (n == node) return &s;
  return nullptr;
}

TEST(Lowering, FoldsAndFusesWhatEachBackendAsksFor) {
  const Model m = all_ops_model();
  Fusions f;
  f.residual_add = true;
  f.global_pool_dense = true;
  const LoweredGraph g = lower(m, f);
  for (const Step& s : g.steps) EXPECT_NE(s.output, "bn1") << "BN must fold into c1";
  const Step* c1 = step_computing(g, "bn1");
  ASSERT_TRUE(c1);
  EXPECT_EQ(c1->op, StepOp::kConv);
  EXPECT_TRUE(c1->relu);
  EXPECT_EQ(c1->output, "r1");
  const Step* bns = step_computing(g, "bns");
  ASSERT_TRUE(bns);
  EXPECT_EQ(bns->op, StepOp::kAffine);
  EXPECT_TRUE(bns->relu);
  const Step* c4 = step_computing(g, "add1");
  ASSERT_TRUE(c4);
  EXPECT_EQ(c4->op, StepOp::kConv);
  EXPECT_EQ(c4->residual, "cat");
  EXPECT_EQ(c4->output, "ra");
  EXPECT_EQ(g.placement.at("ra").slot, g.placement.at("cat").slot) << "residual: in place";
  const Step* add2 = step_computing(g, "add2");
  ASSERT_TRUE(add2);
  EXPECT_EQ(add2->op, StepOp::kAdd) << "mismatched shapes must not fuse";
  const Step* r3 = step_computing(g, "r3");
  ASSERT_TRUE(r3);
  EXPECT_EQ(r3->op, StepOp::kAffine);
  const Step* head = step_computing(g, "fc");
  ASSERT_TRUE(head);
  EXPECT_TRUE(head->global_pool);
  EXPECT_TRUE(head->l2norm);
  EXPECT_EQ(head->inputs, std::vector<std::string>{"r3"});
  EXPECT_FALSE(g.output_in_arena);

  const LoweredGraph plain = lower(m, Fusions{});
  EXPECT_EQ(step_computing(plain, "add1")->op, StepOp::kAdd);
  EXPECT_FALSE(step_computing(plain, "fc")->global_pool);
}

// No two values that are live at the same step may overlap in the arena. The only planned
// sharing: a concat and the inputs placed in its channel slices, and a fused residual and the
// output computed in place over it. Lifetimes are rebuilt here from the graph's nodes (every
// node input is a read), not from the lowering's own bookkeeping.
void expect_no_live_overlap(const Model& m, const LoweredGraph& g) {
  std::map<std::string, int> step_of;  // node -> the step computing it
  for (size_t i = 0; i < g.steps.size(); ++i)
    for (const auto& n : g.steps[i].nodes) step_of[n] = static_cast<int>(i);
  std::map<std::string, std::pair<int, int>> live;  // value -> [written, last read]
  for (const Step& s : g.steps) {
    const int t = step_of.at(s.output);
    live[s.output] = {t, std::max(live[s.output].second, t)};
  }
  for (const Node& n : m.graph.nodes)
    for (const auto& v : n.inputs) {
      // A value folded into a step (a conv's output before its BN) is not a stored value.
      if (!g.placement.count(v)) continue;
      live[v].second = std::max(live[v].second, step_of.at(n.name));
    }
  if (g.output_in_arena) live[g.output].second = INT_MAX;
  std::set<std::pair<std::string, std::string>> planned;
  for (const Step& s : g.steps) {
    if (s.op == StepOp::kConcat)
      for (const auto& in : s.inputs) planned.insert({in, s.output});
    if (!s.residual.empty()) planned.insert({s.residual, s.output});
  }
  std::vector<std::string> values;
  for (const auto& [v, span] : live)
    if (g.placement.count(v) && g.placement.at(v).slot >= 0) values.push_back(v);
  for (size_t a = 0; a < values.size(); ++a)
    for (size_t b = a + 1; b < values.size(); ++b) {
      const std::string &va = values[a], &vb = values[b];
      const auto &la = live[va], &lb = live[vb];
      if (la.first > lb.second || lb.first > la.second) continue;  // never live together
      if (planned.count({va, vb}) || planned.count({vb, va})) continue;
      const Placement &pa = g.placement.at(va), &pb = g.placement.at(vb);
      const Slot &sa = g.slots[pa.slot], &sb = g.slots[pb.slot];
      // Per image: [offset + c0 * h * w, offset + (c0 + c) * h * w) of the slot's planes.
      const int64_t a0 = sa.offset + pa.c0 * sa.h * sa.w;
      const int64_t a1 = sa.offset + (pa.c0 + g.shape(va)[0]) * sa.h * sa.w;
      const int64_t b0 = sb.offset + pb.c0 * sb.h * sb.w;
      const int64_t b1 = sb.offset + (pb.c0 + g.shape(vb)[0]) * sb.h * sb.w;
      EXPECT_TRUE(a1 <= b0 || b1 <= a0) << va << " and " << vb << " overlap while both are live";
    }
}

Fusions all_fusions() {
  Fusions all;
  all.residual_add = all.global_pool_dense = all.concat_slices = true;
  return all;
}

// A concat that is itself a fused residual, with an input read again later (a) or by the
// conv computed in place over the concat (b): its inputs must not live in its slot.
Model concat_residual_model(bool conv_reads_branch) {
  GraphBuilder b({4, 6, 6});
  b.conv("c0", "x", 4, 8, 3, 1, 1);
  b.conv("c1", "x", 4, 8, 3, 1, 1);
  b.op(OpType::kConcat, "cat", {"c0", "c1"});
  b.conv("cs", conv_reads_branch ? "c0" : "x", conv_reads_branch ? 8 : 4, 16, 3, 1, 1);
  b.op(OpType::kAdd, "sum", {"cs", "cat"});
  b.conv("co", "c0", 8, 16, 1, 1, 0);
  b.op(OpType::kAdd, "out", {"co", "sum"});
  return b.finish("out");
}

TEST(Lowering, LiveValuesNeverShareMemory) {
  for (const Fusions& f : {Fusions{}, all_fusions()}) {
    for (const Model& m : {all_ops_model(), load_model(test::converted_model("openface")),
                           concat_residual_model(false), concat_residual_model(true)})
      expect_no_live_overlap(m, lower(m, f));
#if FACENET_HAS_DLIB
    if (std::filesystem::exists(test::resnet_dat())) {
      const Model dlib = convert_dlib_resnet(test::resnet_dat());
      expect_no_live_overlap(dlib, lower(dlib, f));
    }
#endif
  }
}

TEST(Backends, ConcatThatIsAResidualMatchesTheReference) {
  for (bool reads_branch : {false, true})
    expect_all_backends_match_reference(concat_residual_model(reads_branch), 3, 17, 0);
}

// Passes of 4+ images take the Winograd path (3x3 stride-1 fp32 convs on maps of 8x8 and up,
// c1 and c4 here, c4 with the residual sum fused): 9 images in passes of 8 and a tail of 1.
TEST(Backends, WinogradPassesMatchTheReference) {
  expect_all_backends_match_reference(all_ops_model(), 9, 23, 8);
}

// A dense layer over a whole map (flattened in CHW order whatever the layout) and an l2norm of
// a map (CHW output order): the paths a 1x1 head never takes.
TEST(Backends, DenseAndL2NormOverMapsMatchTheReference) {
  GraphBuilder d({3, 7, 7});
  d.conv("c", "x", 3, 6, 3, 2, 1);  // 6 x 4 x 4
  d.dense("fc", "c", 6 * 4 * 4, 10);
  expect_all_backends_match_reference(d.finish("fc"), 3, 29, 0);
  GraphBuilder l({3, 7, 7});
  l.conv("c", "x", 3, 6, 3, 2, 1);
  Node l2 = make_node(OpType::kL2Norm, "l2", {"c"});
  l2.eps = 1e-10;
  l.add(l2);
  expect_all_backends_match_reference(l.finish("l2"), 3, 31, 0);
}

TEST(Lowering, ConcatSlicesPlaceFullSizeBranchesInTheirChannels) {
  Fusions f;
  f.concat_slices = true;
  const LoweredGraph g = lower(all_ops_model(), f);
  const int cat = g.placement.at("cat").slot;
  EXPECT_EQ(g.placement.at("c2").slot, cat);
  EXPECT_EQ(g.placement.at("c2").c0, 0);
  EXPECT_EQ(g.placement.at("rs").slot, cat);
  EXPECT_EQ(g.placement.at("rs").c0, 8);
  EXPECT_NE(g.placement.at("c3").slot, cat) << "a smaller map is copied, centred";
}

TEST(Lowering, FoldedBatchnormEqualsConvThenBatchnorm) {
  const HostTensor x = random_tensor({2, 4, 8, 8}, 51);
  const HostTensor w = random_tensor({6, 4, 3, 3}, 52), b = random_tensor({6}, 53);
  const HostTensor gamma = random_tensor({6}, 54, 0.5f, 2.f), beta = random_tensor({6}, 55);
  const HostTensor mean = random_tensor({6}, 56), var = random_tensor({6}, 57, 0.1f, 3.f);
  const HostTensor want =
      batchnorm_direct(conv2d_direct(x, w, b, 1, 1), gamma, beta, mean, var, 1e-3);
  std::vector<float> wf = w.data, bf = b.data;
  fold_batchnorm(wf, bf, 4 * 9, gamma.data.data(), beta.data.data(), mean.data.data(),
                 var.data.data(), 1e-3);
  const HostTensor got = conv2d_direct(x, HostTensor(w.shape, wf), HostTensor(b.shape, bf), 1, 1);
  EXPECT_LT(normalized_error(got.data, want.data), 1e-5);
}

TEST(Lowering, FoldedAffineEqualsConvThenAffine) {
  const HostTensor x = random_tensor({2, 3, 9, 9}, 41);
  const HostTensor w = random_tensor({5, 3, 3, 3}, 42), b = random_tensor({5}, 43);
  const HostTensor g = random_tensor({5}, 44), be = random_tensor({5}, 45);
  const HostTensor want = affine_direct(conv2d_direct(x, w, b, 2, 0), g, be);
  std::vector<float> wf = w.data, bf = b.data;
  fold_affine(wf, bf, 27, g.data.data(), be.data.data());
  const HostTensor got = conv2d_direct(x, HostTensor(w.shape, wf), HostTensor(b.shape, bf), 2, 0);
  EXPECT_LT(normalized_error(got.data, want.data), 1e-5);
}

TEST(Lowering, KeepsTheAddWhenTheConvReadsItsOwnResidual) {
  // In place would overwrite the conv's input while it is read.
  GraphBuilder b({4, 6, 6});
  b.conv("c0", "x", 4, 8, 3, 1, 1);
  b.conv("c1", "c0", 8, 8, 3, 1, 1);
  b.op(OpType::kAdd, "sum", {"c1", "c0"});
  const Model m = b.finish("sum");
  Fusions f;
  f.residual_add = true;
  EXPECT_EQ(step_computing(lower(m, f), "sum")->op, StepOp::kAdd);
  const std::vector<float> x = random_tensor({3, 4, 6, 6}, 5, 0.f, 1.f).data;
  EXPECT_LT(normalized_error(forward(m, {}, x, 3), reference(m, x, 3)), 1e-5);
}

TEST(CpuBackend, RefusesWhatItCannotRunByName) {
  const Model m = all_ops_model();
  BackendOptions o;
  o.precision = "fp16";
  test::expect_error([&] { make_backend(m, o); }, {"fp16", "cpu"});
  GraphBuilder b({4, 5, 5});
  Node lrn = make_node(OpType::kLrn, "even_lrn", {"x"});
  lrn.size = 4;
  b.add(lrn);
  const Model even = b.finish("even_lrn");
  test::expect_error([&] { make_backend(even, {}); }, {"even_lrn", "cpu"});
}

TEST(CpuBackend, TruncatedGraphOutputsTheValueInNchw) {
  // The output is a conv's map (in the arena, NHWC inside): it must come out NCHW.
  GraphBuilder b({3, 7, 6});
  b.conv("c", "x", 3, 5, 3, 1, 1);
  const Model m = b.finish("c");
  const std::vector<float> x = random_tensor({2, 3, 7, 6}, 3, 0.f, 1.f).data;
  EXPECT_LT(normalized_error(forward(m, {}, x, 2), reference(m, x, 2)), 1e-5);
}

}  // namespace
}  // namespace facenet
