// BLAS threading and identity behind one interface: OpenBLAS's extension calls where the build
// found OpenBLAS (FACENET_HAVE_OPENBLAS), else a plain CBLAS whose GEMM runs on one thread.
#pragma once

#include <string>

namespace facenet {

// Whether the BLAS library's own thread count can be set (OpenBLAS: yes; reference CBLAS: no).
bool blas_has_thread_control();

// Threads BLAS calls use: OpenBLAS's setting, else 1.
int blas_num_threads();

// Sets the BLAS thread count; without thread control it does nothing (GEMM stays serial and
// the callers' OpenMP threads carry the parallelism).
void set_blas_num_threads(int threads);

// What the library is, for benchmark JSON: OpenBLAS's build configuration, else
// "CBLAS <libraries>" as found by CMake.
std::string blas_description();

}  // namespace facenet
