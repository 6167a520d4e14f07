// Fast CPU ops over the planar-batch (CNHW) layout: im2col + OpenBLAS SGEMM for convolution
// and dense layers, OpenMP over planes/rows for everything else.
#include "engine/cpu_ops.h"

#include "engine/blas.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace facenet {

namespace {

// col[(ci*k + ky)*k + kx][img*Ho*Wo + oy*Wo + ox] = x[ci][img][oy*s - p + ky][ox*s - p + kx]
// (zero outside the image). One row per (ci, ky, kx); rows are independent.
void im2col(const float* x, const PlanarDims& d, int k, int s, int p, int64_t ho, int64_t wo,
            float* col) {
  const int64_t rows = d.c * k * k;
  const int64_t row_len = d.n * ho * wo;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t ci = r / (k * k), ky = (r / k) % k, kx = r % k;
    float* dst = col + r * row_len;
    // Output columns whose input column is inside the image: ox in [ox_lo, ox_hi).
    const int64_t ox_lo = std::max<int64_t>(0, (p - kx + s - 1) / s);
    const int64_t last = d.w - 1 + p - kx;  // ox*s <= last
    const int64_t ox_hi = last < 0 ? 0 : std::min<int64_t>(last / s + 1, wo);
    for (int64_t img = 0; img < d.n; ++img) {
      const float* plane = x + (ci * d.n + img) * d.plane();
      for (int64_t oy = 0; oy < ho; ++oy, dst += wo) {
        const int64_t iy = oy * s - p + ky;
        if (iy < 0 || iy >= d.h || ox_lo >= ox_hi) {
          std::fill(dst, dst + wo, 0.0f);
          continue;
        }
        const float* src = plane + iy * d.w - p + kx;
        std::fill(dst, dst + ox_lo, 0.0f);
        if (s == 1) {
          std::memcpy(dst + ox_lo, src + ox_lo, (ox_hi - ox_lo) * sizeof(float));
        } else {
          for (int64_t ox = ox_lo; ox < ox_hi; ++ox) dst[ox] = src[ox * s];
        }
        std::fill(dst + ox_hi, dst + wo, 0.0f);
      }
    }
  }
}

void add_bias(float* y, int64_t rows, int64_t cols, const float* bias, bool relu) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    float* row = y + r * cols;
    const float b = bias[r];
    if (relu) {
      for (int64_t i = 0; i < cols; ++i) row[i] = std::max(row[i] + b, 0.0f);
    } else {
      for (int64_t i = 0; i < cols; ++i) row[i] += b;
    }
  }
}

}  // namespace

void conv_gemm(const float* x, const PlanarDims& d, const float* w, const float* bias, int out,
               int kernel, int stride, int pad, bool relu, float* y, std::vector<float>& col) {
  const int64_t ho = (d.h + 2 * pad - kernel) / stride + 1;
  const int64_t wo = (d.w + 2 * pad - kernel) / stride + 1;
  const int64_t K = d.c * kernel * kernel;
  const int64_t N = d.n * ho * wo;
  const float* b_mat = x;
  if (!(kernel == 1 && stride == 1 && pad == 0)) {
    if (static_cast<int64_t>(col.size()) < K * N) col.resize(K * N);
    im2col(x, d, kernel, stride, pad, ho, wo, col.data());
    b_mat = col.data();
  }
  parallel_sgemm(out, N, K, w, K, b_mat, N, y, N);
  add_bias(y, out, N, bias, relu);
}

