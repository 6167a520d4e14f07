// libFuzzer target: the parser of one Keras-OpenFace CSV tensor file (what
// `facenet convert openface-csv` runs on every file) on arbitrary bytes. Bad input must come
// back as facenet::Error; anything else is a finding.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/core/error.h"
#include "engine/model/convert_openface.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const std::vector<float> v = facenet::parse_csv_floats(
        std::string(reinterpret_cast<const char*>(data), size), "fuzz.csv");
    for (float x : v)
      if (!std::isfinite(x)) __builtin_trap();  // the parser promises finite values
  } catch (const facenet::Error&) {
  }
  return 0;
}
