// The ops cuDNN lacks: pooling, LRN, centred copy, input conversion, fused head (Inception);
// affine and the zero-padding residual add (dlib's ResNet).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "engine/core/cuda_util.h"
#include "kernels/dtype_convert.cuh"
#include "kernels/inception_ops.h"
#include "kernels/launch.cuh"

namespace facenet {

TensorView4 packed_view(void* data, DType dtype, Layout layout, int64_t n, int64_t c, int64_t h,
                        int64_t w, int64_t c_total, int64_t c0) {
  TensorView4 v;
  v.dtype = dtype;
  v.n = n, v.c = c, v.h = h, v.w = w;
  v.sn = c_total * h * w;
  if (layout == Layout::kNchw) {
    v.sc = h * w, v.sh = w, v.sw = 1;
  } else {
    v.sc = 1, v.sh = w * c_total, v.sw = c_total;
  }
  v.data = static_cast<char*>(data) + c0 * v.sc * static_cast<int64_t>(dtype_size(dtype));
  return v;
}

namespace {

constexpr int kThreads = 256;

// Device-side copy of a TensorView4 without the host-only helpers.
struct View {
  int64_t n, c, h, w, sn, sc, sh, sw;
  bool channels_last;  // sc == 1: enumerate c fastest so that neighbouring threads coalesce
};

View device_view(const TensorView4& t) {
  return {t.n, t.c, t.h, t.w, t.sn, t.sc, t.sh, t.sw, t.sc == 1 && t.c > 1};
}

struct Index4 {
  int64_t n, c, h, w;
};

// Linear thread index -> logical (n, c, h, w), in the view's memory-friendly order.
__device__ __forceinline__ Index4 decompose(int64_t i, const View& v) {
  Index4 r;
  if (v.channels_last) {
    r.c = i % v.c, i /= v.c;
    r.w = i % v.w, i /= v.w;
    r.h = i % v.h, r.n = i / v.h;
  } else {
    r.w = i % v.w, i /= v.w;
    r.h = i % v.h, i /= v.h;
    r.c = i % v.c, r.n = i / v.c;
  }
  return r;
}

__device__ __forceinline__ int64_t offset(const View& v, int64_t n, int64_t c, int64_t h,
                                          int64_t w) {
  return n * v.sn + c * v.sc + h * v.sh + w * v.sw;
}

// Floor-mode output size of a k/s/p window (as graph.cpp's pooled_size; kernels/ does not
// link the engine).
int64_t window_output(int64_t in, int kernel, int stride, int pad) {
  return (in + 2 * pad - kernel) / stride + 1;
}

// ---- pooling ----------------------------------------------------------------------------
// x: (n, c, h, w) strided, y: (n, c, ho, wo) strided, same dtype. One thread owns one output
// element and reads its k x k window (clipped to the map; clipped cells are padding: they
// never win a max, count as zero for avg and l2). Accumulates in float.
template <typename T>
__global__ void pool2d_kernel(const T* __restrict__ x, View xv, T* __restrict__ y, View yv,
                              PoolKind kind, int kernel, int stride, int pad) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= yv.n * yv.c * yv.h * yv.w) return;
  const Index4 o = decompose(i, yv);
  const int64_t h0 = o.h * stride - pad, w0 = o.w * stride - pad;
  float acc = kind == PoolKind::kMax ? -INFINITY : 0.0f;
  for (int dy = 0; dy < kernel; ++dy) {
    const int64_t hh = h0 + dy;
    if (hh < 0 || hh >= xv.h) continue;
    for (int dx = 0; dx < kernel; ++dx) {
      const int64_t ww = w0 + dx;
      if (ww < 0 || ww >= xv.w) continue;
      const float v = to_float(x[offset(xv, o.n, o.c, hh, ww)]);
      if (kind == PoolKind::kMax)
        acc = fmaxf(acc, v);
      else
        acc += kind == PoolKind::kL2 ? v * v : v;
    }
  }
  if (kind == PoolKind::kAvg) acc /= static_cast<float>(kernel * kernel);
  if (kind == PoolKind::kL2) acc = sqrtf(acc);
  y[offset(yv, o.n, o.c, o.h, o.w)] = from_float<T>(acc);
}