namespace {

template <PoolKind K>
inline float pool_init() {
  return K == PoolKind::max ? -std::numeric_limits<float>::infinity() : 0.0f;
}
template <PoolKind K>
inline float pool_add(float acc, float v) {  // the horizontal pass sees raw inputs
  return K == PoolKind::max ? std::max(acc, v) : acc + (K == PoolKind::l2 ? v * v : v);
}
template <PoolKind K>
inline float pool_merge(float acc, float partial) {  // the vertical pass sees partials
  return K == PoolKind::max ? std::max(acc, partial) : acc + partial;
}

// Separable pooling of one plane: a horizontal pass reduces each input row over the window
// columns into rows[h][wo], then a vertical pass reduces those over the window rows, so each
// output costs 2k instead of k^2 steps and the vertical pass runs along contiguous rows.
// Padded cells are skipped (max: they never win; sums: they add zero).
template <PoolKind K>
void pool_plane(const float* src, int64_t h, int64_t w, int kernel, int stride, int pad, int64_t ho,
                int64_t wo, float* rows, float* dst) {
  for (int64_t iy = 0; iy < h; ++iy)
    for (int64_t ox = 0; ox < wo; ++ox) {
      const int64_t x0 = std::max<int64_t>(0, ox * stride - pad);
      const int64_t x1 = std::min<int64_t>(w, ox * stride - pad + kernel);
      float acc = pool_init<K>();
      for (int64_t ix = x0; ix < x1; ++ix) acc = pool_add<K>(acc, src[iy * w + ix]);
      rows[iy * wo + ox] = acc;
    }
  const float inv_area = 1.0f / static_cast<float>(kernel * kernel);
  for (int64_t oy = 0; oy < ho; ++oy) {
    const int64_t y0 = std::max<int64_t>(0, oy * stride - pad);
    const int64_t y1 = std::min<int64_t>(h, oy * stride - pad + kernel);
    float* out = dst + oy * wo;
    for (int64_t ox = 0; ox < wo; ++ox) out[ox] = pool_init<K>();
    for (int64_t iy = y0; iy < y1; ++iy)
      for (int64_t ox = 0; ox < wo; ++ox) out[ox] = pool_merge<K>(out[ox], rows[iy * wo + ox]);
    if (K == PoolKind::avg)
      for (int64_t ox = 0; ox < wo; ++ox) out[ox] *= inv_area;
    if (K == PoolKind::l2)
      for (int64_t ox = 0; ox < wo; ++ox) out[ox] = std::sqrt(out[ox]);
  }
}

template <PoolKind K>
void pool_all(const float* x, int64_t planes, int64_t h, int64_t w, int kernel, int stride, int pad,
              float* y) {
  const int64_t ho = (h + 2 * pad - kernel) / stride + 1;
  const int64_t wo = (w + 2 * pad - kernel) / stride + 1;
#pragma omp parallel
  {
    std::vector<float> rows(h * wo);
#pragma omp for schedule(static)
    for (int64_t pl = 0; pl < planes; ++pl)
      pool_plane<K>(x + pl * h * w, h, w, kernel, stride, pad, ho, wo, rows.data(),
                    y + pl * ho * wo);
  }
}

}  // namespace

void pool_planes(const float* x, int64_t planes, int64_t h, int64_t w, int kernel, int stride,
                 int pad, PoolKind kind, float* y) {
  switch (kind) {
    case PoolKind::max:
      return pool_all<PoolKind::max>(x, planes, h, w, kernel, stride, pad, y);
    case PoolKind::avg:
      return pool_all<PoolKind::avg>(x, planes, h, w, kernel, stride, pad, y);
    case PoolKind::l2:
      return pool_all<PoolKind::l2>(x, planes, h, w, kernel, stride, pad, y);
  }
}

