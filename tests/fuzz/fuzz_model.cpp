// libFuzzer target: the model loader (safetensors container + graph JSON + validation) on
// arbitrary bytes. Bad input must come back as facenet::Error; anything else is a finding.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "engine/core/error.h"
#include "engine/model/model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const facenet::Model m = facenet::load_model_bytes(
        std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.safetensors");
    (void)facenet::model_summary(m);  // shape and MAC arithmetic on what was accepted
  } catch (const facenet::Error&) {
  }
  return 0;
}