// ---- LRN ---------------------------------------------------------------------------------
// x, y: (n, c, h, w) strided, same dtype and shape. One thread owns one output element and
// reads the <= size channel neighbours at its pixel (they are L1/L2 hits for its neighbours).
template <typename T>
__global__ void lrn_kernel(const T* __restrict__ x, View xv, T* __restrict__ y, View yv, int size,
                           float alpha_over_size, float beta, float k) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= yv.n * yv.c * yv.h * yv.w) return;
  const Index4 o = decompose(i, yv);
  const int64_t half = size / 2;
  const int64_t lo = o.c - half > 0 ? o.c - half : 0;
  const int64_t hi = o.c + half < xv.c - 1 ? o.c + half : xv.c - 1;
  float ss = 0.0f;
  for (int64_t j = lo; j <= hi; ++j) {
    const float v = to_float(x[offset(xv, o.n, j, o.h, o.w)]);
    ss += v * v;
  }
  const float v = to_float(x[offset(xv, o.n, o.c, o.h, o.w)]);
  y[offset(yv, o.n, o.c, o.h, o.w)] = from_float<T>(v * powf(k + alpha_over_size * ss, -beta));
}

// ---- centred copy ------------------------------------------------------------------------
// x: (n, c, h, w), y: (n, c, H, W), any dtypes/strides. One thread owns one element of y:
// the x element it maps to (shifted by floor((H-h)/2), floor((W-w)/2)) or zero on the border.
template <typename Tin, typename Tout>
__global__ void copy_centred_kernel(const Tin* __restrict__ x, View xv, Tout* __restrict__ y,
                                    View yv) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= yv.n * yv.c * yv.h * yv.w) return;
  const Index4 o = decompose(i, yv);
  const int64_t sh = o.h - (yv.h - xv.h) / 2, sw = o.w - (yv.w - xv.w) / 2;
  const bool inside = sh >= 0 && sh < xv.h && sw >= 0 && sw < xv.w;
  const float v = inside ? to_float(x[offset(xv, o.n, o.c, sh, sw)]) : 0.0f;
  y[offset(yv, o.n, o.c, o.h, o.w)] = from_float<Tout>(v);
}

// ---- input conversion --------------------------------------------------------------------
// bgr: n x h x w x 3 uint8, contiguous. y: (n, 3, h, w) strided. One thread owns one element
// of y and reads one byte. (v - mean) * scale is a subtract then a multiply (no FMA to
// contract), so fp32 results equal image_io's to the bit.
struct Normalise {
  float mean[3];
  float scale;
  bool rgb;
};

template <typename T>
__global__ void bgr8_to_input_kernel(const uint8_t* __restrict__ bgr, T* __restrict__ y, View yv,
                                     Normalise norm) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= yv.n * yv.c * yv.h * yv.w) return;
  const Index4 o = decompose(i, yv);
  const int64_t src_c = norm.rgb ? 2 - o.c : o.c;
  const uint8_t v = bgr[((o.n * yv.h + o.h) * yv.w + o.w) * 3 + src_c];
  y[offset(yv, o.n, o.c, o.h, o.w)] =
      from_float<T>((static_cast<float>(v) - norm.mean[o.c]) * norm.scale);
}

// ---- ResNet ops --------------------------------------------------------------------------
// x, y: (n, c, h, w) strided, same dtype and shape; gamma, beta: [c] float32. One thread owns
// one element. Math in fp32.
template <typename T>
__global__ void affine_kernel(const T* x, View xv, const float* __restrict__ gamma,
                              const float* __restrict__ beta, bool relu, T* y, View yv) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= yv.n * yv.c * yv.h * yv.w) return;
  const Index4 o = decompose(i, yv);
  float v = gamma[o.c] * to_float(x[offset(xv, o.n, o.c, o.h, o.w)]) + beta[o.c];
  if (relu) v = fmaxf(v, 0.0f);
  y[offset(yv, o.n, o.c, o.h, o.w)] = from_float<T>(v);
}

