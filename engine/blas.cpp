// BLAS threading and identity: OpenBLAS extension calls, or the fixed answers of a plain CBLAS.
#include "engine/blas.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>

#ifdef FACENET_HAVE_OPENBLAS
extern "C" {
void openblas_set_num_threads(int);
int openblas_get_num_threads(void);
char* openblas_get_config(void);
}
#endif

namespace facenet {

#ifdef FACENET_HAVE_OPENBLAS

bool blas_has_thread_control() {
  return true;
}
int blas_num_threads() {
  return openblas_get_num_threads();
}
void set_blas_num_threads(int threads) {
  openblas_set_num_threads(threads);
}
std::string blas_description() {
  return openblas_get_config();
}

#else

bool blas_has_thread_control() {
  return false;
}
int blas_num_threads() {
  return 1;
}
void set_blas_num_threads(int) {}
std::string blas_description() {
#ifdef FACENET_BLAS_NAME
  return FACENET_BLAS_NAME;
#else
  return "unknown CBLAS";
#endif
}

#endif

namespace {
// Applies the policy in blas.h once, when the engine is loaded.
const bool kSerialBlas = (set_blas_num_threads(1), true);
}  // namespace

void parallel_sgemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                    int64_t ldb, float* c, int64_t ldc, bool trans_b) {
  (void)kSerialBlas;
  constexpr int64_t kMinColumns = 64;  // narrower slices lose more to packing than they gain
  const int threads = omp_in_parallel()
                          ? 1
                          : static_cast<int>(std::min<int64_t>(
                                omp_get_max_threads(), std::max<int64_t>(1, n / kMinColumns)));
  const CBLAS_TRANSPOSE tb = trans_b ? CblasTrans : CblasNoTrans;
  // Column c0 of op(B) starts at b + c0 (B k x n) or at row c0 of B (n x k, transposed).
  auto columns = [&](int64_t c0, int64_t c1) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, tb, m, c1 - c0, k, 1.0f, a, lda,
                trans_b ? b + c0 * ldb : b + c0, ldb, 0.0f, c + c0, ldc);
  };
  if (threads <= 1) return columns(0, n);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int t = 0; t < threads; ++t) columns(n * t / threads, n * (t + 1) / threads);
}

}  // namespace facenet