void lrn_channels(const float* x, int64_t channels, int64_t per_channel, int size, float alpha,
                  float beta, float k, float* y) {
  const int64_t half = size / 2;
  const float scale = alpha / static_cast<float>(size);
  // Blocks of positions per thread; within a block, a running window sum over channels.
  constexpr int64_t kBlock = 256;
  const int64_t blocks = (per_channel + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t i0 = blk * kBlock, len = std::min(kBlock, per_channel - i0);
    float sum[kBlock];
    std::fill(sum, sum + len, 0.0f);
    for (int64_t j = 0; j < std::min(half, channels); ++j) {
      const float* xj = x + j * per_channel + i0;
      for (int64_t i = 0; i < len; ++i) sum[i] += xj[i] * xj[i];
    }
    for (int64_t c = 0; c < channels; ++c) {
      if (c + half < channels) {  // channel entering the window
        const float* xj = x + (c + half) * per_channel + i0;
        for (int64_t i = 0; i < len; ++i) sum[i] += xj[i] * xj[i];
      }
      const float* xc = x + c * per_channel + i0;
      float* yc = y + c * per_channel + i0;
      if (beta == 0.75f) {  // the nets' value: t^-0.75 = 1 / (sqrt(t) * sqrt(sqrt(t))), no pow
        for (int64_t i = 0; i < len; ++i) {
          const float r = std::sqrt(k + scale * sum[i]);
          yc[i] = xc[i] / (r * std::sqrt(r));
        }
      } else {
        for (int64_t i = 0; i < len; ++i) yc[i] = xc[i] * std::pow(k + scale * sum[i], -beta);
      }
      if (c - half >= 0) {  // channel leaving the window
        const float* xj = x + (c - half) * per_channel + i0;
        for (int64_t i = 0; i < len; ++i) sum[i] -= xj[i] * xj[i];
      }
    }
  }
}

void copy_centred(const float* x, int64_t planes, int64_t h, int64_t w, float* y, int64_t H,
                  int64_t W) {
  const int64_t top = (H - h) / 2, left = (W - w) / 2;
#pragma omp parallel for schedule(static)
  for (int64_t pl = 0; pl < planes; ++pl) {
    float* dst = y + pl * H * W;
    std::fill(dst, dst + H * W, 0.0f);
    for (int64_t r = 0; r < h; ++r)
      std::memcpy(dst + (r + top) * W + left, x + (pl * h + r) * w, w * sizeof(float));
  }
}

// F(2x2, 3x3) (Lavin & Gray 2015): for a 4x4 input tile d and 3x3 filter g the 2x2 output is
// A^T [(G g G^T) .* (B^T d B)] A with
//   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1],
//   A^T = [1 1 1 0; 0 1 -1 -1].
std::vector<float> winograd_weights(const float* w, int out, int in) {
  std::vector<float> u(16 * static_cast<size_t>(out) * in);
  for (int o = 0; o < out; ++o)
    for (int c = 0; c < in; ++c) {
      const float* g = w + (static_cast<int64_t>(o) * in + c) * 9;
      float t[4][3];  // G g
      for (int j = 0; j < 3; ++j) {
        t[0][j] = g[j];
        t[1][j] = 0.5f * (g[j] + g[3 + j] + g[6 + j]);
        t[2][j] = 0.5f * (g[j] - g[3 + j] + g[6 + j]);
        t[3][j] = g[6 + j];
      }
      for (int i = 0; i < 4; ++i) {  // (G g) G^T
        const float r[4] = {t[i][0], 0.5f * (t[i][0] + t[i][1] + t[i][2]),
                            0.5f * (t[i][0] - t[i][1] + t[i][2]), t[i][2]};
        for (int j = 0; j < 4; ++j) u[((i * 4 + j) * static_cast<size_t>(out) + o) * in + c] = r[j];
      }
    }
  return u;
}

