// libFuzzer target: the dlib .dat converters, ResNet and MMOD face detector (dlib's deserialiser,
// then our layer-by-layer and settings checks) on arbitrary bytes. Bad input must come back as
// facenet::Error; anything else is a finding. Without dlib (FACENET_HAS_DLIB unset) there is no
// converter and the target does nothing.
#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/core/error.h"
#include "engine/model/dlib_mmod.h"
#include "engine/model/dlib_resnet.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
#ifdef FACENET_HAS_DLIB
  try {
    (void)facenet::convert_dlib_resnet_bytes(std::string(reinterpret_cast<const char*>(data), size),
                                             "fuzz.dat");
  } catch (const facenet::Error&) {
  }
  try {
    (void)facenet::convert_dlib_mmod_bytes(std::string(reinterpret_cast<const char*>(data), size),
                                           "fuzz.dat");
  } catch (const facenet::Error&) {
  }
#else
  (void)data, (void)size;
#endif
  return 0;
}