// a: (n, ca, ha, wa), b: (n, cb, hb, wb), y: (n, max ca/cb, max ha/hb, max wa/wb), all
// strided, same dtype. One thread owns one element of y and reads the a and b elements at the
// same (n, c, h, w) where they exist (0 elsewhere). Sum in fp32, rounded once to T.
template <typename T>
__global__ void add_padded_kernel(const T* __restrict__ a, View av, const T* __restrict__ b,
                                  View bv, bool relu, T* __restrict__ y, View yv) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= yv.n * yv.c * yv.h * yv.w) return;
  const Index4 o = decompose(i, yv);
  float v = 0.0f;
  if (o.c < av.c && o.h < av.h && o.w < av.w) v = to_float(a[offset(av, o.n, o.c, o.h, o.w)]);
  if (o.c < bv.c && o.h < bv.h && o.w < bv.w) v += to_float(b[offset(bv, o.n, o.c, o.h, o.w)]);
  if (relu) v = fmaxf(v, 0.0f);
  y[offset(yv, o.n, o.c, o.h, o.w)] = from_float<T>(v);
}

// ---- fused head --------------------------------------------------------------------------
// x: (n, c, h, w) strided; wt: [c][out] float32 (the dense weight transposed, so that the
// threads of a warp read consecutive outputs); b: [out]; y: n x out float32.
// One block owns kHeadImages images: it averages their c channels into shared memory, then
// thread t computes outputs t, t+blockDim, ... for all of them at once (each weight read once
// per block, not once per image), then one warp per image reduces |e|^2 and normalises.
constexpr int kHeadImages = 8;
constexpr int kHeadThreads = 256;

template <typename T>
__global__ void pooled_dense_head_kernel(const T* __restrict__ x, View xv,
                                         const float* __restrict__ wt, const float* __restrict__ b,
                                         int out, bool l2norm, float eps, float* __restrict__ y) {
  extern __shared__ float smem[];
  float* pooled = smem;                    // [kHeadImages][c]
  float* emb = smem + kHeadImages * xv.c;  // [kHeadImages][out]
  const int64_t img0 = static_cast<int64_t>(blockIdx.x) * kHeadImages;
  const int images = static_cast<int>(xv.n - img0 < kHeadImages ? xv.n - img0 : kHeadImages);
  const float inv_area = 1.0f / static_cast<float>(xv.h * xv.w);
  for (int64_t i = threadIdx.x; i < images * xv.c; i += blockDim.x) {
    const int64_t m = i / xv.c, c = i % xv.c;
    float s = 0.0f;
    for (int64_t hh = 0; hh < xv.h; ++hh)
      for (int64_t ww = 0; ww < xv.w; ++ww) s += to_float(x[offset(xv, img0 + m, c, hh, ww)]);
    pooled[m * xv.c + c] = s * inv_area;
  }
  __syncthreads();
  for (int o = threadIdx.x; o < out; o += blockDim.x) {
    float acc[kHeadImages];
    for (int m = 0; m < kHeadImages; ++m) acc[m] = b[o];
    for (int64_t c = 0; c < xv.c; ++c) {
      const float wv = wt[c * out + o];
#pragma unroll
      for (int m = 0; m < kHeadImages; ++m) acc[m] += wv * pooled[m * xv.c + c];
    }
    for (int m = 0; m < images; ++m) emb[m * out + o] = acc[m];
  }
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  for (int m = warp; m < images; m += warps) {
    float ss = 0.0f;
    for (int o = lane; o < out; o += 32) ss += emb[m * out + o] * emb[m * out + o];
    for (int d = 16; d > 0; d /= 2) ss += __shfl_xor_sync(0xffffffffu, ss, d);
    const float scale = l2norm ? rsqrtf(fmaxf(ss, eps)) : 1.0f;
    for (int o = lane; o < out; o += 32) y[(img0 + m) * out + o] = emb[m * out + o] * scale;
  }
}

}  // namespace

