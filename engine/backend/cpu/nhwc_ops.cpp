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

std::vector<float> pack_single_conv_weights(const float* w, int64_t c, int kernel, int64_t cs) {
  std::vector<float> packed(static_cast<size_t>(kernel) * kernel * cs, 0.f);
  for (int64_t ch = 0; ch < c; ++ch)
    for (int ky = 0; ky < kernel; ++ky)
      for (int kx = 0; kx < kernel; ++kx)
        packed[(ky * kernel + kx) * cs + ch] = w[(ch * kernel + ky) * kernel + kx];
  return packed;
}

namespace {

// Window-row dot products of `kBlock` neighbouring outputs at once, 16 lanes each: independent
// accumulators keep the FMA pipes busy (one accumulator waits on its own latency). `a` points
// at the first output's window row start; outputs are `cs` floats apart; len % 16 == 0.
constexpr int kBlock = 4;
inline void dot_block(const float* a, const float* b, int64_t len, int64_t cs, float* acc) {
  for (int64_t j = 0; j < len; j += 16)
    for (int o = 0; o < kBlock; ++o) {
      const float* ao = a + o * cs + j;
      float* ac = acc + o * 16;
#pragma omp simd
      for (int l = 0; l < 16; ++l) ac[l] += ao[l] * b[j + l];
    }
}

}  // namespace

void conv_single_nhwc(const NhwcView& x, const float* w, float bias, int kernel, int pad, bool relu,
                      const NhwcView& y, int threads) {
  const int64_t H = x.h, W = x.w, cs = x.cs, OH = y.h, OW = y.w;
  const float* in = static_cast<const float*>(x.data);
  float* out = static_cast<float*>(y.data);
  auto finish = [&](float acc) { return relu && acc < 0.f ? 0.f : acc; };
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
  for (int64_t i = 0; i < x.n; ++i)
    for (int64_t oy = 0; oy < OH; ++oy) {
      const float* img = in + i * H * W * cs;
      float* row = out + ((i * OH + oy) * OW) * y.cs;
      int64_t ox = 0;
      // Outputs whose window lies inside the map's columns, kBlock at a time.
      if (cs % 16 == 0)
        for (ox = pad; ox + kBlock <= std::min<int64_t>(OW, W - kernel + pad + 1); ox += kBlock) {
          alignas(64) float acc[kBlock * 16] = {};
          for (int ky = 0; ky < kernel; ++ky) {
            const int64_t iy = oy + ky - pad;
            if (iy < 0 || iy >= H) continue;
            dot_block(img + (iy * W + ox - pad) * cs, w + ky * kernel * cs, kernel * cs, cs, acc);
          }
          for (int o = 0; o < kBlock; ++o) {
            float sum = 0.f;
            for (int l = 0; l < 16; ++l) sum += acc[o * 16 + l];
            row[(ox + o) * y.cs] = finish(sum + bias);
          }
        }
      // The rest (borders, or channels not a multiple of 16), one output at a time.
      const int64_t blocked_end = ox;
      const int64_t blocked_begin = cs % 16 == 0 ? pad : 0;
      for (int64_t c = 0; c < OW; ++c) {
        if (c >= blocked_begin && c < blocked_end) continue;
        const int64_t k0 = std::max<int64_t>(0, pad - c);
        const int64_t k1 = std::min<int64_t>(kernel, W - c + pad);
        const int64_t len = (k1 - k0) * cs;
        float acc = 0.f;
        for (int ky = 0; ky < kernel; ++ky) {
          const int64_t iy = oy + ky - pad;
          if (iy < 0 || iy >= H || len <= 0) continue;
          const float* a = img + (iy * W + c + k0 - pad) * cs;
          const float* b = w + (ky * kernel + k0) * cs;
#pragma omp simd reduction(+ : acc)
          for (int64_t j = 0; j < len; ++j) acc += a[j] * b[j];
        }
        row[c * y.cs] = finish(acc + bias);
      }
    }
}

}  // namespace facenet
