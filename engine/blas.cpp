// BLAS threading and identity: OpenBLAS extension calls, or the fixed answers of a plain CBLAS.
#include "engine/blas.h"

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

}  // namespace facenet
