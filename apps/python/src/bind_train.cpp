// Bindings of engine/train: the triplet loss (CPU reference in float32/float64, CUDA in float32)
// as one function that facenet_engine.triplet_loss (train.py) wraps for numpy and torch.
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>

#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "apps/python/src/bindings.h"
#include "engine/core/error.h"
#include "engine/core/gpu.h"
#include "engine/train/triplet.h"

namespace facenet::python {

namespace {

template <typename Real>
using Embeddings = nb::ndarray<const Real, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
// Labels and triplets come in any integer dtype (torch hands int64); they are narrowed to the
// engine's int32 here with a range check instead of a silent wrap-around.
using Integers = nb::ndarray<nb::ro, nb::device::cpu>;

template <typename T>
int64_t integer_at(const Integers& a, int64_t offset) {
  return static_cast<int64_t>(static_cast<const T*>(a.data())[offset]);
}

// The integers of a 1-D or 2-D array in row-major order, as int32; `what` names the argument.
std::vector<int32_t> to_int32(const Integers& a, const char* what) {
  if (a.ndim() < 1 || a.ndim() > 2) fail("triplet_loss: ", what, " must be 1-D or 2-D");
  const nb::dlpack::dtype t = a.dtype();
  if (t.code != static_cast<uint8_t>(nb::dlpack::dtype_code::Int) &&
      t.code != static_cast<uint8_t>(nb::dlpack::dtype_code::UInt))
    fail("triplet_loss: ", what, " must hold integers");
  const bool is_signed = t.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Int);
  const int64_t rows = static_cast<int64_t>(a.shape(0));
  const int64_t cols = a.ndim() == 2 ? static_cast<int64_t>(a.shape(1)) : 1;
  const int64_t row_stride = a.stride(0), col_stride = a.ndim() == 2 ? a.stride(1) : 0;
  std::vector<int32_t> out;
  out.reserve(static_cast<size_t>(rows * cols));
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      const int64_t at = i * row_stride + j * col_stride;
      int64_t v = 0;
      switch (t.bits) {
        case 8:
          v = is_signed ? integer_at<int8_t>(a, at) : integer_at<uint8_t>(a, at);
          break;
        case 16:
          v = is_signed ? integer_at<int16_t>(a, at) : integer_at<uint16_t>(a, at);
          break;
        case 32:
          v = is_signed ? integer_at<int32_t>(a, at) : integer_at<uint32_t>(a, at);
          break;
        case 64:
          // A uint64 above 2^63 reads as negative int64: it is out of range either way.
          v = integer_at<int64_t>(a, at);
          if (!is_signed && v < 0) v = std::numeric_limits<int64_t>::max();
          break;
        default:
          fail("triplet_loss: ", what, " has an unsupported integer width");
      }
      if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max())
        fail("triplet_loss: ", what, "[", i * cols + j, "] = ", v, " is outside the int32 range");
      out.push_back(static_cast<int32_t>(v));
    }
  return out;
}

std::vector<Triplet> to_triplets(const Integers& a) {
  if (a.ndim() != 2 || a.shape(1) != 3) fail("triplet_loss: triplets must be (m, 3) integers");
  const std::vector<int32_t> flat = to_int32(a, "triplets");
  std::vector<Triplet> out(flat.size() / 3);
  for (size_t t = 0; t < out.size(); ++t) out[t] = {flat[3 * t], flat[3 * t + 1], flat[3 * t + 2]};
  return out;
}

// One CUDA triplet-loss object per process: it owns a GPU context and buffers that grow to the
// largest batch, so repeated training steps allocate nothing. Callers hold `mutex`.
std::mutex gpu_mutex;
TripletLossCuda& gpu_loss() {
  static std::unique_ptr<TripletLossCuda> gpu;
  if (!gpu) gpu = std::make_unique<TripletLossCuda>(0);
  return *gpu;
}

TripletResult compute_on_gpu(const float* e, int64_t batch, int64_t dim,
                             const std::vector<int32_t>* labels,
                             const std::vector<Triplet>* triplets, Mining mining,
                             const TripletOptions& options) {
  std::lock_guard lock(gpu_mutex);
  TripletLossCuda& gpu = gpu_loss();
  return labels ? gpu.compute(e, batch, dim, *labels, mining, options)
                : gpu.compute(e, batch, dim, *triplets, options);
}

