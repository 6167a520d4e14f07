// Bindings of engine/search: the exact k-NN indexes (CpuFlatIndex, GpuFlatIndex) behind one
// class, FlatIndexBase, that facenet_engine.FlatIndex (search.py) extends with torch and pickling.
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <utility>
#include <vector>

#include "apps/python/src/bindings.h"
#include "engine/core/error.h"
#include "engine/core/gpu.h"
#include "engine/search/knn.h"

namespace facenet::python {

namespace {

// Ids are int64 exactly: the ids arguments are bound .noconvert(), so nanobind never casts a
// float or uint64 array to a temporary (which would truncate 1.7 to 1 and wrap ids >= 2^63);
// facenet_engine.FlatIndex checks and converts other integer dtypes first.
using HostIds = nb::ndarray<const int64_t, nb::c_contig, nb::device::cpu>;
using CudaMatrix = nb::ndarray<const float, nb::c_contig, nb::device::cuda>;
template <typename T>
using CudaOutput = nb::ndarray<T, nb::c_contig, nb::device::cuda>;

// k arrives as int64 so that a huge Python int is reported as a bad k, not a type mismatch.
int check_k(int64_t k) {
  if (k < 1 || k > std::numeric_limits<int>::max())
    fail("FlatIndex.search: k = ", k, " must be in [1, ", std::numeric_limits<int>::max(), "]");
  return static_cast<int>(k);
}

}  // namespace

// One index on either device, plus a host copy of the rows in slot order: the engine has no
// row accessor (and the GPU copy may be fp16), and pickling must hand a worker an equal index,
// same rows in the same slots so that ties break the same way. SlotMap replays the engine's
// swap-with-last removals on the copy.
//
// Concurrency: CPU searches are const and run in parallel (shared lock); add/remove take the
// lock exclusively. The GPU index shares one stream and workspace, so every call is exclusive.
class FlatIndexBase {
 public:
  FlatIndexBase(int dim, const std::string& storage, const std::string& device, int threads)
      : dim_(dim), storage_(storage), device_(device) {
    if (device == "cpu") {
      check_threads(threads);
      cpu_ = std::make_unique<CpuFlatIndex>(dim, parse_cpu_storage(storage));
      cpu_->set_threads(threads);  // not shared yet: no lock
      threads_ = threads;
      return;
    }
    if (device != "cuda") fail("FlatIndex: device '", device, "': expected cpu or cuda");
    require_gpu("FlatIndex(device='cuda')");
#ifdef FACENET_HAS_CUDA
    if (storage != "fp32" && storage != "fp16")
      fail("FlatIndex: storage '", storage, "' with device='cuda': expected fp32 or fp16");
    context_ = std::make_unique<GpuContext>(0);
    gpu_ = std::make_unique<GpuFlatIndex>(*context_, dim, parse_gpu_storage(storage));
    order_ = std::make_unique<StreamOrder>();
#endif
  }

  int dim() const {
    return dim_;
  }
  const std::string& storage() const {
    return storage_;
  }
  const std::string& device() const {
    return device_;
  }
  int threads() const {
    return threads_.load();
  }
  // Exclusive: CPU searches read the engine's thread count under the shared lock. Call it with
  // the GIL released, as every locking call here.
  void set_threads(int threads) {
    check_threads(threads);
    std::unique_lock lock(mutex_);
    threads_ = threads;
    if (cpu_) cpu_->set_threads(threads);
  }
  int64_t size() const {
    std::shared_lock lock(mutex_);
    return mirror_.size();
  }
  uintptr_t last_input() const {
    return last_input_.load();
  }

  void add(const float* vectors, int64_t n, const int64_t* ids) {
    std::unique_lock lock(mutex_);
    last_input_ = reinterpret_cast<uintptr_t>(vectors);
    blame("FlatIndex.add", [&] {
      if (cpu_) cpu_->add(vectors, n, dim_, ids);
#ifdef FACENET_HAS_CUDA
      if (gpu_) gpu_->add(vectors, n, dim_, ids);
#endif
    });
    // The engine accepted the ids, so the copy's SlotMap cannot fail on them.
    mirror_.append(ids, n, "FlatIndex.add");
    rows_.insert(rows_.end(), vectors, vectors + n * dim_);
  }

  int64_t remove(const int64_t* ids, int64_t n) {
    std::unique_lock lock(mutex_);
    int64_t removed = 0;
    if (cpu_) removed = cpu_->remove(ids, n);
#ifdef FACENET_HAS_CUDA
    if (gpu_) removed = gpu_->remove(ids, n);
#endif
    const SlotMap::Moves moves = mirror_.remove(ids, n);
    FN_ASSERT(moves.removed == removed);
    for (size_t i = 0; i < moves.dst.size(); ++i)
      std::copy_n(&rows_[moves.src[i] * dim_], dim_, &rows_[moves.dst[i] * dim_]);
    rows_.resize(static_cast<size_t>(mirror_.size() * dim_));
    return removed;
  }

