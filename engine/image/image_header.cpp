// What can be known of an encoded image before decoding it: its size from the header, and
// whether a JPEG's markers or a PNG's chunks are whole (a truncated file's are not).
#include <algorithm>
#include <cctype>
#include <cstring>
#include <string>

#include "engine/image/image_io.h"

namespace facenet {

namespace {

uint32_t be16(const unsigned char* p) {
  return uint32_t(p[0]) << 8 | p[1];
}
uint32_t be32(const unsigned char* p) {
  return be16(p) << 16 | be16(p + 2);
}
uint32_t le16(const unsigned char* p) {
  return uint32_t(p[1]) << 8 | p[0];
}
uint32_t le24(const unsigned char* p) {
  return uint32_t(p[2]) << 16 | le16(p);
}
uint32_t le32(const unsigned char* p) {
  return le16(p + 2) << 16 | le16(p);
}

bool is_sof(unsigned m) {  // SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC)
  return m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC;
}

bool is_standalone(unsigned m) {
  return m == 0x01 || (m >= 0xD0 && m <= 0xD7);
}

// Walks a JPEG's markers from SOI; on the SOF marker sets *size (if asked). Returns "" when
// the walk reaches EOI, else why it stopped.
std::string walk_jpeg(const unsigned char* d, size_t n, ImageSize* size) {
  if (n < 4 || d[0] != 0xFF || d[1] != 0xD8) return "no JPEG start-of-image marker";
  size_t i = 2;
  for (;;) {
    while (i < n && d[i] != 0xFF) ++i;  // bytes between segments: libjpeg skips them too
    while (i < n && d[i] == 0xFF) ++i;  // fill bytes before the marker code
    if (i >= n) return "truncated (ends before the end-of-image marker)";
    const unsigned m = d[i++];
    if (m == 0xD9) return "";
    if (m == 0x00 || is_standalone(m)) continue;
    if (i + 2 > n) return "truncated (inside a marker)";
    const size_t len = be16(d + i);
    if (len < 2) return "corrupt (a marker segment of length < 2)";
    if (i + len > n) return "truncated (inside a marker segment)";
    if (size && is_sof(m) && len >= 7) {
      *size = {be16(d + i + 5), be16(d + i + 3)};
      return "";
    }
    i += len;
    if (m != 0xDA) continue;
    // Entropy-coded data up to the next marker: FF 00 is a stuffed byte, FF D0-D7 a restart.
    for (;;) {
      const void* ff = std::memchr(d + i, 0xFF, n - i);
      if (!ff) return "truncated (inside the compressed image data)";
      i = static_cast<const unsigned char*>(ff) - d;
      if (i + 1 >= n) return "truncated (inside the compressed image data)";
      const unsigned next = d[i + 1];
      if (next == 0x00 || (next >= 0xD0 && next <= 0xD7)) {
        i += 2;
      } else if (next == 0xFF) {
        ++i;
      } else {
        break;  // a marker: the walk goes on from here
      }
    }
  }
}

// PNG: chunks (length, type, data, CRC) from the signature to IEND.
std::string walk_png(const unsigned char* d, size_t n) {
  for (size_t i = 8;;) {
    if (n - i < 12) return "truncated (ends before the IEND chunk)";
    const size_t len = be32(d + i);
    if (len > n - i - 12) return "truncated (inside a chunk)";
    if (std::memcmp(d + i + 4, "IEND", 4) == 0) return "";
    i += 12 + len;
  }
}

std::optional<ImageSize> tiff_size(const unsigned char* d, size_t n) {
  if (n < 8) return std::nullopt;
  const bool le = d[0] == 'I' && d[1] == 'I';
  auto u16 = [&](size_t o) { return le ? le16(d + o) : be16(d + o); };
  auto u32 = [&](size_t o) { return le ? le32(d + o) : be32(d + o); };
  const size_t ifd = u32(4);
  if (ifd > n || n - ifd < 2) return std::nullopt;
  const size_t entries = u16(ifd);
  ImageSize s;
  bool width_seen = false, height_seen = false;
  for (size_t e = 0; e < entries; ++e) {
    const size_t at = ifd + 2 + 12 * e;
    if (at > n || n - at < 12) break;
    const uint32_t tag = u16(at), type = u16(at + 2);
    const int64_t v = type == 3 ? u16(at + 8) : type == 4 ? u32(at + 8) : -1;
    // The first of duplicated tags counts, as for libtiff (it ignores the later ones).
    if (tag == 256 && !width_seen) s.width = v, width_seen = true;
    if (tag == 257 && !height_seen) s.height = v, height_seen = true;
  }
  if (s.width < 0 || s.height < 0 || (s.width == 0 && s.height == 0)) return std::nullopt;
  return s;
}

// "P1".."P6": magic, then width and height as decimal numbers; '#' starts a comment line.
// Reads the numbers as OpenCV's PxM decoder does, so that both see the same size: before a
// number, white space and comments ('#' to the end of the line, '\n' or '\r'); after it, any
// one byte ends it and is consumed ("88888\0" "8888" is 88888 x 8888 to OpenCV, which a
// stricter reader took for no size at all and let OpenCV allocate 2.4 GB: found by
// fuzz_image).
std::optional<ImageSize> pnm_size(const unsigned char* d, size_t n) {
  size_t i = 2;
  int64_t v[2] = {0, 0};
  for (int k = 0; k < 2; ++k) {
    for (;;) {
      while (i < n && std::strchr(" \t\r\n\v\f", d[i]) && d[i]) ++i;
      if (i < n && d[i] == '#') {
        while (i < n && d[i] != '\n' && d[i] != '\r') ++i;
        ++i;
        continue;
      }
      break;
    }
    if (i >= n || d[i] < '0' || d[i] > '9') return std::nullopt;
    // Saturates at 2^32 - 1: a larger number is over any pixel limit anyway, and the other
    // extent is still read (a 0 there means no size, not a huge one).
    for (; i < n && d[i] >= '0' && d[i] <= '9'; ++i)
      v[k] = std::min<int64_t>(v[k] * 10 + (d[i] - '0'), 0xFFFFFFFF);
    ++i;  // the byte that ended the number
  }
  return ImageSize{v[0], v[1]};
}

std::optional<ImageSize> webp_size(const unsigned char* d, size_t n) {
  if (n < 30) return std::nullopt;
  if (std::memcmp(d + 12, "VP8X", 4) == 0)
    return ImageSize{int64_t{le24(d + 24)} + 1, int64_t{le24(d + 27)} + 1};
  if (std::memcmp(d + 12, "VP8L", 4) == 0 && d[20] == 0x2F) {
    const uint32_t bits = le32(d + 21);
    return ImageSize{int64_t(bits & 0x3FFF) + 1, int64_t((bits >> 14) & 0x3FFF) + 1};
  }
  if (std::memcmp(d + 12, "VP8 ", 4) == 0 && d[23] == 0x9D && d[24] == 0x01 && d[25] == 0x2A)
    return ImageSize{int64_t(le16(d + 26) & 0x3FFF), int64_t(le16(d + 28) & 0x3FFF)};
  return std::nullopt;
}

}  // namespace

namespace {

std::optional<ImageSize> header_size(const unsigned char* d, size_t n) {
  if (n >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF) {
    ImageSize s{-1, -1};
    walk_jpeg(d, n, &s);
    if (s.width < 0) return std::nullopt;
    return s;
  }
  if (n >= 24 && std::memcmp(d, "\x89PNG\r\n\x1a\n", 8) == 0 && std::memcmp(d + 12, "IHDR", 4) == 0)
    return ImageSize{be32(d + 16), be32(d + 20)};
  if (n >= 26 && d[0] == 'B' && d[1] == 'M') {
    const uint32_t header = le32(d + 14);
    if (header == 12) return ImageSize{le16(d + 18), le16(d + 20)};
    const auto h = static_cast<int32_t>(le32(d + 22));
    return ImageSize{static_cast<int32_t>(le32(d + 18)), h < 0 ? -int64_t{h} : h};
  }
  if (n >= 12 && std::memcmp(d, "RIFF", 4) == 0 && std::memcmp(d + 8, "WEBP", 4) == 0)
    return webp_size(d, n);
  if (n >= 4 && (std::memcmp(d, "II*\0", 4) == 0 || std::memcmp(d, "MM\0*", 4) == 0))
    return tiff_size(d, n);
  if (n >= 3 && d[0] == 'P' && d[1] >= '1' && d[1] <= '6') return pnm_size(d, n);
  return std::nullopt;
}

// The formats the engine reads, by the signatures OpenCV's own decoders check, so that
// OpenCV picks the decoder this names (a "P5" not followed by white space is no PNM to it).
bool supported_signature(const unsigned char* d, size_t n) {
  if (n >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF) return true;
  if (n >= 8 && std::memcmp(d, "\x89PNG\r\n\x1a\n", 8) == 0) return true;
  if (n >= 2 && d[0] == 'B' && d[1] == 'M') return true;
  if (n >= 12 && std::memcmp(d, "RIFF", 4) == 0 && std::memcmp(d + 8, "WEBP", 4) == 0) return true;
  if (n >= 4 && (std::memcmp(d, "II*\0", 4) == 0 || std::memcmp(d, "MM\0*", 4) == 0)) return true;
  return n >= 3 && d[0] == 'P' && d[1] >= '1' && d[1] <= '6' && std::isspace(d[2]);
}

}  // namespace

std::optional<ImageSize> image_header_size(const unsigned char* d, size_t n) {
  std::optional<ImageSize> s = header_size(d, n);
  // A zero or negative extent is no size: the decoder's own (checked after decoding) counts.
  if (s && (s->width <= 0 || s->height <= 0)) return std::nullopt;
  return s;
}

std::string structure_problem(const unsigned char* data, size_t size) {
  std::string why;
  if (size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF)
    why = walk_jpeg(data, size, nullptr);
  else if (size >= 8 && std::memcmp(data, "\x89PNG\r\n\x1a\n", 8) == 0)
    why = walk_png(data, size);
  else if (!supported_signature(data, size))
    // Nothing else reaches OpenCV, whose other codecs (DICOM, OpenEXR, JPEG 2000, ...) are
    // not ours to expose: GDCM aborts the process on a truncated file (found by fuzz_image).
    return "not a supported image format: JPEG, PNG, BMP, WebP, TIFF or PNM (PBM/PGM/PPM)";
  if (why.empty()) return why;
  return (data[0] == 0xFF ? "JPEG " : "PNG ") + why;
}

}  // namespace facenet
