// CPU k-NN kernels, portable and AVX-512: row dots, bf16-plane dots and the fused distance /
// bound filter of a run of rows, one set chosen per process at start-up.
#include "engine/search/knn_cpu_kernels.h"

#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <string>

namespace facenet::knn_detail {

namespace {

// ip[r] = q . row r for `count` consecutive rows of `dim`. One kernel serves a whole process
// (chosen once), with a fixed summation order, so the fp32 scan and the bf16 re-rank, which
// both call it, give the same bits for the same row.
void dots_portable(const float* q, const float* rows, int64_t count, int dim, float* ip) {
  constexpr int kLanes = 16;
  for (int64_t r = 0; r < count; ++r) {
    const float* b = rows + r * dim;
    float part[kLanes] = {};
    int d = 0;
    for (; d + kLanes <= dim; d += kLanes)
      for (int l = 0; l < kLanes; ++l) part[l] += q[d + l] * b[d + l];
    for (int l = 0; d < dim; ++d, ++l) part[l] += q[d] * b[d];
    for (int width = kLanes / 2; width > 0; width /= 2)
      for (int l = 0; l < width; ++l) part[l] += part[l + width];
    ip[r] = part[0];
  }
}

// ip[r] = q . h_r with h bf16 rows: the approximate dot of the bound (any order).
void dots_high_portable(const float* q, const uint16_t* rows, int64_t count, int dim, float* ip) {
  for (int64_t r = 0; r < count; ++r) {
    float s = 0;
    for (int d = 0; d < dim; ++d) s += q[d] * bf16_to_float(rows[r * dim + d]);
    ip[r] = s;
  }
}

// First chunk of 16 at or after j0 with a key <= bound, or run.count. fp32: keys are the
// distances max(0, (qn + gn) - 2 ip) (add, then subtract twice ip: the exact path's bits);
// bf16: keys are the lower bounds A - E and uppers the upper bounds A + E.
int64_t next_hit_portable(const Run& run, const QueryTerms& t, int64_t j0, float bound, float* keys,
                          float* uppers) {
  for (; j0 < run.count; j0 += 16) {
    const int m = static_cast<int>(std::min<int64_t>(16, run.count - j0));
    bool any = false;
    for (int l = 0; l < m; ++l) {
      const int64_t j = j0 + l;
      const float a = std::max(0.f, (t.qn + run.gn[j]) - 2.f * run.ip[j]);
      if (run.ng) {
        const float e = t.c0 + t.c1 * run.ng[j] + t.c2 * run.err[j] + t.c3 * run.gn[j];
        keys[l] = a - e;
        uppers[l] = a + e;
      } else {
        keys[l] = a;
      }
      any |= keys[l] <= bound;
    }
    if (any) return j0;
  }
  return run.count;
}

#if defined(__x86_64__) && defined(__GNUC__)
#define FN_KNN_AVX512 1
// GCC 12's avx512fintrin.h seeds masked and widening intrinsics with _mm512_undefined_*, which
// its own flow analysis then reports as uninitialised (a known false positive).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// Four FMA chains over the 16-float chunks (chunk c into chain c % 4), a masked tail into
// chain 0, then (0 + 1) + (2 + 3) and a fixed lane reduction: independent chains keep a
// streaming scan on memory bandwidth rather than on FMA latency.
__attribute__((target("avx512f"))) void dots_avx512(const float* q, const float* rows,
                                                    int64_t count, int dim, float* ip) {
  const __mmask16 tail = static_cast<__mmask16>((1u << (dim % 16)) - 1);
  for (int64_t r = 0; r < count; ++r) {
    const float* b = rows + r * dim;
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                     _mm512_setzero_ps()};
    int d = 0;
    for (; d + 64 <= dim; d += 64)
      for (int c = 0; c < 4; ++c)
        acc[c] = _mm512_fmadd_ps(_mm512_loadu_ps(q + d + 16 * c), _mm512_loadu_ps(b + d + 16 * c),
                                 acc[c]);
    for (int c = 0; d + 16 <= dim; d += 16, ++c)
      acc[c] = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), _mm512_loadu_ps(b + d), acc[c]);
    if (tail)
      acc[0] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, q + d),
                               _mm512_maskz_loadu_ps(tail, b + d), acc[0]);
    ip[r] = _mm512_reduce_add_ps(
        _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
  }
}

