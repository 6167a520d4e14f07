// Batched encoding of image files: parallel decode, batched forward, per-file error reports.
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/image_io.h"

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

// Encodes `files` in batches of `batch` with `backend`. Decoding runs on all cores.
EncodeStats encode_files(Backend& backend, const InputSpec& spec, int64_t embedding_dim,
                         const std::vector<std::filesystem::path>& files, int batch,
                         const EncodeCallbacks& callbacks);

}  // namespace facenet
