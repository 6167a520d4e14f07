// The CUDA backend's staged 8-bit path (StagedEncoder, backend.h): sets of pinned slots whose
// uploads run on their own stream, overlapping the forward of the batch before, and the cache
// that lends a set again to the next request it fits.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "engine/backend/backend.h"

namespace facenet {

// What a staging set needs from the backend that owns it.
class StagingDevice {
 public:
  virtual int64_t bgr8_image_bytes() const = 0;  // H x W x 3
  virtual int64_t embedding_dim() const = 0;
  // The stream the forward runs on (Backend::gpu_context()'s).
  virtual cudaStream_t compute_stream() const = 0;
  // The device half of a staged batch, on the compute stream: once `uploaded` has fired,
  // dev_bgr's n images -> model input, record `consumed` (dev_bgr may be refilled after it),
  // forward, n x embedding_dim floats -> dev_y (device) -> y (pinned host), record `done`.
  virtual void enqueue_bgr8(const uint8_t* dev_bgr, int64_t n, cudaEvent_t uploaded,
                            cudaEvent_t consumed, float* dev_y, float* y, cudaEvent_t done) = 0;

 protected:
  ~StagingDevice() = default;
};

class CudaStaging;

// The staging sets of one backend. lend() hands out the cached set when it fits (same slot
// count, capacity at least the one asked for), so repeated encode_files calls allocate no
// pinned memory; otherwise it allocates a new set. A set given back (drained) is kept unless
// the cached one has as many slots and holds more images.
class StagingCache {
 public:
  explicit StagingCache(StagingDevice& device);
  ~StagingCache();
  StagingCache(const StagingCache&) = delete;
  StagingCache& operator=(const StagingCache&) = delete;

  // A set of `slots` slots of `capacity` images, on loan until the returned encoder is
  // destroyed; it must not outlive the backend.
  std::unique_ptr<StagedEncoder> lend(int slots, int64_t capacity);
  // Frees the cached set once nothing queued uses it.
  void clear();
  // Device bytes held by every live set, lent out or cached.
  std::size_t device_bytes() const { return static_cast<std::size_t>(device_bytes_); }

  // For the sets and loans themselves (staging.cpp).
  void give_back(std::unique_ptr<CudaStaging> staging);
  void count_device_bytes(int64_t delta) { device_bytes_ += delta; }

 private:
  StagingDevice& device_;
  std::unique_ptr<CudaStaging> cached_;
  int64_t device_bytes_ = 0;
};

}  // namespace facenet
