// The embedding spec of a model; see embedding_spec.h.
#include "engine/model/embedding_spec.h"

#include <cstdio>

#include "engine/model/model.h"

namespace facenet {

EmbeddingSpec embedding_spec(const Model& model) {
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx",
                static_cast<unsigned long long>(model_fingerprint(model)));
  EmbeddingSpec s;
  s.model = model.graph.name + "/" + model.graph.variant + "#" + hex;
  s.dim = static_cast<int>(model.embedding_dim());
  return s;
}

}  // namespace facenet
