// Bindings of engine/gallery (filled in by its owner).
#include "apps/python/src/bindings.h"

namespace facenet::python {

void bind_gallery(nb::module_& /*m*/) {}

}  // namespace facenet::python
