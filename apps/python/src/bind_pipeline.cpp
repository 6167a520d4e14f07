// Bindings of engine/pipeline (filled in by its owner).
#include "apps/python/src/bindings.h"

namespace facenet::python {

void bind_pipeline(nb::module_& /*m*/) {}

}  // namespace facenet::python