// ---- launchers: validate -> sizes -> grid -> launch -> check -----------------------------

void launch_pool2d(const TensorView4& x, const TensorView4& y, PoolKind kind, int kernel,
                   int stride, int pad, cudaStream_t stream) {
  const char* what = "launch_pool2d";
  check_arg(x.dtype == y.dtype, what, "x and y must share a dtype");
  check_arg(x.n == y.n && x.c == y.c, what, "x and y must agree in n and c");
  check_arg(kernel >= 1 && stride >= 1 && pad >= 0 && pad < kernel, what, "bad window (kernel ",
            kernel, ", stride ", stride, ", pad ", pad, ")");
  check_arg(y.h == window_output(x.h, kernel, stride, pad) &&
                y.w == window_output(x.w, kernel, stride, pad),
            what, "y's size is not the pooled size of x");
  const int64_t count = y.count();
  if (count == 0) return;
  const unsigned grid = blocks_for(count, kThreads);
  dispatch_dtype(x.dtype, what, [&](auto t) {
    using T = decltype(t);
    pool2d_kernel<T><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(x.data), device_view(x),
                                                    static_cast<T*>(y.data), device_view(y), kind,
                                                    kernel, stride, pad);
  });
  FN_LAUNCH_CHECK("pool2d_kernel");
}

void launch_lrn(const TensorView4& x, const TensorView4& y, int size, float alpha, float beta,
                float k, cudaStream_t stream) {
  const char* what = "launch_lrn";
  check_arg(x.dtype == y.dtype, what, "x and y must share a dtype");
  check_arg(x.n == y.n && x.c == y.c && x.h == y.h && x.w == y.w, what, "x and y shapes differ");
  check_arg(size >= 1, what, "size = ", size, " must be >= 1");
  const int64_t count = y.count();
  if (count == 0) return;
  const unsigned grid = blocks_for(count, kThreads);
  dispatch_dtype(x.dtype, what, [&](auto t) {
    using T = decltype(t);
    lrn_kernel<T><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(x.data), device_view(x),
                                                 static_cast<T*>(y.data), device_view(y), size,
                                                 alpha / static_cast<float>(size), beta, k);
  });
  FN_LAUNCH_CHECK("lrn_kernel");
}

void launch_copy_centred(const TensorView4& x, const TensorView4& y, cudaStream_t stream) {
  const char* what = "launch_copy_centred";
  check_arg(x.n == y.n && x.c == y.c, what, "x and y must agree in n and c");
  check_arg(y.h >= x.h && y.w >= x.w, what, "y is smaller than x");
  const int64_t count = y.count();
  if (count == 0) return;
  const unsigned grid = blocks_for(count, kThreads);
  dispatch_dtype(x.dtype, what, [&](auto tin) {
    dispatch_dtype(y.dtype, what, [&](auto tout) {
      using Tin = decltype(tin);
      using Tout = decltype(tout);
      copy_centred_kernel<Tin, Tout>
          <<<grid, kThreads, 0, stream>>>(static_cast<const Tin*>(x.data), device_view(x),
                                          static_cast<Tout*>(y.data), device_view(y));
    });
  });
  FN_LAUNCH_CHECK("copy_centred_kernel");
}

