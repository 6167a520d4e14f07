// The engine's float GEMMs outside the convolution backend, on oneDNN (whose kernels pick the
// CPU's instruction set at run time, unlike Debian's OpenBLAS 0.3.21, which does not know recent
// CPUs), and the identity and threads of the CBLAS the double-precision reference paths still use.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "engine/core/dtype.h"

namespace facenet {

// The engine's threading policy: every GEMM call runs on ONE thread and the engine parallelises
// around the calls with OpenMP (per-thread GEMM tiles, or parallel_sgemm's panels). A threaded
// library pool and OpenMP's threads spinning against each other on a small machine cost whole
// 4 ms scheduler quanta per call (measured: triplet loss at B=256 went from 0.16 ms to 4-28 ms
// once a threaded OpenBLAS GEMM had run in the process).
//
// oneDNN (Debian's build uses the OpenMP runtime) takes its thread count per call: inside an
// active OpenMP parallel region a dnnl_sgemm call or a primitive execution runs on the calling
// thread alone (it opens no nested region, whatever OMP_MAX_ACTIVE_LEVELS says); outside one it
// opens a region of omp_get_max_threads() threads, so the calls below pin that to 1 for the call.

// C (m x n) = A (m x k) * op(B), row-major with leading dimensions; op(B) is B (k x n), or
// with trans_b the transpose of a row-major n x k B. C's columns are computed in fixed-width
// panels, one single-threaded dnnl_sgemm each, shared out to the OpenMP threads (serially inside
// a parallel region); every element comes from the same panel call whatever the thread count,
// so the result does not depend on it (bit for bit).
void parallel_sgemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                    int64_t ldb, float* c, int64_t ldc, bool trans_b = false);

// Element type of RowGemm's inputs; kBFloat16 is raw bf16 bit patterns (uint16_t).
// C (m x n, fp32, row-major, ldc = n) = A (m x k, row-major) * B^T with B n x k row-major: the
// inner products of m queries with n gallery rows. One oneDNN matmul primitive (brgemm kernels:
// measured 150-190 GFLOP/s a core in fp32 at 256 x 128 x 256-1024 on this project's AVX-512
// EPYC, against 90-140 for dnnl_sgemm; bf16 inputs 300-470) built once per shape and run by
// Worker objects, one per thread, each on its calling thread with its own scratchpad.
class RowGemm {
 public:
  RowGemm(int64_t m, int64_t n, int64_t k, DType input);
  ~RowGemm();
  RowGemm(RowGemm&&) noexcept;
  RowGemm& operator=(RowGemm&&) noexcept;
  std::string implementation() const;  // oneDNN's name of the kernel, e.g. "brg:avx512_core"

  // Execution state of one thread (stream, scratchpad, memory objects).
  class Worker {
   public:
    explicit Worker(const RowGemm& gemm);
    ~Worker();
    Worker(const Worker&) = delete;
    Worker& operator=(const Worker&) = delete;
    void run(const void* a, const void* b, float* c);

   private:
    struct State;
    std::unique_ptr<State> state_;
  };

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// What the engine's GEMMs run on, for benchmark JSON: oneDNN's version, runtime and the ISA its
// kernels use, then the CBLAS of the double-precision paths (OpenBLAS's build configuration).
std::string blas_description();

// The instruction set oneDNN's CPU kernels use here (dnnl_get_effective_cpu_isa), by name:
// "avx2", "avx512_core", "avx512_core_bf16", ...
std::string onednn_isa_name();

// The CBLAS library's own thread control (OpenBLAS: yes; a reference CBLAS: no). The engine keeps
// it at 1 (set when the engine loads); only a benchmark timing a peer linked to the same CBLAS
// (FAISS's IndexFlatL2 runs its GEMMs through it) raises it.
bool blas_has_thread_control();
int blas_num_threads();
void set_blas_num_threads(int threads);

}  // namespace facenet