__attribute__((target("avx512f"))) inline __m512 widen_bf16(const uint16_t* h) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(h));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

__attribute__((target("avx512f"))) void dots_high_avx512(const float* q, const uint16_t* rows,
                                                         int64_t count, int dim, float* ip) {
  for (int64_t r = 0; r < count; ++r) {
    const uint16_t* h = rows + r * dim;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int d = 0;
    for (; d + 32 <= dim; d += 32) {
      acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), widen_bf16(h + d), acc0);
      acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + d + 16), widen_bf16(h + d + 16), acc1);
    }
    for (; d + 16 <= dim; d += 16)
      acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), widen_bf16(h + d), acc0);
    float s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    for (; d < dim; ++d) s += q[d] * bf16_to_float(h[d]);
    ip[r] = s;
  }
}

__attribute__((target("avx512f"))) int64_t next_hit_avx512(const Run& run, const QueryTerms& t,
                                                           int64_t j0, float bound, float* keys,
                                                           float* uppers) {
  const __m512 qn = _mm512_set1_ps(t.qn), two = _mm512_set1_ps(2.f), zero = _mm512_setzero_ps();
  const __m512 b = _mm512_set1_ps(bound);
  const __m512 c0 = _mm512_set1_ps(t.c0), c1 = _mm512_set1_ps(t.c1), c2 = _mm512_set1_ps(t.c2),
               c3 = _mm512_set1_ps(t.c3);
  for (; j0 < run.count; j0 += 16) {
    const int64_t m = std::min<int64_t>(16, run.count - j0);
    const __mmask16 mask = m == 16 ? __mmask16(0xffff) : __mmask16((1u << m) - 1);
    const __m512 gn = _mm512_maskz_loadu_ps(mask, run.gn + j0);
    // max(x, 0) returns +0 for x = -0 and for NaN, as std::max(0.f, x) does.
    const __m512 a =
        _mm512_max_ps(_mm512_sub_ps(_mm512_add_ps(qn, gn),
                                    _mm512_mul_ps(two, _mm512_maskz_loadu_ps(mask, run.ip + j0))),
                      zero);
    if (!run.ng) {
      if (_mm512_mask_cmp_ps_mask(mask, a, b, _CMP_LE_OQ)) {
        _mm512_storeu_ps(keys, a);
        return j0;
      }
      continue;
    }
    __m512 e = _mm512_fmadd_ps(c1, _mm512_maskz_loadu_ps(mask, run.ng + j0), c0);
    e = _mm512_fmadd_ps(c2, _mm512_maskz_loadu_ps(mask, run.err + j0), e);
    e = _mm512_fmadd_ps(c3, gn, e);
    const __m512 lower = _mm512_sub_ps(a, e);
    if (_mm512_mask_cmp_ps_mask(mask, lower, b, _CMP_LE_OQ)) {
      _mm512_storeu_ps(keys, lower);
      _mm512_storeu_ps(uppers, _mm512_add_ps(a, e));
      return j0;
    }
  }
  return run.count;
}

#pragma GCC diagnostic pop
#endif

}  // namespace

Kernels::Kernels()
    : dots(dots_portable), dots_high(dots_high_portable), next_hit(next_hit_portable) {
#ifdef FN_KNN_AVX512
  __builtin_cpu_init();  // this runs as a static constructor, perhaps before libgcc's
  const char* choice = std::getenv("FACENET_KNN_KERNELS");
  const bool portable = choice && std::string(choice) == "portable";
  if (!portable && __builtin_cpu_supports("avx512f")) {
    dots = dots_avx512;
    dots_high = dots_high_avx512;
    next_hit = next_hit_avx512;
  }
#endif
}
const Kernels kKernels;

}  // namespace facenet::knn_detail
