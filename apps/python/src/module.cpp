// facenet_engine._core: the extension module. Engine errors (facenet::Error: a bad input, file
// or argument, named in the message) become facenet_engine.EngineError with that message.
#include "apps/python/src/bindings.h"

#include "engine/core/error.h"

namespace nb = nanobind;

NB_MODULE(_core, m) {
  m.doc() = "facenet-engine's C++/CUDA engine (use the facenet_engine package, not this module)";
  static nb::object engine_error =
      nb::exception<facenet::Error>(m, "EngineError", PyExc_RuntimeError);
  engine_error.attr("__doc__") =
      "A mistake in an input, a file or an argument, as the engine reports it: the message names "
      "the file, tensor or argument and says what was expected.";
  engine_error.attr("__module__") = "facenet_engine";

  // Where a binding reads an array from: lets tests check that contiguous float32/uint8 inputs
  // and DLPack tensors are used in place, not copied.
  m.def(
      "_data_pointer", [](nb::ndarray<nb::ro> a) { return reinterpret_cast<uintptr_t>(a.data()); },
      nb::arg("array"), "The address of the first element, as the engine sees the array.");
#ifdef FACENET_HAS_CUDA
  m.attr("has_cuda") = true;
#else
  m.attr("has_cuda") = false;
#endif
#ifdef FACENET_HAS_DLIB
  m.attr("has_dlib") = true;
#else
  m.attr("has_dlib") = false;
#endif
  facenet::python::bind_model(m);
  facenet::python::bind_pipeline(m);
  facenet::python::bind_gallery(m);
  facenet::python::bind_search(m);
  facenet::python::bind_train(m);
}