  void search(const float* queries, int64_t nq, int k, float* distances, int64_t* labels) {
    last_input_ = reinterpret_cast<uintptr_t>(queries);
    if (cpu_) {
      std::shared_lock lock(mutex_);
      blame("FlatIndex.search: queries",
            [&] { cpu_->search(queries, nq, dim_, k, distances, labels); });
      return;
    }
#ifdef FACENET_HAS_CUDA
    std::unique_lock lock(mutex_);
    blame("FlatIndex.search: queries",
          [&] { gpu_->search(queries, nq, dim_, k, distances, labels); });
#endif
  }

  // Device queries and outputs, ordered after `caller_stream` and before whatever the caller
  // enqueues on it next, without a host synchronisation: the engine's stream waits on an event
  // recorded on the caller's stream, and the caller's stream waits on one recorded after the
  // search. Queries are not checked for NaN/inf here (that would need a device pass and a sync).
  void search_cuda(const float* queries, int64_t nq, int k, float* distances, int64_t* labels,
                   uintptr_t caller_stream) {
#ifdef FACENET_HAS_CUDA
    if (!gpu_) fail("FlatIndex.search: CUDA queries need an index with device='cuda'");
    std::unique_lock lock(mutex_);
    last_input_ = reinterpret_cast<uintptr_t>(queries);
    FN_GPU_CHECK(cudaSetDevice(context_->device()));
    order_->run(caller_stream, context_->stream(), [&] {
      blame("FlatIndex.search: queries",
            [&] { gpu_->search_device(queries, nq, k, distances, labels); });
    });
#else
    (void)queries, (void)nq, (void)k, (void)distances, (void)labels, (void)caller_stream;
    fail("FlatIndex.search: CUDA queries: ", gpu_status());
#endif
  }

  // The rows and ids in slot order (copies): what pickling stores.
  std::pair<std::vector<float>, std::vector<int64_t>> rows() const {
    std::shared_lock lock(mutex_);
    return {rows_, std::vector<int64_t>(mirror_.ids(), mirror_.ids() + mirror_.size())};
  }

 private:
  static void check_threads(int threads) {
    if (threads < 0) fail("FlatIndex: threads = ", threads, " must be >= 0 (0: OpenMP default)");
  }

