// The engine's float GEMMs on oneDNN (dnnl_sgemm panels, cached matmul primitives) and the
// identity and thread control of the CBLAS behind the double-precision reference paths.
#include "engine/core/blas.h"

#include <omp.h>

#include <oneapi/dnnl/dnnl.h>
#include <algorithm>
#include <cstdio>
#include <oneapi/dnnl/dnnl.hpp>
#include <vector>

#include "engine/core/error.h"

#ifdef FACENET_HAVE_OPENBLAS
extern "C" {
void openblas_set_num_threads(int);
int openblas_get_num_threads(void);
char* openblas_get_config(void);
}
#endif

namespace facenet {

// ---- CBLAS (double-precision reference paths, FAISS in the search bench) ---------------------

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
static std::string cblas_description() {
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
static std::string cblas_description() {
#ifdef FACENET_BLAS_NAME
  return FACENET_BLAS_NAME;
#else
  return "unknown CBLAS";
#endif
}

#endif

namespace {

// Applies the policy in blas.h to the CBLAS once, when the engine is loaded.
const bool kSerialBlas = (set_blas_num_threads(1), true);

// Pins omp_get_max_threads() of the calling thread to 1 for a scope outside any parallel
// region, so that oneDNN calls made there (which take their thread count from it) run serially.
class SerialOneDnnScope {
 public:
  SerialOneDnnScope() : saved_(omp_in_parallel() ? 0 : omp_get_max_threads()) {
    if (saved_ > 1) omp_set_num_threads(1);
  }
  ~SerialOneDnnScope() {
    if (saved_ > 1) omp_set_num_threads(saved_);
  }
  SerialOneDnnScope(const SerialOneDnnScope&) = delete;
  SerialOneDnnScope& operator=(const SerialOneDnnScope&) = delete;

 private:
  int saved_;
};

const dnnl::engine& cpu_engine() {
  static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

}  // namespace

std::string onednn_isa_name() {
  // The ISAs oneDNN 2.x and 3.x both name; whatever else it reports is shown as a number.
  switch (dnnl_get_effective_cpu_isa()) {
    case dnnl_cpu_isa_sse41:
      return "sse41";
    case dnnl_cpu_isa_avx:
      return "avx";
    case dnnl_cpu_isa_avx2:
      return "avx2";
    case dnnl_cpu_isa_avx2_vnni:
      return "avx2_vnni";
    case dnnl_cpu_isa_avx512_core:
      return "avx512_core";
    case dnnl_cpu_isa_avx512_core_vnni:
      return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core_bf16:
      return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_amx:
      return "avx512_core_amx";
    default:
      return "isa 0x" + detail::concat(std::hex, static_cast<int>(dnnl_get_effective_cpu_isa()));
  }
}

std::string blas_description() {
  (void)kSerialBlas;
  const dnnl_version_t* v = dnnl_version();
  char text[160];
  std::snprintf(text, sizeof text,
                "oneDNN %d.%d.%d (%s runtime, ISA %s) float GEMMs; double: ", v->major, v->minor,
                v->patch, v->cpu_runtime == DNNL_RUNTIME_OMP ? "OpenMP" : "non-OpenMP",
                onednn_isa_name().c_str());
  return text + cblas_description();
}

// ---- parallel_sgemm --------------------------------------------------------------------------

void parallel_sgemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                    int64_t ldb, float* c, int64_t ldc, bool trans_b) {
  // Fixed-width column panels: every element of C comes from the same panel GEMM whatever
  // the thread count, so results do not depend on it (bit for bit).
  constexpr int64_t kPanel = 256;
  const int64_t panels = (n + kPanel - 1) / kPanel;
  // Column c0 of op(B) starts at b + c0 (B k x n) or at row c0 of B (n x k, transposed).
  // dnnl_sgemm is row-major; it fails only on arguments no caller of ours passes.
  auto panel = [&](int64_t p) {
    const int64_t c0 = p * kPanel, cols = std::min(kPanel, n - c0);
    const dnnl_status_t status =
        dnnl_sgemm('N', trans_b ? 'T' : 'N', m, cols, k, 1.0f, a, lda,
                   trans_b ? b + c0 * ldb : b + c0, ldb, 0.0f, c + c0, ldc);
    FN_ASSERT(status == dnnl_success);
  };
  if (panels <= 1 || omp_in_parallel()) {
    const SerialOneDnnScope serial;
    for (int64_t p = 0; p < panels; ++p) panel(p);
    return;
  }
  // Inside this region every dnnl_sgemm call runs on its calling thread (blas.h).
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < panels; ++p) panel(p);
}

// ---- RowGemm ---------------------------------------------------------------------------------

struct RowGemm::Impl {
  dnnl::memory::desc a, b, c;
  dnnl::matmul::primitive_desc pd;
  dnnl::matmul primitive;
  size_t scratch_bytes = 0;
};

RowGemm::RowGemm(int64_t m, int64_t n, int64_t k, DType input) : impl_(std::make_unique<Impl>()) {
  FN_ASSERT(m > 0 && n > 0 && k > 0);
  using tag = dnnl::memory::format_tag;
  using dt = dnnl::memory::data_type;
  const dt in = input == DType::kBFloat16 ? dt::bf16 : dt::f32;
  impl_->a = dnnl::memory::desc({m, k}, in, tag::ab);
  impl_->b = dnnl::memory::desc({k, n}, in, tag::ba);  // B^T: n rows of k, row-major
  impl_->c = dnnl::memory::desc({m, n}, dt::f32, tag::ab);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  // Created for the one thread it runs on (blas.h): oneDNN plans a primitive's work split for
  // the thread count at creation. (Without this pin, tiles run inside a region were still
  // complete in tests/test_blas.cpp; the pin keeps the plan and the run the same anyway.)
  const SerialOneDnnScope serial;
  impl_->pd = dnnl::matmul::primitive_desc(dnnl::matmul::desc(impl_->a, impl_->b, impl_->c), attr,
                                           cpu_engine());
  impl_->primitive = dnnl::matmul(impl_->pd);
  impl_->scratch_bytes = impl_->pd.scratchpad_desc().get_size();
}

RowGemm::~RowGemm() = default;
RowGemm::RowGemm(RowGemm&&) noexcept = default;
RowGemm& RowGemm::operator=(RowGemm&&) noexcept = default;

std::string RowGemm::implementation() const {
  return impl_->pd.impl_info_str();
}

struct RowGemm::Worker::State {
  const Impl& gemm;
  dnnl::stream stream;
  std::vector<unsigned char> scratch;
  dnnl::memory a, b, c, scratchpad;
  explicit State(const Impl& g)
      : gemm(g),
        stream(cpu_engine()),
        scratch(std::max<size_t>(g.scratch_bytes, 1)),
        a(g.a, cpu_engine(), DNNL_MEMORY_NONE),
        b(g.b, cpu_engine(), DNNL_MEMORY_NONE),
        c(g.c, cpu_engine(), DNNL_MEMORY_NONE),
        scratchpad(g.pd.scratchpad_desc(), cpu_engine(), scratch.data()) {}
};

RowGemm::Worker::Worker(const RowGemm& gemm) : state_(std::make_unique<State>(*gemm.impl_)) {}
RowGemm::Worker::~Worker() = default;

void RowGemm::Worker::run(const void* a, const void* b, float* c) {
  State& s = *state_;
  s.a.set_data_handle(const_cast<void*>(a));
  s.b.set_data_handle(const_cast<void*>(b));
  s.c.set_data_handle(c);
  const SerialOneDnnScope serial;
  s.gemm.primitive.execute(s.stream, {{DNNL_ARG_SRC, s.a},
                                      {DNNL_ARG_WEIGHTS, s.b},
                                      {DNNL_ARG_DST, s.c},
                                      {DNNL_ARG_SCRATCHPAD, s.scratchpad}});
}

}  // namespace facenet
