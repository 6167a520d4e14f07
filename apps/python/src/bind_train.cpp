// Bindings of engine/train (filled in by its owner).
#include "apps/python/src/bindings.h"

namespace facenet::python {

void bind_train(nb::module_& /*m*/) {}

}  // namespace facenet::python
