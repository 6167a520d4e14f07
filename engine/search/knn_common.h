// Private to engine/search: the argument checks both k-NN indexes (knn.cpp, knn_gpu.cpp) run.
#pragma once

#include <cstdint>

namespace facenet::knn_detail {

void check_dim(int dim, int expected, const char* what);
void check_finite(const float* x, int64_t n, int dim, const char* what);
void check_search_args(int64_t nq, int k, int max_k, const float* distances, const int64_t* labels);
// An empty gallery's result: every row padded with label -1, distance +inf.
void fill_empty(int64_t count, float* distances, int64_t* labels);

}  // namespace facenet::knn_detail