void launch_bgr8_to_input(const uint8_t* bgr, const TensorView4& y, const float mean[3],
                          float scale, bool rgb, cudaStream_t stream) {
  const char* what = "launch_bgr8_to_input";
  check_not_null(bgr, what, "bgr");
  check_not_null(mean, what, "mean");
  check_arg(y.c == 3, what, "y has ", y.c, " channels, expected 3");
  const int64_t count = y.count();
  if (count == 0) return;
  const Normalise norm{{mean[0], mean[1], mean[2]}, scale, rgb};
  const unsigned grid = blocks_for(count, kThreads);
  dispatch_dtype(y.dtype, what, [&](auto t) {
    using T = decltype(t);
    bgr8_to_input_kernel<T>
        <<<grid, kThreads, 0, stream>>>(bgr, static_cast<T*>(y.data), device_view(y), norm);
  });
  FN_LAUNCH_CHECK("bgr8_to_input_kernel");
}

void launch_affine(const TensorView4& x, const float* gamma, const float* beta, bool relu,
                   const TensorView4& y, cudaStream_t stream) {
  const char* what = "launch_affine";
  check_not_null(gamma, what, "gamma");
  check_not_null(beta, what, "beta");
  check_arg(x.dtype == y.dtype, what, "x and y must share a dtype");
  check_arg(x.n == y.n && x.c == y.c && x.h == y.h && x.w == y.w, what, "x and y shapes differ");
  const int64_t count = y.count();
  if (count == 0) return;
  const unsigned grid = blocks_for(count, kThreads);
  dispatch_dtype(x.dtype, what, [&](auto t) {
    using T = decltype(t);
    affine_kernel<T><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(x.data), device_view(x),
                                                    gamma, beta, relu, static_cast<T*>(y.data),
                                                    device_view(y));
  });
  FN_LAUNCH_CHECK("affine_kernel");
}

void launch_add_padded(const TensorView4& a, const TensorView4& b, bool relu, const TensorView4& y,
                       cudaStream_t stream) {
  const char* what = "launch_add_padded";
  check_arg(a.dtype == y.dtype && b.dtype == y.dtype, what, "a, b and y must share a dtype");
  check_arg(a.n == y.n && b.n == y.n, what, "a, b and y must agree in n");
  check_arg(y.c == std::max(a.c, b.c) && y.h == std::max(a.h, b.h) && y.w == std::max(a.w, b.w),
            what, "y's extent must be the larger of a's and b's on every axis");
  const int64_t count = y.count();
  if (count == 0) return;
  const unsigned grid = blocks_for(count, kThreads);
  dispatch_dtype(y.dtype, what, [&](auto t) {
    using T = decltype(t);
    add_padded_kernel<T><<<grid, kThreads, 0, stream>>>(
        static_cast<const T*>(a.data), device_view(a), static_cast<const T*>(b.data),
        device_view(b), relu, static_cast<T*>(y.data), device_view(y));
  });
  FN_LAUNCH_CHECK("add_padded_kernel");
}

void launch_pooled_dense_head(const TensorView4& x, const float* wt, const float* b, int out,
                              bool l2norm, float eps, float* y, cudaStream_t stream) {
  const char* what = "launch_pooled_dense_head";
  check_not_null(wt, what, "wt");
  check_not_null(b, what, "b");
  check_not_null(y, what, "y");
  check_arg(out >= 1, what, "out = ", out, " must be >= 1");
  // Pooled channels and outputs of kHeadImages images.
  const std::size_t smem = sizeof(float) * kHeadImages * static_cast<std::size_t>(x.c + out);
  if (x.n == 0) return;
  const unsigned grid = blocks_for(x.n, kHeadImages);
  dispatch_dtype(x.dtype, what, [&](auto t) {
    using T = decltype(t);
    const auto kernel = pooled_dense_head_kernel<T>;
    allow_dynamic_smem(kernel, smem, what, "pooled_dense_head_kernel", "channels + outputs");
    kernel<<<grid, kHeadThreads, smem, stream>>>(static_cast<const T*>(x.data), device_view(x), wt,
                                                 b, out, l2norm, eps, y);
  });
  FN_LAUNCH_CHECK("pooled_dense_head_kernel");
}

}  // namespace facenet
