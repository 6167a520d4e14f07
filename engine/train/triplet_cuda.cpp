// Triplet loss on a CUDA GPU, the host side of TripletLossCuda: device buffers grown to the
// largest batch, the kernel sequence per mode, the result download; without CUDA, a
// TripletLossCuda whose construction throws.
#include "engine/train/triplet.h"

#include <algorithm>
#include <tuple>
#include <vector>

#include "engine/core/error.h"
#include "engine/core/gpu.h"

#ifdef FACENET_HAS_CUDA
#include "engine/core/cuda_util.h"
#include "engine/train/triplet_common.h"
#include "kernels/triplet.h"
#endif

namespace facenet {

static_assert(sizeof(Triplet) == 3 * sizeof(int32_t), "Triplet is copied as int32 triples");

#ifdef FACENET_HAS_CUDA

using namespace triplet_detail;  // the private helpers of triplet_common.h

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

  // A device batch (set_batch_device): the caller's embeddings, read in place, and the
  // caller's gradient buffer; null for a host batch (our own `e` and `grad`).
  const float* device_e = nullptr;
  float* device_grad = nullptr;

  const float* emb() const { return device_e ? device_e : e.data(); }
  // The gradient's destination, batch x dim (grown for a host batch).
  float* grad_out() {
    if (device_grad) return device_grad;
    ensure(grad, batch * dim);
    return grad.data();
  }

  void upload_embeddings(const float* host, int64_t b, int64_t d) {
    validate_embeddings(host, b, d);
    batch = b;
    dim = d;
    upload(e, host, b * d, ctx.stream());
    device_e = nullptr;
    device_grad = nullptr;
    ran = false;
  }

  void use_device_embeddings(const float* device, int64_t b, int64_t d, float* grad_to) {
    validate_embedding_shape(device, b, d);
    batch = b;
    dim = d;
    device_e = device;
    device_grad = grad_to;
    ran = false;
  }

  // The batch's labels (mined modes) or triplets (explicit), after its embeddings.
  void set_labels(const std::vector<int32_t>& l) {
    stats = label_stats(l);
    upload(labels, l.data(), batch, ctx.stream());
    upload(pair_offset, stats.pair_offset.data(), batch + 1, ctx.stream());
    ensure(norms, batch);
    input = Input::kLabels;
  }

  void set_triplets(const std::vector<Triplet>& t) {
    given = t;
    const int64_t count = static_cast<int64_t>(t.size());
    upload(triplets, reinterpret_cast<const int32_t*>(t.data()), 3 * count, ctx.stream());
    input = Input::kTriplets;
  }

  void require_grad_buffer(const TripletOptions& o) const {
    if (device_e && o.want_grad && !device_grad)
      fail("TripletLossCuda::run: want_grad with a device batch needs set_batch_device's grad");
  }

  void sparse_grad(const TripletOptions& o) {
    if (!o.want_grad) return;
    float* g = grad_out();
    launch_triplet_grad_sparse(emb(), batch, dim, triplets.data(), losses.data(), slots,
                               o.deterministic, g, ctx.stream());
  }

  void run_batch_hard(const TripletOptions& o) {
    const cudaStream_t s = ctx.stream();
    ensure(partials, batch * triplet_tile_count(batch));
    launch_triplet_batch_hard_tiles(emb(), norms.data(), labels.data(), batch, dim, partials.data(),
                                    s);
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
    launch_triplet_sq_l2(emb(), norms.data(), batch, dim, dist.data(), ctx.stream());
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
      FN_GPU_CHECK(cudaMemsetAsync(colsum.data(), 0, batch * sizeof(int32_t), s));
    }
    launch_triplet_batch_all(dist.data(), labels.data(), batch, stats.max_positives, o.margin,
                             anchor_loss.data(), anchor_active.data(),
                             o.want_grad ? coef.data() : nullptr, colsum.data(), nullptr, nullptr,
                             nullptr, s);
    launch_triplet_sum(anchor_loss.data(), anchor_active.data(), batch, sum.data(), active.data(),
                       s);
    if (o.want_grad)
      launch_triplet_grad_dense(ctx.cublas(), emb(), batch, dim, coef.data(), colsum.data(),
                                work.data(), grad_out(), s);
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
  validate_labels(labels, batch);
  impl_->upload_embeddings(embeddings, batch, dim);
  impl_->set_labels(labels);
}

void TripletLossCuda::set_batch(const float* embeddings, int64_t batch, int64_t dim,
                                const std::vector<Triplet>& triplets) {
  validate_triplets(triplets, batch);
  impl_->upload_embeddings(embeddings, batch, dim);
  impl_->set_triplets(triplets);
}

void TripletLossCuda::set_batch_device(const float* embeddings, int64_t batch, int64_t dim,
                                       const std::vector<int32_t>& labels, float* grad) {
  validate_labels(labels, batch);
  impl_->use_device_embeddings(embeddings, batch, dim, grad);
  impl_->set_labels(labels);
}

void TripletLossCuda::set_batch_device(const float* embeddings, int64_t batch, int64_t dim,
                                       const std::vector<Triplet>& triplets, float* grad) {
  validate_triplets(triplets, batch);
  impl_->use_device_embeddings(embeddings, batch, dim, grad);
  impl_->set_triplets(triplets);
}

void TripletLossCuda::run(Mining mining, const TripletOptions& o) {
  Impl& m = *impl_;
  if (m.input != Impl::Input::kLabels)
    fail("TripletLossCuda::run(", to_string(mining), "): call set_batch with labels first");
  validate_options(o);
  m.require_grad_buffer(o);
  ensure(m.sum, 1);
  ensure(m.active, 1);
  launch_triplet_row_norms(m.emb(), m.batch, m.dim, m.norms.data(), m.ctx.stream());
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
  m.require_grad_buffer(o);
  ensure(m.sum, 1);
  ensure(m.active, 1);
  m.slots = static_cast<int64_t>(m.given.size());
  ensure(m.losses, m.slots);
  launch_triplet_given(m.emb(), m.dim, m.triplets.data(), m.slots, o.margin, m.losses.data(),
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
  if (m.options.want_grad && !m.device_e) r.grad = download(m.grad, m.batch * m.dim, s);
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
void TripletLossCuda::set_batch_device(const float*, int64_t, int64_t, const std::vector<int32_t>&,
                                       float*) {
  no_cuda();
}
void TripletLossCuda::set_batch_device(const float*, int64_t, int64_t, const std::vector<Triplet>&,
                                       float*) {
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