// (loss_sum, loss_mean, count, active, grad | None, triplets | None, losses | None)
using Values = std::tuple<double, double, int64_t, int64_t, nb::object, nb::object, nb::object>;

void require_one_of(const std::optional<Integers>& labels,
                    const std::optional<Integers>& triplets) {
  if (labels.has_value() == triplets.has_value())
    fail("triplet_loss: pass exactly one of labels and triplets");
}

TripletOptions triplet_options(double margin, bool want_grad, bool return_triplets,
                               bool deterministic) {
  TripletOptions options;
  options.margin = static_cast<float>(margin);
  options.want_grad = want_grad;
  options.want_triplets = return_triplets;
  options.deterministic = deterministic;
  return options;
}

// The values Python gets, grad aside (it is numpy here, or the caller's tensor on the GPU).
template <typename Real>
Values values_of(TripletResultT<Real>& r, nb::object grad, bool return_triplets) {
  nb::object picked = nb::none(), losses = nb::none();
  if (return_triplets) {
    const size_t m = r.triplets.size();
    std::vector<int32_t> flat;
    flat.reserve(3 * m);
    for (const Triplet& t : r.triplets) flat.insert(flat.end(), {t.a, t.p, t.n});
    picked = nb::cast(to_numpy(std::move(flat), {m, size_t{3}}));
    losses = nb::cast(to_numpy(std::move(r.losses), {r.losses.size()}));
  }
  return {r.loss_sum, r.loss_mean, r.count, r.active, grad, picked, losses};
}

template <typename Real>
Values triplet_loss(Embeddings<Real> embeddings, std::optional<Integers> labels,
                    std::optional<Integers> triplets, const std::string& mining, double margin,
                    bool want_grad, bool return_triplets, const std::string& device,
                    bool deterministic) {
  require_one_of(labels, triplets);
  if (device != "cpu" && device != "cuda")
    fail("triplet_loss: device '", device, "': expected cpu or cuda");
  if (device == "cuda" && !std::is_same_v<Real, float>)
    fail("triplet_loss: device='cuda' takes float32 embeddings (float64 runs on the CPU)");
  const int64_t batch = static_cast<int64_t>(embeddings.shape(0));
  const int64_t dim = static_cast<int64_t>(embeddings.shape(1));
  const TripletOptions options = triplet_options(margin, want_grad, return_triplets, deterministic);
  const Mining mode = parse_mining(mining);
  const std::vector<int32_t> label_values =
      labels ? to_int32(*labels, "labels") : std::vector<int32_t>{};
  const std::vector<Triplet> triplet_values =
      triplets ? to_triplets(*triplets) : std::vector<Triplet>{};

  TripletResultT<Real> r;
  {
    nb::gil_scoped_release unlocked;
    const Real* e = embeddings.data();
    if constexpr (std::is_same_v<Real, float>) {
      if (device == "cuda") {
        r = compute_on_gpu(e, batch, dim, labels ? &label_values : nullptr, &triplet_values, mode,
                           options);
      }
    }
    if (device == "cpu")
      r = labels ? facenet::triplet_loss(e, batch, dim, label_values, mode, options)
                 : facenet::triplet_loss(e, batch, dim, triplet_values, options);
  }
  nb::object grad = nb::none();
  if (want_grad)
    grad = nb::cast(
        to_numpy(std::move(r.grad), {static_cast<size_t>(batch), static_cast<size_t>(dim)}));
  return values_of(r, grad, return_triplets);
}

using CudaEmbeddings = nb::ndarray<const float, nb::ndim<2>, nb::c_contig, nb::device::cuda>;
using CudaGrad = nb::ndarray<float, nb::ndim<2>, nb::c_contig, nb::device::cuda>;

