// The CNN detector's CUDA path (cnn_detector_cuda.h).
#include "engine/face/cnn_detector_cuda.h"

#include "engine/core/error.h"

#if FACENET_HAS_CUDA
#include "engine/backend/cuda/cuda_backend.h"
#include "engine/core/cuda_util.h"
#include "kernels/mmod_pyramid.h"
#endif

namespace facenet::detail {

void forward_pyramid_cuda(Backend& backend, const MmodSettings& s, const PyramidLayout& layout,
                          const unsigned char* rgb, int64_t n, long rows, long cols, float* y) {
#if FACENET_HAS_CUDA
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  if (!cuda) fail("the CNN detector's GPU pyramid needs the CUDA backend");
  const size_t bytes = static_cast<size_t>(n) * rows * cols * 3;
  DeviceBuffer<uint8_t> photos(bytes);  // per call: one photo's bytes, small against the forward
  const float mean[3] = {static_cast<float>(s.mean_rgb[0]), static_cast<float>(s.mean_rgb[1]),
                         static_cast<float>(s.mean_rgb[2])};
  cuda->forward_device_input(
      n, int64_t{3} * layout.rows * layout.cols,
      [&](float* x, cudaStream_t stream) {
        FN_GPU_CHECK(cudaMemcpyAsync(photos.data(), rgb, bytes, cudaMemcpyHostToDevice, stream));
        launch_mmod_level0(photos.data(), n, rows, cols, layout.levels.at(0), mean, s.scale, x,
                           layout.rows, layout.cols, stream);
        for (size_t l = 1; l < layout.levels.size(); ++l)
          launch_mmod_resize(x, n, layout.rows, layout.cols, layout.levels[l - 1], layout.levels[l],
                             stream);
      },
      y);
#else
  (void)backend, (void)s, (void)layout, (void)rgb, (void)n, (void)rows, (void)cols, (void)y;
  fail("the CNN detector's GPU path needs a build with CUDA");
#endif
}

}  // namespace facenet::detail
