// What the binding files of facenet_engine._core share: one bind_* function per engine
// subsystem, called by module.cpp in order, and the few conversions several of them use.
#pragma once
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "engine/core/error.h"
#ifdef FACENET_HAS_CUDA
#include "engine/core/cuda_util.h"
#endif

namespace facenet::python {

namespace nb = nanobind;

void bind_model(nb::module_& m);     // model files, info, converters, ONNX export
void bind_pipeline(nb::module_& m);  // the front door: detect / align / encode / identify
void bind_gallery(nb::module_& m);   // the durable gallery, verify / identify helpers
void bind_search(nb::module_& m);    // exact k-NN indexes on numpy / DLPack arrays
void bind_train(nb::module_& m);     // triplet loss on numpy / DLPack arrays

// A C-contiguous float32 host array of any rank (numpy, or a CPU DLPack tensor), read in place:
// nanobind passes such arrays through untouched and converts other dtypes or layouts first.
using HostFloats = nb::ndarray<const float, nb::c_contig, nb::device::cpu>;

// A shape as Python prints it: (2, 3), (5,).
inline std::string shape_text(size_t ndim, const int64_t* shape) {
  std::string s = "(";
  for (size_t i = 0; i < ndim; ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (ndim == 1 ? ",)" : ")");
}

template <typename Array>
std::string shape_of(const Array& a) {
  return shape_text(a.ndim(), a.shape_ptr());
}

// A float array seen as n rows of dim values.
struct Rows {
  const float* data = nullptr;
  int64_t n = 0;
  int dim = 0;
};

// The rows of `a`: (n, dim) is n rows and, where `vector_ok`, (dim,) is one. A `dim` of 0 takes
// any width. Any other shape is a caller mistake; `what` names the call and the argument.
template <typename Array>
Rows rows_of(const Array& a, const std::string& what, int dim = 0, bool vector_ok = false) {
  const bool is_vector = vector_ok && a.ndim() == 1;
  const bool rank_ok = a.ndim() == 2 || is_vector;
  const size_t width = rank_ok ? a.shape(a.ndim() - 1) : 0;
  const bool width_ok = dim == 0 ? width <= static_cast<size_t>(std::numeric_limits<int>::max())
                                 : width == static_cast<size_t>(dim);
  if (!rank_ok || !width_ok) {
    const std::string d = dim == 0 ? "dim" : std::to_string(dim);
    fail(what, " has shape ", shape_of(a), ", expected (n, ", d, ")",
         vector_ok ? " or (" + d + ",)" : "");
  }
  return {a.data(), is_vector ? 1 : static_cast<int64_t>(a.shape(0)), static_cast<int>(width)};
}

// Runs an engine call; its facenet::Error gets `context` (the Python call and argument) in front,
// because the engine's own message names its C++ function, not what the Python caller passed.
template <typename F>
void blame(const std::string& context, F&& call) {
  try {
    call();
  } catch (const Error& e) {
    fail(context, ": ", e.what());
  }
}

// A new numpy array that owns `values` (moved, not copied), with the given shape.
template <typename T>
nb::ndarray<nb::numpy, T> to_numpy(std::vector<T>&& values, std::initializer_list<size_t> shape) {
  auto* owner = new std::vector<T>(std::move(values));
  nb::capsule free_owner(owner, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  return nb::ndarray<nb::numpy, T>(owner->data(), shape, free_owner);
}

#ifdef FACENET_HAS_CUDA
// Work on the engine's stream ordered after everything already queued on the caller's stream
// (a framework's current stream, passed as an integer handle: torch's stream.cuda_stream), and
// the caller's stream ordered after that work: two events, no host synchronisation.
class StreamOrder {
 public:
  StreamOrder()
      : inputs_ready_(make_event(cudaEventDisableTiming)),
        results_ready_(make_event(cudaEventDisableTiming)) {}
  template <typename Work>
  void run(uintptr_t caller_handle, cudaStream_t engine, Work&& work) {
    const auto caller = reinterpret_cast<cudaStream_t>(caller_handle);
    FN_GPU_CHECK(cudaEventRecord(inputs_ready_.get(), caller));
    FN_GPU_CHECK(cudaStreamWaitEvent(engine, inputs_ready_.get(), 0));
    work();
    FN_GPU_CHECK(cudaEventRecord(results_ready_.get(), engine));
    FN_GPU_CHECK(cudaStreamWaitEvent(caller, results_ready_.get(), 0));
  }

 private:
  UniqueEvent inputs_ready_, results_ready_;
};
#endif

}  // namespace facenet::python
