// The engine's 8-bit image types: an owned packed BGR image, and a view of a caller's pixels.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace facenet {

// The default limit on an image's pixels (width x height), checked from the file's header
// before anything is decoded: 50 megapixels (8660 x 5774; above the full-size photos of phones
// and most cameras, 12-48 MP; 150 MB as 8-bit BGR). Callers may change it (--max-pixels).
inline constexpr int64_t kDefaultMaxPixels = 50'000'000;

// An 8-bit colour image: height x width x 3, rows packed, OpenCV's BGR channel order.
struct Bgr8Image {
  int height = 0, width = 0;
  std::vector<unsigned char> pixels;
  bool empty() const { return pixels.empty(); }
};

enum class PixelOrder { kBgr, kRgb };

// A caller's decoded 8-bit pixels, not owned: `height` rows of `width` 3-byte pixels, row r at
// data + r * stride (stride >= 3 * width bytes).
struct PixelView {
  const uint8_t* data = nullptr;
  int height = 0, width = 0;
  int64_t stride = 0;  // bytes from one row to the next; 0 = packed (3 * width)
  PixelOrder order = PixelOrder::kBgr;
};

// A packed BGR copy of `view`; throws facenet::Error naming `what` when the view is invalid
// (null data, non-positive size, a stride shorter than a row).
Bgr8Image to_bgr8(const PixelView& view, const std::string& what);

}  // namespace facenet
