// BLAS threading and identity behind one interface: OpenBLAS's extension calls where the build
// found OpenBLAS (FACENET_HAVE_OPENBLAS), else a plain CBLAS whose GEMM runs on one thread.
#pragma once

#include <cstdint>
#include <string>

namespace facenet {

// Whether the BLAS library's own thread count can be set (OpenBLAS: yes; reference CBLAS: no).
bool blas_has_thread_control();

// Threads BLAS calls use: OpenBLAS's setting, else 1.
int blas_num_threads();

// The engine's threading policy: BLAS calls run on ONE thread and the engine parallelises
// around them with OpenMP (per-thread GEMM tiles, or parallel_sgemm below). OpenBLAS's own
// pthreads and OpenMP's threads spinning against each other on a small machine cost whole
// 4 ms scheduler quanta per call (measured: triplet loss at B=256 went from 0.16 ms to 4-28 ms
// once a threaded GEMM had run in the process). blas.cpp applies it when the engine loads.

// C (m x n) = A (m x k) * op(B), row-major with leading dimensions; op(B) is B (k x n), or
// with trans_b the transpose of a row-major n x k B. C's columns are computed in fixed-width
// panels shared out to the OpenMP threads (serially inside a parallel region); the result does
// not depend on the thread count.
void parallel_sgemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                    int64_t ldb, float* c, int64_t ldc, bool trans_b = false);

// Sets the BLAS thread count; without thread control it does nothing (GEMM stays serial and
// the callers' OpenMP threads carry the parallelism).
void set_blas_num_threads(int threads);

// What the library is, for benchmark JSON: OpenBLAS's build configuration, else
// "CBLAS <libraries>" as found by CMake.
std::string blas_description();

}  // namespace facenet
