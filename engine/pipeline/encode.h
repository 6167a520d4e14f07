// Batched encoding of image files: parallel decode, batched forward, per-file error reports.
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "engine/backend/backend.h"
#include "engine/image/image_io.h"

namespace facenet {

struct EncodeCallbacks {
  // A batch finished: paths[i]'s embedding is embeddings[i*dim .. (i+1)*dim).
  std::function<void(const std::vector<std::filesystem::path>& paths,
                     const std::vector<float>& embeddings)>
      on_batch;
  // A file could not be used; `reason` says why. Encoding goes on with the others.
  std::function<void(const std::filesystem::path& path, const std::string& reason)> on_error;
  // Progress after each batch: files done (encoded or failed) of total.
  std::function<void(size_t done, size_t total)> on_progress;
};

struct EncodeStats {
  size_t encoded = 0, failed = 0;
};

// Encodes `files` in batches of `batch` with `backend`. Decoding runs on all cores. A backend
// with a staged 8-bit path (CUDA) gets encode_staged with kEncodeStagingSlots slots of
// min(batch, files) images; the others get float batches through forward(), decoded then
// encoded in turn. Either way the callbacks come in file order, batch by batch.
EncodeStats encode_files(Backend& backend, const InputSpec& spec, int64_t embedding_dim,
                         const std::vector<std::filesystem::path>& files, int batch,
                         const EncodeCallbacks& callbacks);

// Two slots suffice to keep a device busy: it encodes one batch while the host decodes the
// next into the other.
constexpr int kEncodeStagingSlots = 2;

// Decodes item `index` into `out` (spec.height x spec.width x 3 uint8 BGR); throws
// facenet::Error naming the item when it cannot.
using DecodeBgr8 = std::function<void(size_t index, unsigned char* out)>;

// The pipeline over a StagedEncoder: batch k is decoded on all cores into slot k % slots
// while the device encodes the batches in the other slots; batch k - slots is waited for and
// delivered just before its slot is refilled. A file that fails to decode is zero-filled and
// encoded with its batch (so a batch keeps its size and its plan), then reported and dropped:
// callbacks, their order and the stats are those of the float path. `decode` defaults to
// load_image_bgr8(files[i]); the benchmark decodes JPEG bytes in memory instead.
EncodeStats encode_staged(StagedEncoder& encoder, const InputSpec& spec, int64_t embedding_dim,
                          const std::vector<std::filesystem::path>& files, int batch,
                          const EncodeCallbacks& callbacks, const DecodeBgr8& decode = {});

}  // namespace facenet
