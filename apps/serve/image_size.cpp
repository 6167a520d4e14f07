// Image sizes from container headers; see image_size.h. Only the few header fields that carry
// the size are read; anything unexpected gives nullopt (the decoded size is checked then).
#include "apps/serve/image_size.h"

#include <cstdlib>

namespace facenet::serve {

namespace {

uint32_t be16(std::string_view b, size_t at) {
  return uint32_t(uint8_t(b[at])) << 8 | uint8_t(b[at + 1]);
}
uint32_t be32(std::string_view b, size_t at) {
  return be16(b, at) << 16 | be16(b, at + 2);
}
uint32_t le16(std::string_view b, size_t at) {
  return uint32_t(uint8_t(b[at + 1])) << 8 | uint8_t(b[at]);
}
uint32_t le24(std::string_view b, size_t at) {
  return le16(b, at) | uint32_t(uint8_t(b[at + 2])) << 16;
}
uint32_t le32(std::string_view b, size_t at) {
  return le16(b, at) | le16(b, at + 2) << 16;
}

// Walks the JPEG markers to the first start-of-frame (C0-CF but DHT C4, JPG C8, DAC CC).
std::optional<DeclaredSize> jpeg_size(std::string_view b) {
  size_t at = 2;
  while (at + 4 <= b.size()) {
    if (uint8_t(b[at]) != 0xFF) return std::nullopt;
    const uint8_t marker = uint8_t(b[at + 1]);
    if (marker == 0xFF) {  // fill byte
      ++at;
      continue;
    }
    if (marker == 0xD8 || marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) {  // no length
      at += 2;
      continue;
    }
    const uint32_t length = be16(b, at + 2);
    const bool sof =
        marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
    if (sof) {
      if (at + 9 > b.size()) return std::nullopt;
      return DeclaredSize{be16(b, at + 7), be16(b, at + 5)};
    }
    if (length < 2) return std::nullopt;
    at += 2 + length;
  }
  return std::nullopt;
}

std::optional<DeclaredSize> webp_size(std::string_view b) {
  if (b.size() < 30) return std::nullopt;
  const std::string_view chunk = b.substr(12, 4);
  if (chunk == "VP8X") return DeclaredSize{le24(b, 24) + 1, le24(b, 27) + 1};
  if (chunk == "VP8 ") return DeclaredSize{le16(b, 26) & 0x3FFF, le16(b, 28) & 0x3FFF};
  if (chunk == "VP8L") {
    const uint32_t bits = le32(b, 21);
    return DeclaredSize{(bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1};
  }
  return std::nullopt;
}

}  // namespace

std::optional<DeclaredSize> declared_size(std::string_view b) {
  if (b.size() >= 4 && uint8_t(b[0]) == 0xFF && uint8_t(b[1]) == 0xD8) return jpeg_size(b);
  if (b.size() >= 24 && b.substr(0, 8) == std::string_view("\x89PNG\r\n\x1a\n", 8) &&
      b.substr(12, 4) == "IHDR")
    return DeclaredSize{be32(b, 16), be32(b, 20)};
  if (b.size() >= 10 && (b.substr(0, 6) == "GIF87a" || b.substr(0, 6) == "GIF89a"))
    return DeclaredSize{le16(b, 6), le16(b, 8)};
  if (b.size() >= 26 && b.substr(0, 2) == "BM") {
    const auto height = static_cast<int32_t>(le32(b, 22));  // negative: stored top-down
    return DeclaredSize{std::abs(int64_t{static_cast<int32_t>(le32(b, 18))}),
                        std::abs(int64_t{height})};
  }
  if (b.size() >= 16 && b.substr(0, 4) == "RIFF" && b.substr(8, 4) == "WEBP") return webp_size(b);
  return std::nullopt;
}

}  // namespace facenet::serve
