// The pixel size an encoded image declares in its header, read without decoding it, so that
// `facenet serve` refuses a decompression bomb before any pixel memory is taken.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace facenet::serve {

struct DeclaredSize {
  int64_t width = 0, height = 0;
};

// JPEG (the SOFn frame header), PNG (IHDR), GIF (logical screen), BMP (info header) and WebP
// (VP8/VP8L/VP8X). nullopt for other formats or a header too short to say; the caller then
// checks the decoded size instead.
std::optional<DeclaredSize> declared_size(std::string_view bytes);

}  // namespace facenet::serve
