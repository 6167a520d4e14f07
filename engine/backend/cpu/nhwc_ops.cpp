// NHWC float32/bfloat16 ops of the CPU backend (nhwc_ops.h). Arithmetic is float32 (double
// for the L2 norm's sum); bfloat16 values are widened on load and rounded on store. Every loop
// runs over a pixel's channels innermost (contiguous in NHWC), with the element type a template
// parameter, so the compiler vectorises them.
#include "engine/backend/cpu/nhwc_ops.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace facenet {

namespace {

inline float load(const float* p, int64_t i) {
  return p[i];
}
inline float load(const uint16_t* p, int64_t i) {
  return bf16_to_float(p[i]);
}
inline void store(float* p, int64_t i, float v) {
  p[i] = v;
}
inline void store(uint16_t* p, int64_t i, float v) {
  p[i] = float_to_bf16(v);
}

template <typename T>
T* data(const NhwcView& v) {
  return static_cast<T*>(v.data);
}

inline int64_t pixel(const NhwcView& v, int64_t n, int64_t y, int64_t x) {
  return ((n * v.h + y) * v.w + x) * v.cs;
}

// Calls fn<T>() with T the views' element type (all views of one op share it).
template <typename Fn>
void dispatch(DType t, Fn&& fn) {
  if (t == DType::kFloat32)
    fn(float{});
  else
    fn(uint16_t{});
}

template <typename T>
void l2pool(const NhwcView& x, const NhwcView& y, int kernel, int stride, int pad, int threads) {
  const T* in = data<T>(x);
  T* out = data<T>(y);
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> sum(y.c);
#pragma omp for collapse(2) schedule(static)
    for (int64_t n = 0; n < y.n; ++n)
      for (int64_t oy = 0; oy < y.h; ++oy)
        for (int64_t ox = 0; ox < y.w; ++ox) {
          std::fill(sum.begin(), sum.end(), 0.0f);
          for (int ky = 0; ky < kernel; ++ky) {
            const int64_t iy = oy * stride - pad + ky;
            if (iy < 0 || iy >= x.h) continue;
            for (int kx = 0; kx < kernel; ++kx) {
              const int64_t ix = ox * stride - pad + kx;
              if (ix < 0 || ix >= x.w) continue;
              const int64_t p = pixel(x, n, iy, ix);
              for (int64_t c = 0; c < y.c; ++c) {
                const float v = load(in, p + c);
                sum[c] += v * v;
              }
            }
          }
          const int64_t o = pixel(y, n, oy, ox);
          for (int64_t c = 0; c < y.c; ++c) store(out, o + c, std::sqrt(sum[c]));
        }
  }
}

// Per pixel, the channels split into runs each a plain loop: both inputs, one of them, none.
template <typename T>
void add_padded(const NhwcView& a, const NhwcView& b, bool relu, const NhwcView& y, int threads) {
  const T *pa = data<T>(a), *pb = data<T>(b);
  T* out = data<T>(y);
  const float lo = relu ? 0.0f : -std::numeric_limits<float>::infinity();
#pragma omp parallel for collapse(2) num_threads(threads) schedule(static)
  for (int64_t n = 0; n < y.n; ++n)
    for (int64_t oy = 0; oy < y.h; ++oy)
      for (int64_t ox = 0; ox < y.w; ++ox) {
        const int64_t ca = oy < a.h && ox < a.w ? a.c : 0, cb = oy < b.h && ox < b.w ? b.c : 0;
        const T* ra = pa + (ca ? pixel(a, n, oy, ox) : 0);
        const T* rb = pb + (cb ? pixel(b, n, oy, ox) : 0);
        T* o = out + pixel(y, n, oy, ox);
        const int64_t both = std::min(ca, cb);
        const T* longer = ca > cb ? ra : rb;
        for (int64_t c = 0; c < both; ++c) store(o, c, std::max(load(ra, c) + load(rb, c), lo));
        for (int64_t c = both; c < std::max(ca, cb); ++c)
          store(o, c, std::max(load(longer, c), lo));
        for (int64_t c = std::max(ca, cb); c < y.c; ++c) store(o, c, 0.0f);
      }
}

template <typename T>
void affine(const NhwcView& x, const float* gamma, const float* beta, bool relu, const NhwcView& y,
            int threads) {
  const T* in = data<T>(x);
  T* out = data<T>(y);
  const int64_t pixels = x.pixels();
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t p = 0; p < pixels; ++p) {
    const int64_t i = p * x.cs, o = p * y.cs;
    for (int64_t c = 0; c < x.c; ++c) {
      float v = gamma[c] * load(in, i + c) + beta[c];
      if (relu) v = std::max(v, 0.0f);
      store(out, o + c, v);
    }
  }
}

template <typename T>
void l2norm(const NhwcView& x, double eps, float* y, int threads) {
  const T* in = data<T>(x);
  const int64_t hw = x.h * x.w, d = x.c * hw;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t n = 0; n < x.n; ++n) {
    double sum = 0;
    for (int64_t p = 0; p < hw; ++p)
      for (int64_t c = 0; c < x.c; ++c) {
        const double v = load(in, (n * hw + p) * x.cs + c);
        sum += v * v;
      }
    const double inv = 1.0 / std::sqrt(std::max(sum, eps));
    // Output in CHW order (the reference's flattening); for 1x1 maps the same as NHWC.
    for (int64_t p = 0; p < hw; ++p)
      for (int64_t c = 0; c < x.c; ++c)
        y[n * d + c * hw + p] = static_cast<float>(load(in, (n * hw + p) * x.cs + c) * inv);
  }
}

}  // namespace

void l2pool_nhwc(const NhwcView& x, const NhwcView& y, int kernel, int stride, int pad,
                 int threads) {
  dispatch(x.type, [&](auto t) { l2pool<decltype(t)>(x, y, kernel, stride, pad, threads); });
}

void copy_centred_nhwc(const NhwcView& x, const NhwcView& y, int threads) {
  const int64_t top = (y.h - x.h) / 2, left = (y.w - x.w) / 2,
                es = static_cast<int64_t>(dtype_size(x.type));
  char* out = static_cast<char*>(y.data);
  const char* in = static_cast<const char*>(x.data);
#pragma omp parallel for collapse(2) num_threads(threads) schedule(static)
  for (int64_t n = 0; n < y.n; ++n)
    for (int64_t oy = 0; oy < y.h; ++oy)
      for (int64_t ox = 0; ox < y.w; ++ox) {
        const int64_t iy = oy - top, ix = ox - left;
        char* o = out + pixel(y, n, oy, ox) * es;
        if (iy < 0 || iy >= x.h || ix < 0 || ix >= x.w)
          std::memset(o, 0, y.c * es);
        else
          std::memcpy(o, in + pixel(x, n, iy, ix) * es, x.c * es);
      }
}

void add_padded_nhwc(const NhwcView& a, const NhwcView& b, bool relu, const NhwcView& y,
                     int threads) {
  dispatch(y.type, [&](auto t) { add_padded<decltype(t)>(a, b, relu, y, threads); });
}

void affine_nhwc(const NhwcView& x, const float* gamma, const float* beta, bool relu,
                 const NhwcView& y, int threads) {
  dispatch(x.type, [&](auto t) { affine<decltype(t)>(x, gamma, beta, relu, y, threads); });
}

void l2norm_rows(const NhwcView& x, double eps, float* y, int threads) {
  dispatch(x.type, [&](auto t) { l2norm<decltype(t)>(x, eps, y, threads); });
}

}  // namespace facenet
