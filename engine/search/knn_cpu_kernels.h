// Private to engine/search: the CPU k-NN kernels (row dots, bf16-plane dots, the distance and
// bound filter), portable and AVX-512, chosen once at run time.
#pragma once

#include <cstdint>
#include <cstring>

namespace facenet::knn_detail {

// The fp32 value of a bf16 pattern (the scan's view of a bf16 plane).
inline float bf16_to_float(uint16_t h) {
  const uint32_t b = uint32_t{h} << 16;
  float x;
  std::memcpy(&x, &b, 4);
  return x;
}

// One query's stored squared norm and the coefficients of its bf16 bound E(s) (derived in
// knn.cpp, where query_terms() computes them).
struct QueryTerms {
  float qn = 0;  // stored ||q||^2
  float c0 = 0, c1 = 0, c2 = 0, c3 = 0;
};

// One run of gallery rows seen by one query: inner products and per-row terms.
struct Run {
  const float* ip;   // inner products
  const float* gn;   // ||g||^2
  const float* ng;   // bf16: ||g|| bounds (null for fp32)
  const float* err;  // bf16: ||g - h|| bounds
  int64_t count;
};

// The kernel set of this process. FACENET_KNN_KERNELS=portable keeps the portable kernels on an
// AVX-512 machine (the tests run both sets that way).
struct Kernels {
  // fp32 inner products of q with `count` rows; the same bits for a row wherever it is called.
  void (*dots)(const float*, const float*, int64_t, int, float*);
  // Inner products of q with `count` bf16 rows (the approximate dot the bound allows for).
  void (*dots_high)(const float*, const uint16_t*, int64_t, int, float*);
  // Where the next chunk of 16 rows holding a key that can still beat `bound` starts, with that
  // chunk's keys (and bf16 upper bounds) written out.
  int64_t (*next_hit)(const Run&, const QueryTerms&, int64_t, float, float*, float*);
  Kernels();
};
extern const Kernels kKernels;

inline float squared_norm(const float* a, int dim) {
  float ip;
  kKernels.dots(a, a, 1, dim, &ip);
  return ip;
}

}  // namespace facenet::knn_detail
