// What the binding files of facenet_engine._core share: one bind_* function per engine
// subsystem, called by module.cpp in order, and the few conversions several of them use.
#pragma once
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstdint>
#include <utility>
#include <vector>

namespace facenet::python {

namespace nb = nanobind;

void bind_model(nb::module_& m);     // model files, info, converters, ONNX export
void bind_pipeline(nb::module_& m);  // the front door: detect / align / encode / identify
void bind_gallery(nb::module_& m);   // the durable gallery, verify / identify helpers
void bind_search(nb::module_& m);    // exact k-NN indexes on numpy / DLPack arrays
void bind_train(nb::module_& m);     // triplet loss on numpy / DLPack arrays

// A new numpy array that owns `values` (moved, not copied), with the given shape.
template <typename T>
nb::ndarray<nb::numpy, T> to_numpy(std::vector<T>&& values, std::initializer_list<size_t> shape) {
  auto* owner = new std::vector<T>(std::move(values));
  nb::capsule free_owner(owner, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  return nb::ndarray<nb::numpy, T>(owner->data(), shape, free_owner);
}

}  // namespace facenet::python