// CUDA tensors: the embeddings are read where they are and the gradient is written into
// `grad` (the caller's tensor, same shape), on the engine's stream ordered after and before the
// caller's `stream`; only the scalars (and the triplets, when asked) come to the host.
Values triplet_loss_cuda(CudaEmbeddings embeddings, std::optional<Integers> labels,
                         std::optional<Integers> triplets, std::optional<CudaGrad> grad,
                         const std::string& mining, double margin, bool return_triplets,
                         bool deterministic, uintptr_t stream) {
  require_one_of(labels, triplets);
  const int64_t batch = static_cast<int64_t>(embeddings.shape(0));
  const int64_t dim = static_cast<int64_t>(embeddings.shape(1));
  if (embeddings.device_id() != 0 || (grad && grad->device_id() != 0))
    fail("triplet_loss: CUDA tensors must be on cuda:0, the engine's GPU");
  if (grad && (grad->shape(0) != embeddings.shape(0) || grad->shape(1) != embeddings.shape(1)))
    fail("triplet_loss: grad must be (", batch, ", ", dim, ") like the embeddings");
  const TripletOptions options =
      triplet_options(margin, grad.has_value(), return_triplets, deterministic);
  const Mining mode = parse_mining(mining);
  const std::vector<int32_t> label_values =
      labels ? to_int32(*labels, "labels") : std::vector<int32_t>{};
  const std::vector<Triplet> triplet_values =
      triplets ? to_triplets(*triplets) : std::vector<Triplet>{};
  TripletResult r;
  {
    nb::gil_scoped_release unlocked;
#ifdef FACENET_HAS_CUDA
    std::lock_guard lock(gpu_mutex);
    TripletLossCuda& gpu = gpu_loss();
    static StreamOrder order;
    float* g = grad ? grad->data() : nullptr;
    order.run(stream, gpu.context().stream(), [&] {
      if (labels) {
        gpu.set_batch_device(embeddings.data(), batch, dim, label_values, g);
        gpu.run(mode, options);
      } else {
        gpu.set_batch_device(embeddings.data(), batch, dim, triplet_values, g);
        gpu.run(options);
      }
    });
    r = gpu.fetch();  // waits for the engine's stream only, for the scalars
#else
    (void)stream, (void)mode;
    require_gpu("triplet_loss(device='cuda')");
    fail("triplet_loss: this build has no CUDA");
#endif
  }
  return values_of(r, grad ? nb::cast(*grad) : nb::none(), return_triplets);
}

constexpr const char* kDoc =
    "FaceNet triplet loss J = sum_t max(D(a,p) - D(a,n) + margin, 0), D = squared L2, on "
    "(B, d) embeddings.\n\n"
    "Exactly one of `labels` (B,) integers, mined with `mining` = batch_all | batch_hard | "
    "semi_hard, or `triplets` (m, 3) integer rows (a, p, n). float32 runs the engine's float "
    "path (device cpu or cuda), float64 its double CPU path. Returns (loss_sum, loss_mean, "
    "count, active, grad = dJ/dE of the sum (B, d) or None, triplets (m, 3) int32 or None, "
    "per-triplet losses or None). Raises EngineError naming the bad argument. Use "
    "facenet_engine.triplet_loss.";

template <typename Real>
void def_triplet_loss(nb::module_& m) {
  m.def("_triplet_loss", &triplet_loss<Real>, nb::arg("embeddings"), nb::arg("labels") = nb::none(),
        nb::kw_only(), nb::arg("triplets") = nb::none(), nb::arg("mining") = "batch_hard",
        nb::arg("margin") = 0.2, nb::arg("grad") = true, nb::arg("return_triplets") = false,
        nb::arg("device") = "cpu", nb::arg("deterministic") = false, kDoc);
}

}  // namespace

void bind_train(nb::module_& m) {
  // float32 first: other dtypes (float16, ints) convert to float32 in nanobind's second pass,
  // while float64 matches the double overload exactly in the first.
  def_triplet_loss<float>(m);
  def_triplet_loss<double>(m);
  m.def("_triplet_loss_cuda", &triplet_loss_cuda, nb::arg("embeddings"),
        nb::arg("labels") = nb::none(), nb::kw_only(), nb::arg("triplets") = nb::none(),
        nb::arg("grad").noconvert() = nb::none(), nb::arg("mining") = "batch_hard",
        nb::arg("margin") = 0.2, nb::arg("return_triplets") = false,
        nb::arg("deterministic") = false, nb::arg("stream") = 0,
        "The triplet loss of CUDA float32 (B, d) embeddings, read in place; the gradient of the "
        "sum is written into `grad` (B, d) on the device when given. Ordered after and before "
        "the caller's CUDA `stream` (an integer handle) without a host synchronisation, but "
        "for the scalars. Use facenet_engine.triplet_loss.");
}

}  // namespace facenet::python
