// NHWC float32/bfloat16 ops of the CPU backend (nhwc_ops.h). Arithmetic is float32 (double
// for the L2 norm's sum); bfloat16 values are widened on load and rounded on store.
#include "engine/backend/cpu/nhwc_ops.h"

#include <algorithm>
#include <cmath>

namespace facenet {

namespace {

struct Acc {
  const NhwcView& v;
  int64_t index(int64_t n, int64_t y, int64_t x, int64_t c) const {
    return ((n * v.h + y) * v.w + x) * v.cs + c;
  }
  float load(int64_t i) const {
    return v.type == ActType::f32 ? static_cast<const float*>(v.data)[i]
                                  : bf16_to_float(static_cast<const uint16_t*>(v.data)[i]);
  }
  void store(int64_t i, float f) const {
    if (v.type == ActType::f32)
      static_cast<float*>(v.data)[i] = f;
    else
      static_cast<uint16_t*>(v.data)[i] = float_to_bf16(f);
  }
};

}  // namespace

void l2pool_nhwc(const NhwcView& x, const NhwcView& y, int kernel, int stride, int pad,
                 int threads) {
  const Acc in{x}, out{y};
#pragma omp parallel for collapse(2) num_threads(threads) schedule(static)
  for (int64_t n = 0; n < y.n; ++n)
    for (int64_t oy = 0; oy < y.h; ++oy)
      for (int64_t ox = 0; ox < y.w; ++ox)
        for (int64_t c = 0; c < y.c; ++c) {
          float sum = 0;
          for (int ky = 0; ky < kernel; ++ky) {
            const int64_t iy = oy * stride - pad + ky;
            if (iy < 0 || iy >= x.h) continue;
            for (int kx = 0; kx < kernel; ++kx) {
              const int64_t ix = ox * stride - pad + kx;
              if (ix < 0 || ix >= x.w) continue;
              const float v = in.load(in.index(n, iy, ix, c));
              sum += v * v;
            }
          }
          out.store(out.index(n, oy, ox, c), std::sqrt(sum));
        }
}

void copy_centred_nhwc(const NhwcView& x, const NhwcView& y, int threads) {
  const Acc in{x}, out{y};
  const int64_t top = (y.h - x.h) / 2, left = (y.w - x.w) / 2, es = act_size(x.type);
  const bool same_type = x.type == y.type;
#pragma omp parallel for collapse(2) num_threads(threads) schedule(static)
  for (int64_t n = 0; n < y.n; ++n)
    for (int64_t oy = 0; oy < y.h; ++oy)
      for (int64_t ox = 0; ox < y.w; ++ox) {
        const int64_t iy = oy - top, ix = ox - left, o = out.index(n, oy, ox, 0);
        if (iy < 0 || iy >= x.h || ix < 0 || ix >= x.w) {
          std::memset(static_cast<char*>(y.data) + o * act_size(y.type), 0, y.c * act_size(y.type));
          continue;
        }
        const int64_t i = in.index(n, iy, ix, 0);
        if (same_type) {
          std::memcpy(static_cast<char*>(y.data) + o * es,
                      static_cast<const char*>(x.data) + i * es, x.c * es);
        } else {
          for (int64_t c = 0; c < x.c; ++c) out.store(o + c, in.load(i + c));
        }
      }
}

void add_padded_nhwc(const NhwcView& a, const NhwcView& b, bool relu, const NhwcView& y,
                     int threads) {
  const Acc ia{a}, ib{b}, out{y};
#pragma omp parallel for collapse(2) num_threads(threads) schedule(static)
  for (int64_t n = 0; n < y.n; ++n)
    for (int64_t oy = 0; oy < y.h; ++oy)
      for (int64_t ox = 0; ox < y.w; ++ox) {
        const bool in_a = oy < a.h && ox < a.w, in_b = oy < b.h && ox < b.w;
        const int64_t pa = in_a ? ia.index(n, oy, ox, 0) : 0,
                      pb = in_b ? ib.index(n, oy, ox, 0) : 0;
        const int64_t o = out.index(n, oy, ox, 0);
        for (int64_t c = 0; c < y.c; ++c) {
          float v = (in_a && c < a.c ? ia.load(pa + c) : 0.0f) +
                    (in_b && c < b.c ? ib.load(pb + c) : 0.0f);
          if (relu) v = std::max(v, 0.0f);
          out.store(o + c, v);
        }
      }
}

void affine_nhwc(const NhwcView& x, const float* gamma, const float* beta, bool relu,
                 const NhwcView& y, int threads) {
  const Acc in{x}, out{y};
  const int64_t pixels = x.pixels();
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t p = 0; p < pixels; ++p) {
    const int64_t i = p * x.cs, o = p * y.cs;
    for (int64_t c = 0; c < x.c; ++c) {
      float v = gamma[c] * in.load(i + c) + beta[c];
      if (relu) v = std::max(v, 0.0f);
      out.store(o + c, v);
    }
  }
}

void l2norm_rows(const NhwcView& x, double eps, float* y, int threads) {
  const Acc in{x};
  const int64_t d = x.c * x.h * x.w;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t n = 0; n < x.n; ++n) {
    // Output in CHW order (the reference's flattening); for 1x1 maps the same as NHWC.
    double sum = 0;
    for (int64_t p = 0; p < x.h * x.w; ++p)
      for (int64_t c = 0; c < x.c; ++c) {
        const double v = in.load(in.index(n, 0, p, c));
        sum += v * v;
      }
    const double inv = 1.0 / std::sqrt(std::max(sum, eps));
    for (int64_t p = 0; p < x.h * x.w; ++p)
      for (int64_t c = 0; c < x.c; ++c)
        y[n * d + c * x.h * x.w + p] = static_cast<float>(in.load(in.index(n, 0, p, c)) * inv);
  }
}

}  // namespace facenet
