// Agreement of two k-NN results of the same queries, allowing for reordered ties: the check the
// k-NN tests and tools/bench_search.cpp's --check run (header-only, no GoogleTest, so the
// benchmark can include it without linking the test framework).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace facenet::test {

// At every rank the distances must agree within `tolerance`, and a label that differs counts
// as a tie-reorder only when its distance in the other result is within `tolerance` too.
struct KnnAgreement {
  double max_distance_error = 0;  // max |d_a - d_b| over ranks (inf entries compared exactly)
  int64_t label_mismatches = 0;   // labels in a that are absent from b's row
  int64_t unexplained = 0;        // mismatches not explained by ties within tolerance
  int64_t compared = 0;           // ranks compared
};

// Both results row-major, one row of k per query (knn.h's layout).
inline KnnAgreement compare_knn(const float* dist_a, const int64_t* labels_a, const float* dist_b,
                                const int64_t* labels_b, int64_t nq, int k, double tolerance) {
  KnnAgreement agreement;
  for (int64_t q = 0; q < nq; ++q) {
    const float* da = dist_a + q * k;
    const float* db = dist_b + q * k;
    const int64_t* la = labels_a + q * k;
    const int64_t* lb = labels_b + q * k;
    for (int i = 0; i < k; ++i) {
      ++agreement.compared;
      const bool both_inf = std::isinf(da[i]) && std::isinf(db[i]);
      const double err = both_inf ? 0.0 : std::abs(double(da[i]) - double(db[i]));
      agreement.max_distance_error = std::max(agreement.max_distance_error, err);
      if (std::find(lb, lb + k, la[i]) != lb + k) continue;
      ++agreement.label_mismatches;
      // A tie-reorder: the label that b dropped sits at b's boundary distance, within tolerance.
      if (!(std::abs(double(da[i]) - double(db[k - 1])) <= tolerance)) ++agreement.unexplained;
    }
  }
  return agreement;
}

}  // namespace facenet::test