void conv_winograd_3x3(const float* x, const PlanarDims& d, const float* u, const float* bias,
                       int out, bool relu, float* y, std::vector<float>& scratch) {
  const int64_t th = (d.h + 1) / 2, tw = (d.w + 1) / 2, tiles = d.n * th * tw;
  const int64_t in_size = 16 * d.c * tiles, out_size = 16 * static_cast<int64_t>(out) * tiles;
  if (static_cast<int64_t>(scratch.size()) < in_size + out_size) scratch.resize(in_size + out_size);
  float* v = scratch.data();            // [16][C][tiles]: B^T d B per input tile
  float* m = scratch.data() + in_size;  // [16][O][tiles]: the 16 products
  // Input transform, one row of tiles at a time: tile (ty, tx) reads rows 2ty-1 .. 2ty+2 and
  // columns 2tx-1 .. 2tx+2, gathered once into zero-padded rows; the 16 transformed values of
  // consecutive tiles are contiguous in each of the 16 matrices, so they are written as rows.
  const int64_t pw = 2 * tw + 2;  // padded row width
#pragma omp parallel
  {
    std::vector<float> rows(4 * pw), local(16 * tw);
#pragma omp for schedule(static)
    for (int64_t ci = 0; ci < d.c * d.n; ++ci) {
      const int64_t c = ci / d.n, img = ci % d.n;
      const float* plane = x + ci * d.plane();
      for (int64_t ty = 0; ty < th; ++ty) {
        for (int i = 0; i < 4; ++i) {
          float* row = rows.data() + i * pw;
          const int64_t iy = 2 * ty - 1 + i;
          std::fill(row, row + pw, 0.f);
          if (iy >= 0 && iy < d.h) std::memcpy(row + 1, plane + iy * d.w, d.w * sizeof(float));
        }
        for (int64_t tx = 0; tx < tw; ++tx) {
          float r[4][4];  // B^T t, t = the 4x4 tile
          for (int j = 0; j < 4; ++j) {
            const float t0 = rows[0 * pw + 2 * tx + j], t1 = rows[1 * pw + 2 * tx + j];
            const float t2 = rows[2 * pw + 2 * tx + j], t3 = rows[3 * pw + 2 * tx + j];
            r[0][j] = t0 - t2;
            r[1][j] = t1 + t2;
            r[2][j] = t2 - t1;
            r[3][j] = t1 - t3;
          }
          for (int i = 0; i < 4; ++i) {  // (B^T t) B
            local[(i * 4 + 0) * tw + tx] = r[i][0] - r[i][2];
            local[(i * 4 + 1) * tw + tx] = r[i][1] + r[i][2];
            local[(i * 4 + 2) * tw + tx] = r[i][2] - r[i][1];
            local[(i * 4 + 3) * tw + tx] = r[i][1] - r[i][3];
          }
        }
        const int64_t tile0 = (img * th + ty) * tw;
        for (int xi = 0; xi < 16; ++xi)
          std::memcpy(v + (xi * d.c + c) * tiles + tile0, local.data() + xi * tw,
                      tw * sizeof(float));
      }
    }
  }
  for (int xi = 0; xi < 16; ++xi)
    parallel_sgemm(out, tiles, d.c, u + static_cast<int64_t>(xi) * out * d.c, d.c,
                   v + xi * d.c * tiles, tiles, m + static_cast<int64_t>(xi) * out * tiles, tiles);
    // Output transform A^T M A, bias, ReLU, cropped at the right/bottom edge; one row of tiles
    // at a time so each of the 16 products is read contiguously.
#pragma omp parallel for schedule(static)
  for (int64_t oi = 0; oi < out * d.n; ++oi) {
    const int64_t o = oi / d.n, img = oi % d.n;
    float* plane = y + oi * d.plane();
    const float b = bias[o];
    for (int64_t ty = 0; ty < th; ++ty) {
      const float* p[16];
      for (int k = 0; k < 16; ++k) p[k] = m + (k * out + o) * tiles + (img * th + ty) * tw;
      float* row0 = plane + 2 * ty * d.w;
      float* row1 = 2 * ty + 1 < d.h ? row0 + d.w : nullptr;
      for (int64_t tx = 0; tx < tw; ++tx) {
        float r[2][4];  // A^T p
        for (int j = 0; j < 4; ++j) {
          r[0][j] = p[j][tx] + p[4 + j][tx] + p[8 + j][tx];
          r[1][j] = p[4 + j][tx] - p[8 + j][tx] - p[12 + j][tx];
        }
        const int64_t ox = 2 * tx;
        for (int i = 0; i < 2; ++i) {
          float* row = i == 0 ? row0 : row1;
          if (!row) break;
          float v0 = r[i][0] + r[i][1] + r[i][2] + b, v1 = r[i][1] - r[i][2] - r[i][3] + b;
          if (relu) {
            v0 = std::max(v0, 0.0f);
            v1 = std::max(v1, 0.0f);
          }
          row[ox] = v0;
          if (ox + 1 < d.w) row[ox + 1] = v1;
        }
      }
    }
  }
}

