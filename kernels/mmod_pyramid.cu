// The MMOD detector's pyramid input on the GPU (mmod_pyramid.h).
#include <algorithm>

#include "kernels/launch.cuh"
#include "kernels/mmod_pyramid.h"

namespace facenet {

namespace {

__global__ void level0_kernel(const uint8_t* rgb, int64_t n, long rows, long cols, long top,
                              long left, float m0, float m1, float m2, double scale, float* x,
                              long x_rows, long x_cols) {
  const int64_t total = n * 3 * rows * cols;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const long c = static_cast<long>(i % cols);
    const long r = static_cast<long>((i / cols) % rows);
    const int k = static_cast<int>((i / (int64_t{cols} * rows)) % 3);
    const int64_t img = i / (int64_t{3} * rows * cols);
    const float mean = k == 0 ? m0 : k == 1 ? m1 : m2;
    const uint8_t v = rgb[((img * rows + r) * cols + c) * 3 + k];
    // dlib: (pixel - avg) / 256.0, avg a float, in double, stored as float.
    x[((img * 3 + k) * x_rows + top + r) * x_cols + left + c] =
        static_cast<float>((static_cast<float>(v) - mean) * scale);
  }
}

__global__ void resize_kernel(float* x, int64_t n, long x_rows, long x_cols, PyramidRect from,
                              PyramidRect to) {
  const long dh = to.height(), dw = to.width();
  const int64_t total = n * 3 * dh * dw;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const long c = static_cast<long>(i % dw);
    const long r = static_cast<long>((i / dw) % dh);
    const int64_t plane = i / (int64_t{dw} * dh);  // image * 3 + channel
    float* p = x + plane * x_rows * x_cols;
    const float* src = p + from.top * x_cols + from.left;
    p[(to.top + r) * x_cols + to.left + c] =
        mmod_bilinear(src, x_cols, from.height(), from.width(), dh, dw, r, c);
  }
}

}  // namespace

void launch_mmod_level0(const uint8_t* rgb, int64_t n, long rows, long cols, PyramidRect l0,
                        const float mean[3], double scale, float* x, long x_rows, long x_cols,
                        cudaStream_t stream) {
  FN_GPU_CHECK(cudaMemsetAsync(x, 0, sizeof(float) * n * 3 * x_rows * x_cols, stream));
  const int64_t total = n * 3 * rows * cols;
  if (total == 0) return;
  check_not_null(rgb, "mmod level 0", "rgb");
  check_arg(l0.top >= 0 && l0.left >= 0 && l0.bottom < x_rows && l0.right < x_cols &&
                l0.height() == rows && l0.width() == cols,
            "mmod level 0", "level 0 does not fit the pyramid image");
  const unsigned grid = std::min<unsigned>(blocks_for(total, 256), 65535);
  level0_kernel<<<grid, 256, 0, stream>>>(rgb, n, rows, cols, l0.top, l0.left, mean[0], mean[1],
                                          mean[2], scale, x, x_rows, x_cols);
  FN_LAUNCH_CHECK("level0_kernel");
}

void launch_mmod_resize(float* x, int64_t n, long x_rows, long x_cols, PyramidRect from,
                        PyramidRect to, cudaStream_t stream) {
  const int64_t total = n * 3 * to.height() * to.width();
  if (total == 0) return;
  check_arg(from.height() >= 1 && from.width() >= 1 && to.bottom < x_rows && to.right < x_cols &&
                from.bottom < x_rows && from.right < x_cols && to.top >= 0 && to.left >= 0,
            "mmod resize", "a level does not fit the pyramid image");
  const unsigned grid = std::min<unsigned>(blocks_for(total, 256), 65535);
  resize_kernel<<<grid, 256, 0, stream>>>(x, n, x_rows, x_cols, from, to);
  FN_LAUNCH_CHECK("resize_kernel");
}

}  // namespace facenet
