// libFuzzer target: the .npy reader on arbitrary bytes. Bad input must come back as
// facenet::Error; anything else is a finding.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "engine/core/error.h"
#include "engine/core/npy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const facenet::NpyMatrix m =
        facenet::parse_npy(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.npy");
    if (static_cast<int64_t>(m.data.size()) != m.rows * m.cols) __builtin_trap();
  } catch (const facenet::Error&) {
  }
  return 0;
}
