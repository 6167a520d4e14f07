// Encode pipelines: decode a batch in parallel (OpenMP), drop the failures, forward the rest;
// with a staged backend, decode the next batch while the device encodes the previous one.
#include "engine/pipeline/encode.h"

#include <algorithm>
#include <cstring>

#include "engine/core/error.h"

namespace facenet {

namespace {

void check_batch(int batch) {
  if (batch < 1) fail("--batch must be >= 1 (got ", batch, ")");
}

// CPU backends: decode a batch to floats, then forward the decoded images, compacted.
EncodeStats encode_float(Backend& backend, const InputSpec& spec, int64_t embedding_dim,
                         const std::vector<std::filesystem::path>& files, int batch,
                         const EncodeCallbacks& cb) {
  const int64_t per_image = static_cast<int64_t>(spec.channels) * spec.height * spec.width;
  EncodeStats stats;
  std::vector<float> input(per_image * batch), output;
  std::vector<std::string> errors(batch);
  for (size_t start = 0; start < files.size(); start += batch) {
    const int64_t n = std::min<int64_t>(batch, files.size() - start);
#pragma omp parallel for schedule(dynamic)
    for (int64_t i = 0; i < n; ++i) {
      errors[i].clear();
      try {
        load_image(files[start + i], spec, input.data() + i * per_image);
      } catch (const std::exception& e) {
        errors[i] = e.what();
      }
    }
    // Compact the decoded images to the front, in order.
    std::vector<std::filesystem::path> ok;
    for (int64_t i = 0; i < n; ++i) {
      if (!errors[i].empty()) {
        ++stats.failed;
        if (cb.on_error) cb.on_error(files[start + i], errors[i]);
        continue;
      }
      if (static_cast<int64_t>(ok.size()) != i)
        std::copy_n(input.data() + i * per_image, per_image, input.data() + ok.size() * per_image);
      ok.push_back(files[start + i]);
    }
    if (!ok.empty()) {
      output.resize(ok.size() * embedding_dim);
      backend.forward(input.data(), static_cast<int64_t>(ok.size()), output.data());
      stats.encoded += ok.size();
      if (cb.on_batch) cb.on_batch(ok, output);
    }
    if (cb.on_progress) cb.on_progress(start + n, files.size());
  }
  return stats;
}

// encode_staged's state. Every buffer is sized once for the encoder's capacity; a batch only
// refills them (the callbacks' path copies aside).
class StagedPipeline {
 public:
  StagedPipeline(StagedEncoder& encoder, const InputSpec& spec, int64_t dim,
                 const std::vector<std::filesystem::path>& files, int batch,
                 const EncodeCallbacks& cb, const DecodeBgr8& decode)
      : encoder_(encoder),
        files_(files),
        batch_(batch),
        dim_(dim),
        image_bytes_(int64_t{3} * spec.height * spec.width),
        cb_(cb),
        decode_(decode ? decode : DecodeBgr8([this, spec](size_t i, unsigned char* out) {
          load_image_bgr8(files_[i], spec, out);
        })),
        batches_(encoder.slots()) {
    if (encoder.slots() < 1) fail("staged encoder: needs at least one slot");
    if (encoder.capacity() < std::min<int64_t>(batch, files.size()))
      fail("staged encoder: slots of ", encoder.capacity(), " images cannot take --batch ", batch);
    for (Batch& b : batches_) b.errors.resize(std::min<int64_t>(batch, files.size()));
    ok_.reserve(std::min<size_t>(batch, files.size()));
    embeddings_.reserve(ok_.capacity() * dim);
  }

  EncodeStats run() {
    const size_t slots = batches_.size();
    size_t k = 0;
    for (size_t start = 0; start < files_.size(); start += batch_, ++k) {
      const int slot = static_cast<int>(k % slots);
      deliver(slot);  // batch k - slots: the oldest in flight, so delivery stays in order
      decode(slot, start);
      submit(slot);
    }
    for (size_t i = 0; i < slots; ++i, ++k) deliver(static_cast<int>(k % slots));
    return stats_;
  }

 private:
  // One batch between decode and delivery: files [start, start + n), why each failed.
  struct Batch {
    size_t start = 0;
    int64_t n = 0;  // 0: the slot is idle
    bool submitted = false;
    std::vector<std::string> errors;  // "" = decoded
  };

  void decode(int slot, size_t start) {
    Batch& b = batches_[slot];
    b.start = start;
    b.n = std::min<int64_t>(batch_, files_.size() - start);
    unsigned char* in = encoder_.input(slot);
#pragma omp parallel for schedule(dynamic)
    for (int64_t i = 0; i < b.n; ++i) {
      unsigned char* image = in + i * image_bytes_;
      b.errors[i].clear();
      try {
        decode_(b.start + i, image);
      } catch (const std::exception& e) {
        b.errors[i] = e.what();
        std::memset(image, 0, image_bytes_);  // encoded with the batch, never delivered
      }
    }
  }

  void submit(int slot) {
    Batch& b = batches_[slot];
    b.submitted = std::any_of(b.errors.begin(), b.errors.begin() + b.n,
                              [](const std::string& e) { return e.empty(); });
    if (b.submitted) encoder_.submit(slot, b.n);
  }

  // Waits for the slot's batch, then reports it exactly as encode_float does.
  void deliver(int slot) {
    Batch& b = batches_[slot];
    if (b.n == 0) return;
    if (b.submitted) encoder_.wait(slot);
    const float* out = encoder_.output(slot);
    ok_.clear();
    embeddings_.clear();
    for (int64_t i = 0; i < b.n; ++i) {
      const std::filesystem::path& file = files_[b.start + i];
      if (!b.errors[i].empty()) {
        ++stats_.failed;
        if (cb_.on_error) cb_.on_error(file, b.errors[i]);
        continue;
      }
      ok_.push_back(file);
      embeddings_.insert(embeddings_.end(), out + i * dim_, out + (i + 1) * dim_);
    }
    if (!ok_.empty()) {
      stats_.encoded += ok_.size();
      if (cb_.on_batch) cb_.on_batch(ok_, embeddings_);
    }
    if (cb_.on_progress) cb_.on_progress(b.start + b.n, files_.size());
    b.n = 0;
    b.submitted = false;
  }

  StagedEncoder& encoder_;
  const std::vector<std::filesystem::path>& files_;
  const int batch_;
  const int64_t dim_, image_bytes_;
  const EncodeCallbacks& cb_;
  const DecodeBgr8 decode_;
  std::vector<Batch> batches_;  // one per slot
  std::vector<std::filesystem::path> ok_;
  std::vector<float> embeddings_;
  EncodeStats stats_;
};

}  // namespace

EncodeStats encode_staged(StagedEncoder& encoder, const InputSpec& spec, int64_t embedding_dim,
                          const std::vector<std::filesystem::path>& files, int batch,
                          const EncodeCallbacks& callbacks, const DecodeBgr8& decode) {
  check_batch(batch);
  return StagedPipeline(encoder, spec, embedding_dim, files, batch, callbacks, decode).run();
}

EncodeStats encode_files(Backend& backend, const InputSpec& spec, int64_t embedding_dim,
                         const std::vector<std::filesystem::path>& files, int batch,
                         const EncodeCallbacks& cb) {
  check_batch(batch);
  if (files.empty()) return {};
  const int64_t capacity = std::min<int64_t>(batch, files.size());
  if (auto staged = backend.make_staged_encoder(kEncodeStagingSlots, capacity))
    return encode_staged(*staged, spec, embedding_dim, files, batch, cb);
  return encode_float(backend, spec, embedding_dim, files, batch, cb);
}

}  // namespace facenet
