// GPU plumbing: presence detection is consistent, and device buffers round-trip.
#include <vector>

#include "engine/core/error.h"
#include "tests/test_util.h"
#ifdef FACENET_HAS_CUDA
#include "engine/core/cuda_util.h"
#endif

namespace facenet {
namespace {

TEST(Gpu, StatusIsNeverEmptyAndRequireGpuAgreesWithAvailability) {
  EXPECT_FALSE(gpu_status().empty());
  if (gpu_available()) {
    EXPECT_NO_THROW(require_gpu("test"));
  } else {
    try {
      require_gpu("--device cuda");
      FAIL() << "require_gpu did not throw without a GPU";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("--device cuda"), std::string::npos) << e.what();
    }
  }
}

#ifdef FACENET_HAS_CUDA
TEST(Gpu, DeviceBufferRoundTripAndMove) {
  FN_REQUIRE_GPU();
  std::vector<float> host(1000);
  for (size_t i = 0; i < host.size(); ++i) host[i] = 0.5f * static_cast<float>(i);
  DeviceBuffer<float> a(host.size());
  a.upload(host.data(), host.size());
  DeviceBuffer<float> b = a.clone();
  DeviceBuffer<float> c = std::move(b);
  EXPECT_EQ(b.size(), 0u);
  std::vector<float> back(host.size(), -1.f);
  c.download(back.data(), back.size());
  FN_GPU_CHECK(cudaDeviceSynchronize());
  EXPECT_EQ(back, host);
}
#endif

}  // namespace
}  // namespace facenet
