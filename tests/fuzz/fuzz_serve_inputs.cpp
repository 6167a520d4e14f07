// libFuzzer target: the inputs `facenet serve` reads before anything else sees them, i.e. the
// image-header size sniffing (the engine's image_header_size, run on every uploaded image before
// decoding) and the access-key file parser (AccessKeys::parse). Both take bytes; both must never
// crash, and a key file that parses must grant each of its keys exactly the access its line names.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>

#include "apps/serve/access_keys.h"
#include "engine/core/error.h"
#include "engine/image/image_io.h"

namespace {

using facenet::serve::Access;
using facenet::serve::AccessKeys;

void check_declared_size(std::string_view bytes) {
  const auto size = facenet::image_header_size(reinterpret_cast<const unsigned char*>(bytes.data()),
                                               bytes.size());
  // Header fields are at most 32 bits wide: a size outside that range is a parsing bug.
  if (size && (size->width < 0 || size->height < 0 || size->width > int64_t{0xFFFFFFFF} ||
               size->height > int64_t{0xFFFFFFFF}))
    std::abort();
}

// Every `<key> ro|rw` line of a file that parsed must be granted what it says.
void check_access_keys(const std::string& text) {
  std::optional<AccessKeys> keys;
  try {
    keys = AccessKeys::parse(text, "fuzz.keys");
  } catch (const facenet::Error&) {
    return;  // a malformed file, reported as ours: fine
  }
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line.substr(0, line.find('#')));
    std::string key, role;
    if (!(fields >> key >> role)) continue;
    if (keys->check(key) != (role == "rw" ? Access::kReadWrite : Access::kReadOnly)) std::abort();
  }
  if (keys->check("") != Access::kNone) std::abort();  // no key is shorter than 16 characters
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  check_declared_size(bytes);
  check_access_keys(bytes);
  return 0;
}
