// The CUDA backend's staged 8-bit path: staging sets of pinned slots, their loans, and the
// cache that keeps a set for the next request (staging.h).
#include "engine/backend/cuda/staging.h"

#include <utility>
#include <vector>

#include "engine/core/cuda_util.h"
#include "engine/core/error.h"

namespace facenet {

// One staging set. Per slot: pinned host input and output, a device copy of the input, the
// slot's device embeddings, three events. Uploads run on the set's own stream so that one
// slot's upload overlaps the forward of the batch before it; conversion, forward and download
// run on the backend's compute stream, which serialises every use of its one
// input/arena/output set:
//   copy stream:     wait consumed[s] -> H2D in[s] -> dev[s] -> record uploaded[s]
//   compute stream:  wait uploaded[s] -> convert dev[s] -> record consumed[s] -> forward
//                    -> D2D -> dev_out[s] -> D2H -> out[s] -> record done[s]
// wait(s) synchronises done[s], which follows the slot's upload and download: in[s] and
// out[s] are then the host's again. An event not yet recorded is complete, so a fresh slot
// neither waits nor blocks. dev_out[s] is the slot's own (the backend's output buffer is
// overwritten by the next batch), so work queued on the compute stream after submit(s) reads
// the slot's embeddings there until its next submit.
class CudaStaging final : public StagedEncoder {
 public:
  CudaStaging(StagingDevice& device, StagingCache& cache, int slots, int64_t capacity)
      : device_(device),
        cache_(cache),
        capacity_(capacity),
        image_bytes_(device.bgr8_image_bytes()),
        copy_stream_(make_stream()) {
    const auto images = static_cast<std::size_t>(capacity);
    const auto embeddings = images * static_cast<std::size_t>(device.embedding_dim());
    slots_.reserve(slots);
    for (int i = 0; i < slots; ++i) {
      Slot s;
      s.in = PinnedBuffer<uint8_t>(images * image_bytes_);
      s.out = PinnedBuffer<float>(embeddings);
      s.dev.resize(images * image_bytes_);
      s.dev_out.resize(embeddings);
      s.uploaded = make_event(cudaEventDisableTiming);
      s.consumed = make_event(cudaEventDisableTiming);
      s.done = make_event(cudaEventDisableTiming);
      slots_.push_back(std::move(s));
    }
    cache_.count_device_bytes(static_cast<int64_t>(device_bytes()));
  }

  // Nothing may still read or write a slot's buffers when they are freed (an exception can
  // leave work queued on either stream).
  ~CudaStaging() override {
    drain();
    cache_.count_device_bytes(-static_cast<int64_t>(device_bytes()));
  }

  // Waits for everything queued on either stream (errors included: this also runs while an
  // exception unwinds, so it reports nothing).
  void drain() {
    cudaStreamSynchronize(copy_stream_.get());
    cudaStreamSynchronize(device_.compute_stream());
  }

  int slots() const override { return static_cast<int>(slots_.size()); }
  int64_t capacity() const override { return capacity_; }
  uint8_t* input(int slot) override { return slots_.at(slot).in.data(); }
  const float* output(int slot) const override { return slots_.at(slot).out.data(); }
  const float* device_output(int slot) const override { return slots_.at(slot).dev_out.data(); }

  void submit(int slot, int64_t n) override {
    FN_ASSERT(n >= 1 && n <= capacity_);
    Slot& s = slots_.at(slot);
    cudaStream_t copy = copy_stream_.get();
    FN_GPU_CHECK(cudaStreamWaitEvent(copy, s.consumed.get(), 0));
    FN_GPU_CHECK(
        cudaMemcpyAsync(s.dev.data(), s.in.data(), n * image_bytes_, cudaMemcpyHostToDevice, copy));
    FN_GPU_CHECK(cudaEventRecord(s.uploaded.get(), copy));
    device_.enqueue_bgr8(s.dev.data(), n, s.uploaded.get(), s.consumed.get(), s.dev_out.data(),
                         s.out.data(), s.done.get());
  }

  void wait(int slot) override { FN_GPU_CHECK(cudaEventSynchronize(slots_.at(slot).done.get())); }

 private:
  struct Slot {
    PinnedBuffer<uint8_t> in;
    PinnedBuffer<float> out;
    DeviceBuffer<uint8_t> dev;
    DeviceBuffer<float> dev_out;
    UniqueEvent uploaded, consumed, done;
  };

  std::size_t device_bytes() const {
    std::size_t bytes = 0;
    for (const Slot& s : slots_) bytes += s.dev.bytes() + s.dev_out.bytes();
    return bytes;
  }

  StagingDevice& device_;
  StagingCache& cache_;
  const int64_t capacity_, image_bytes_;
  UniqueStream copy_stream_;
  std::vector<Slot> slots_;
};

namespace {

// What lend() returns: a CudaStaging on loan, given back to the cache when the caller is
// done. Reports the capacity asked for, whatever the slots hold.
class StagingLease final : public StagedEncoder {
 public:
  StagingLease(StagingCache& cache, std::unique_ptr<CudaStaging> staging, int64_t capacity)
      : cache_(cache), staging_(std::move(staging)), capacity_(capacity) {}
  ~StagingLease() override { cache_.give_back(std::move(staging_)); }

  int slots() const override { return staging_->slots(); }
  int64_t capacity() const override { return capacity_; }
  uint8_t* input(int slot) override { return staging_->input(slot); }
  const float* output(int slot) const override { return staging_->output(slot); }
  const float* device_output(int slot) const override { return staging_->device_output(slot); }
  void submit(int slot, int64_t n) override {
    FN_ASSERT(n >= 1 && n <= capacity_);
    staging_->submit(slot, n);
  }
  void wait(int slot) override { staging_->wait(slot); }

 private:
  StagingCache& cache_;
  std::unique_ptr<CudaStaging> staging_;
  const int64_t capacity_;
};

}  // namespace

StagingCache::StagingCache(StagingDevice& device) : device_(device) {}

StagingCache::~StagingCache() {
  clear();
}

std::unique_ptr<StagedEncoder> StagingCache::lend(int slots, int64_t capacity) {
  if (slots < 1 || capacity < 1)
    fail("staged encoder: needs >= 1 slot of >= 1 image (got ", slots, " x ", capacity, ")");
  std::unique_ptr<CudaStaging> staging;
  if (cached_ && cached_->slots() == slots && cached_->capacity() >= capacity)
    staging = std::move(cached_);
  else
    staging = std::make_unique<CudaStaging>(device_, *this, slots, capacity);
  return std::make_unique<StagingLease>(*this, std::move(staging), capacity);
}

void StagingCache::give_back(std::unique_ptr<CudaStaging> staging) {
  // The next user writes the pinned inputs straight away: nothing may still read them.
  staging->drain();
  if (!cached_ || cached_->slots() != staging->slots() || cached_->capacity() < staging->capacity())
    cached_ = std::move(staging);
}

void StagingCache::clear() {
  cached_.reset();  // ~CudaStaging drains first
}

}  // namespace facenet