void dense_gemm(const float* x, int64_t in, int64_t n, const float* w, const float* b, int64_t out,
                float* y) {
  parallel_sgemm(out, n, in, w, in, x, n, y, n);
  add_bias(y, out, n, b, false);
}

void l2norm_columns(const float* x, int64_t d, int64_t n, double eps, float* y) {
  for (int64_t j = 0; j < n; ++j) {
    double ss = 0.0;
    for (int64_t i = 0; i < d; ++i) ss += static_cast<double>(x[i * n + j]) * x[i * n + j];
    const float inv = static_cast<float>(1.0 / std::sqrt(std::max(ss, eps)));
    for (int64_t i = 0; i < d; ++i) y[j * d + i] = x[i * n + j] * inv;
  }
}

void add_padded(const float* a, const PlanarDims& da, const float* b, const PlanarDims& db,
                bool relu, float* y) {
  const PlanarDims dy{std::max(da.c, db.c), da.n, std::max(da.h, db.h), std::max(da.w, db.w)};
  const float floor = relu ? 0.0f : -std::numeric_limits<float>::infinity();
  if (da.c == db.c && da.h == db.h && da.w == db.w) {
    const int64_t size = dy.size();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < size; ++i) y[i] = std::max(a[i] + b[i], floor);
    return;
  }
  // Element (c, img, r, col) of a tensor with dims d, or 0 outside it.
  auto value = [](const float* t, const PlanarDims& d, int64_t c, int64_t img, int64_t r,
                  int64_t col) {
    return c < d.c && r < d.h && col < d.w ? t[((c * d.n + img) * d.h + r) * d.w + col] : 0.0f;
  };
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t c = 0; c < dy.c; ++c)
    for (int64_t img = 0; img < dy.n; ++img) {
      float* dst = y + (c * dy.n + img) * dy.plane();
      for (int64_t r = 0; r < dy.h; ++r)
        for (int64_t col = 0; col < dy.w; ++col)
          dst[r * dy.w + col] =
              std::max(value(a, da, c, img, r, col) + value(b, db, c, img, r, col), floor);
    }
}

void affine_channels(const float* x, int64_t channels, int64_t per_channel, const float* gamma,
                     const float* beta, float* y) {
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t i = 0; i < per_channel; ++i)
      y[c * per_channel + i] = gamma[c] * x[c * per_channel + i] + beta[c];
}

void nchw_to_cnhw(const float* x, int64_t n, int64_t c, int64_t hw, float* y) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t i = 0; i < n; ++i)
    for (int64_t ch = 0; ch < c; ++ch)
      std::memcpy(y + (ch * n + i) * hw, x + (i * c + ch) * hw, hw * sizeof(float));
}

void cnhw_to_nchw(const float* x, int64_t n, int64_t c, int64_t hw, float* y) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t i = 0; i < n; ++i)
    for (int64_t ch = 0; ch < c; ++ch)
      std::memcpy(y + (i * c + ch) * hw, x + (ch * n + i) * hw, hw * sizeof(float));
}

void fold_batchnorm(std::vector<float>& w, std::vector<float>& b, int64_t per_out,
                    const float* gamma, const float* beta, const float* mean, const float* var,
                    double eps) {
  const int64_t out = static_cast<int64_t>(b.size());
  for (int64_t o = 0; o < out; ++o) {
    const double scale = gamma[o] / std::sqrt(static_cast<double>(var[o]) + eps);
    for (int64_t i = 0; i < per_out; ++i)
      w[o * per_out + i] = static_cast<float>(w[o * per_out + i] * scale);
    b[o] = static_cast<float>((b[o] - static_cast<double>(mean[o])) * scale + beta[o]);
  }
}

void fold_affine(std::vector<float>& w, std::vector<float>& b, int64_t per_out, const float* gamma,
                 const float* beta) {
  const int64_t out = static_cast<int64_t>(b.size());
  for (int64_t o = 0; o < out; ++o) {
    for (int64_t i = 0; i < per_out; ++i) w[o * per_out + i] *= gamma[o];
    b[o] = b[o] * gamma[o] + beta[o];
  }
}

}  // namespace facenet