  int dim_;
  std::string storage_;
  std::string device_;
  std::atomic<int> threads_{0};
  std::unique_ptr<CpuFlatIndex> cpu_;
#ifdef FACENET_HAS_CUDA
  std::unique_ptr<GpuContext> context_;
  std::unique_ptr<GpuFlatIndex> gpu_;
  std::unique_ptr<StreamOrder> order_;
#endif
  std::vector<float> rows_;  // size() x dim_, slot order
  SlotMap mirror_;
  std::atomic<uintptr_t> last_input_{0};
  mutable std::shared_mutex mutex_;
};

void bind_search(nb::module_& m) {
  nb::class_<FlatIndexBase>(
      m, "FlatIndexBase",
      "Exact squared-L2 k-NN index on host arrays (engine CpuFlatIndex / GpuFlatIndex).\n\n"
      "Use facenet_engine.FlatIndex, which adds PyTorch tensors, CUDA streams and pickling.")
      .def(nb::init<int, const std::string&, const std::string&, int>(), nb::arg("dim"),
           nb::kw_only(), nb::arg("storage") = "fp32", nb::arg("device") = "cpu",
           nb::arg("threads") = 0,
           "An empty index of `dim`-dimensional vectors.\n\n"
           "storage: 'fp32' or 'bf16' (CPU: split bf16 planes, results identical to fp32), "
           "'fp32' or 'fp16' (CUDA; dim must be a multiple of 8).\n"
           "device: 'cpu' or 'cuda' (raises EngineError when no GPU can be used).\n"
           "threads: OpenMP threads per CPU search (0: the OpenMP default).")
      .def_prop_ro("dim", &FlatIndexBase::dim, "Dimension of the vectors.")
      .def_prop_ro("storage", &FlatIndexBase::storage, "Gallery element type: fp32, bf16 or fp16.")
      .def_prop_ro("device", &FlatIndexBase::device, "Where the gallery lives: cpu or cuda.")
      .def_prop_rw(
          "threads", &FlatIndexBase::threads,
          [](FlatIndexBase& self, int threads) {
            nb::gil_scoped_release unlocked;  // waits for running searches
            self.set_threads(threads);
          },
          "OpenMP threads per CPU search (0: the OpenMP default). Setting it waits for the "
          "searches in flight.")
      .def(
          "__len__",
          [](const FlatIndexBase& self) {
            nb::gil_scoped_release unlocked;  // an add may hold the lock
            return self.size();
          },
          "Number of vectors in the index.")
      .def_prop_ro("_last_input", &FlatIndexBase::last_input,
                   "Address of the last vectors/queries buffer the engine read (tests check "
                   "that inputs are used in place).")
      .def(
          "add",
          [](FlatIndexBase& self, HostFloats vectors, std::optional<HostIds> ids) {
            const int64_t n = rows_of(vectors, "FlatIndex.add: vectors", self.dim()).n;
            if (ids && (ids->ndim() != 1 || ids->shape(0) != static_cast<size_t>(n)))
              fail("FlatIndex.add: ids has shape ", shape_of(*ids), ", expected (", n,
                   ",) to match vectors");
            nb::gil_scoped_release unlocked;
            self.add(vectors.data(), n, ids ? ids->data() : nullptr);
          },
          nb::arg("vectors"), nb::arg("ids").noconvert() = nb::none(),
          "Adds the rows of `vectors` (n, dim) with int64 `ids` (n,); without ids they are "
          "len(self) .. len(self)+n-1 (ids must be an int64 C-contiguous array: TypeError "
          "otherwise, never a cast). Raises EngineError on a wrong shape, a NaN/inf "
          "component or an id already in the index. Releases the GIL.")
      .def(
          "remove",
          [](FlatIndexBase& self, HostIds ids) {
            if (ids.ndim() != 1)
              fail("FlatIndex.remove: ids has shape ", shape_of(ids), ", expected (n,)");
            nb::gil_scoped_release unlocked;
            return self.remove(ids.data(), static_cast<int64_t>(ids.shape(0)));
          },
          nb::arg("ids").noconvert(),
          "Removes the given int64 ids (unknown ids are ignored) and returns how many were "
          "removed. The last rows move into the holes, which changes the order of equal "
          "distances.")
      .def(
          "search",
          [](FlatIndexBase& self, HostFloats queries, int64_t k_arg) {
            const int64_t nq = rows_of(queries, "FlatIndex.search: queries", self.dim()).n;
            const int k = check_k(k_arg);
            std::vector<float> distances(static_cast<size_t>(nq * k));
            std::vector<int64_t> labels(distances.size());
            {
              nb::gil_scoped_release unlocked;
              self.search(queries.data(), nq, k, distances.data(), labels.data());
            }
            const size_t rows = static_cast<size_t>(nq), cols = static_cast<size_t>(k);
            return std::make_pair(to_numpy(std::move(distances), {rows, cols}),
                                  to_numpy(std::move(labels), {rows, cols}));
          },
          nb::arg("queries"), nb::arg("k"),
          "The k nearest vectors of each query row: (distances float32 (nq, k), squared L2, "
          "ascending; labels int64 (nq, k), the ids given to add). Rows are padded with "
          "distance inf and label -1 when k exceeds len(self); equal distances keep slot "
          "order. Raises EngineError on k < 1, a wrong shape or a NaN/inf query. Releases the "
          "GIL; searches from several threads run in parallel on the CPU.")
      .def(
          "_search_cuda",
          [](FlatIndexBase& self, CudaMatrix queries, int64_t k_arg, CudaOutput<float> distances,
             CudaOutput<int64_t> labels, uintptr_t stream) {
            const int64_t nq = rows_of(queries, "FlatIndex.search: queries", self.dim()).n;
            const int k = check_k(k_arg);
            auto expect = [&](const auto& out, const char* what) {
              if (out.ndim() != 2 || out.shape(0) != queries.shape(0) ||
                  out.shape(1) != static_cast<size_t>(k))
                fail("FlatIndex._search_cuda: ", what, " must be (", nq, ", ", k, ")");
            };
            expect(distances, "distances");
            expect(labels, "labels");
            nb::gil_scoped_release unlocked;
            self.search_cuda(queries.data(), nq, k, distances.data(), labels.data(), stream);
          },
          // Outputs without conversion: results written into a converted temporary would be lost.
          nb::arg("queries"), nb::arg("k"), nb::arg("distances").noconvert(),
          nb::arg("labels").noconvert(), nb::arg("stream"),
          "Device search into preallocated float32 / int64 C-contiguous device outputs (TypeError "
          "for any other, never a converted copy), ordered on the CUDA stream whose handle is "
          "`stream` (events, no host sync). Needs a non-empty index and queries.")
      .def(
          "_rows",
          [](const FlatIndexBase& self) {
            auto [rows, ids] = [&] {
              nb::gil_scoped_release unlocked;  // an add may hold the lock
              return self.rows();
            }();
            const size_t n = ids.size();
            return std::make_pair(to_numpy(std::move(rows), {n, static_cast<size_t>(self.dim())}),
                                  to_numpy(std::move(ids), {n}));
          },
          "Copies of the rows (n, dim) float32 and ids (n,) int64 in slot order (pickling).");
}

}  // namespace facenet::python
