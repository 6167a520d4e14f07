// Encode pipeline: decode a batch in parallel (OpenMP), drop the failures, forward the rest.
#include "engine/encode.h"

#include "engine/error.h"

namespace facenet {

EncodeStats encode_files(Backend& backend, const InputSpec& spec, int64_t embedding_dim,
                         const std::vector<std::filesystem::path>& files, int batch,
                         const EncodeCallbacks& cb) {
  if (batch < 1) fail("--batch must be >= 1 (got ", batch, ")");
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

}  // namespace facenet
