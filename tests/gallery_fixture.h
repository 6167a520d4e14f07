// The gallery suites' fixture: a per-test folder with a gallery path in it, synthetic
// embeddings, and a gallery of a few synthetic people.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "engine/search/gallery.h"
#include "tests/test_util.h"

namespace facenet::test {

inline const EmbeddingSpec kSpec{"nn4.small2.v1", 128};

// n x d normally distributed values, the same for the same seed.
inline std::vector<float> synthetic(size_t n, int d, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> x(n * static_cast<size_t>(d));
  for (float& v : x) v = normal(rng);
  return x;
}

class GalleryFixture : public TempDirTest {
 protected:
  GalleryFixture() : TempDirTest("facenet-gallery") {}
  void SetUp() override {
    TempDirTest::SetUp();
    path_ = (dir_ / "gallery.db").string();
  }
  // A gallery at path_ with `people` identities ("person<p>", synthetic(per_person, dim, p)),
  // closed again (WAL checkpointed).
  void populate(int people, int per_person) {
    Gallery g = Gallery::create(path_, {kSpec});
    for (int p = 0; p < people; ++p) {
      const auto x = synthetic(per_person, kSpec.dim, p);
      g.enroll("person" + std::to_string(p), kSpec, x.data(), per_person);
    }
  }
  std::string path_;
};

}  // namespace facenet::test
