// libFuzzer target: image bytes -> the checked decode (header size, pixel limit, JPEG
// structure, the build's decoder) -> a resize. Bad input must come back as facenet::Error.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "engine/core/error.h"
#include "engine/image/image_decode.h"
#include "engine/image/image_io.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<unsigned char> bytes(data, data + size);
  // A lower limit than the default keeps each run small; the check is the same.
  constexpr int64_t kMaxPixels = 4'000'000;
  try {
    const facenet::Bgr8Image img = facenet::decode_checked(bytes, "fuzz input", kMaxPixels);
    if (img.width < 1 || img.height < 1 || int64_t{img.width} * img.height > kMaxPixels ||
        img.pixels.size() != size_t(img.width) * img.height * 3)
      __builtin_trap();  // a decode that succeeds must honour the limit and its own size
    facenet::resize_bilinear(img, 37, 41);
  } catch (const facenet::Error&) {
  }
  return 0;
}
