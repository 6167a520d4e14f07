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
  // Fixed-width column panels: every element of C comes from the same panel GEMM whatever
  // the thread count, so results do not depend on it (bit for bit).
  constexpr int64_t kPanel = 256;
  const int64_t panels = (n + kPanel - 1) / kPanel;
  const CBLAS_TRANSPOSE tb = trans_b ? CblasTrans : CblasNoTrans;
  // Column c0 of op(B) starts at b + c0 (B k x n) or at row c0 of B (n x k, transposed).
  auto panel = [&](int64_t p) {
    const int64_t c0 = p * kPanel, cols = std::min(kPanel, n - c0);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, tb, m, cols, k, 1.0f, a, lda,
                trans_b ? b + c0 * ldb : b + c0, ldb, 0.0f, c + c0, ldc);
  };
  if (panels <= 1 || omp_in_parallel()) {
    for (int64_t p = 0; p < panels; ++p) panel(p);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < panels; ++p) panel(p);
}

}  // namespace facenet
