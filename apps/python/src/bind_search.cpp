// Bindings of engine/search (filled in by its owner).
#include "apps/python/src/bindings.h"

namespace facenet::python {

void bind_search(nb::module_& /*m*/) {}

}  // namespace facenet::python
