// Which embeddings a set of vectors holds: the producing model's identity and the vector length,
// so a gallery never mixes embeddings of different networks or weights.
#pragma once

#include <string>

namespace facenet {

struct Model;

struct EmbeddingSpec {
  std::string model;
  int dim = 0;
};

// Identifies the producing model: graph name, variant and a fingerprint of the weights, so
// embeddings of different weights under the same name never mix.
EmbeddingSpec embedding_spec(const Model& model);

}  // namespace facenet
