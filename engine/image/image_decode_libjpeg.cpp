// Image decoding, resizing and JPEG encoding without OpenCV (FACENET_IMAGE_IO=libjpeg):
// libjpeg-turbo and libpng driven with the settings OpenCV 4's imdecode(IMREAD_COLOR) uses.
//
// JPEG: jpeg_decode.cpp (both builds). PNG: 16-bit stripped to the high byte,
// palette expanded, grey expanded, alpha dropped, as OpenCV's PngDecoder asks libpng to do
// (a PNG eXIf orientation is ignored). The resize mirrors OpenCV's INTER_LINEAR for 8-bit
// images (see resize_bilinear). Other formats (BMP, WebP, TIFF, PNM) need the OpenCV build.
#include <algorithm>
#include <cmath>
#include <csetjmp>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

#include <jpeglib.h>  // after <cstdio>: it uses FILE and size_t without including them
#include <png.h>

#include "engine/core/error.h"
#include "engine/image/image_decode.h"

namespace facenet {

namespace {

// Frees what a C library malloc'ed.
struct CFree {
  void operator()(void* p) const { std::free(p); }
};

// ---- PNG -------------------------------------------------------------------------------------

struct PngSource {
  const unsigned char* data;
  size_t size, offset;
  char message[256];
};

void png_read_bytes(png_structp png, png_bytep out, png_size_t n) {
  auto* src = static_cast<PngSource*>(png_get_io_ptr(png));
  if (n > src->size - src->offset) png_error(png, "truncated file");
  std::memcpy(out, src->data + src->offset, n);
  src->offset += n;
}

void png_on_error(png_structp png, png_const_charp msg) {
  auto* src = static_cast<PngSource*>(png_get_error_ptr(png));
  std::snprintf(src->message, sizeof(src->message), "%s", msg);
  png_longjmp(png, 1);
}

void png_quiet(png_structp, png_const_charp) {}

// Same frame rule as read_jpeg: only C objects here, the image lives in the caller.
bool read_png(PngSource* src, Bgr8Image* img, std::vector<png_bytep>* rows) {
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, src, png_on_error, png_quiet);
  if (!png) return false;
  png_infop info = png_create_info_struct(png);
  if (!info || setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    return false;
  }
  png_set_read_fn(png, src, png_read_bytes);
  png_read_info(png, info);
  const int depth = png_get_bit_depth(png, info), type = png_get_color_type(png, info);
  // PngDecoder::readData for an 8-bit, 3-channel destination:
  if (depth == 16) png_set_strip_16(png);
  png_set_strip_alpha(png);
  if (type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if ((type & PNG_COLOR_MASK_COLOR) == 0 && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (type & PNG_COLOR_MASK_COLOR)
    png_set_bgr(png);
  else
    png_set_gray_to_rgb(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  img->height = static_cast<int>(png_get_image_height(png, info));
  img->width = static_cast<int>(png_get_image_width(png, info));
  if (png_get_rowbytes(png, info) != size_t(img->width) * 3)
    png_error(png, "unexpected row layout");
  img->pixels.resize(size_t(img->height) * img->width * 3);
  rows->resize(img->height);
  for (int y = 0; y < img->height; ++y)
    (*rows)[y] = img->pixels.data() + size_t(y) * img->width * 3;
  png_read_image(png, rows->data());
  png_read_end(png, nullptr);
  png_destroy_read_struct(&png, &info, nullptr);
  return true;
}

Bgr8Image decode_png(const std::vector<unsigned char>& bytes, const std::string& what) {
  PngSource src{bytes.data(), bytes.size(), 0, "out of memory"};
  Bgr8Image img;
  std::vector<png_bytep> rows;
  if (!read_png(&src, &img, &rows)) fail(what, ": not a decodable image (PNG: ", src.message, ")");
  return img;
}

// ---- bilinear resize -------------------------------------------------------------------------

// Source index and 11-bit fixed-point weights per destination column/row, as OpenCV's
// resize computes them: f = (d + 0.5) * scale - 0.5, s = floor(f), clamped to the image,
// weights round((1 - frac) * 2048) and round(frac * 2048) (each rounded, in float).
struct Tap {
  int index;
  int16_t w0, w1;
};

// Columns are clamped here (index and weights); rows keep their index, which may be -1 or the
// last row, and are clamped when fetched, with the weights unchanged.
std::vector<Tap> linear_taps(int src, int dst, bool clamp) {
  const double scale = 1.0 / (double(dst) / src);  // OpenCV: 1 / inv_scale
  std::vector<Tap> taps(dst);
  for (int d = 0; d < dst; ++d) {
    float f = static_cast<float>((d + 0.5) * scale - 0.5);
    int s = static_cast<int>(std::floor(f));
    f -= s;
    if (clamp && s < 0) s = 0, f = 0;
    if (clamp && s >= src - 1) s = src - 1, f = 0;
    taps[d] = {s, static_cast<int16_t>(std::lrint((1.f - f) * 2048)),
               static_cast<int16_t>(std::lrint(f * 2048))};
  }
  return taps;
}

}  // namespace

Bgr8Image decode_bgr8(const std::vector<unsigned char>& bytes, const std::string& what) {
  if (bytes.empty()) fail(what, ": empty file");
  if (is_jpeg(bytes)) return decode_jpeg(bytes, what);
  if (bytes.size() >= 8 && png_sig_cmp(bytes.data(), 0, 8) == 0) return decode_png(bytes, what);
  fail(what, ": not a decodable image (this build reads JPEG and PNG only)");
}

// OpenCV's INTER_LINEAR for 8-bit images: a horizontal pass in 11-bit fixed point, then a
// vertical pass that rounds the way its SIMD code (VResizeLinearVec_32s8u) does:
//   out = ((((h0 >> 4) * b0) >> 16) + (((h1 >> 4) * b1) >> 16) + 2) >> 2.
// An exact 2x downscale is a 2x2 mean, as OpenCV switches to INTER_AREA there. Bit-identical
// to cv::resize of OpenCV 4.6 (Debian 12, x86-64) on 1170 cases (117 photos x 10 sizes from
// 1x1 to 250x250, up and down, odd widths); an OpenCV built without SIMD rounds the vertical
// pass as (h0 b0 + h1 b1 + 2^21) >> 22 instead, which differs by 1 at most.
Bgr8Image resize_bilinear(const Bgr8Image& img, int height, int width) {
  Bgr8Image out;
  out.height = height;
  out.width = width;
  out.pixels.resize(size_t(height) * width * 3);
  const int row_in = img.width * 3, row_out = width * 3;
  const unsigned char* src = img.pixels.data();
  if (img.width == 2 * width && img.height == 2 * height) {
    for (int y = 0; y < height; ++y)
      for (int x = 0; x < row_out; ++x) {
        const unsigned char* s = src + size_t(2 * y) * row_in + (x / 3) * 6 + x % 3;
        out.pixels[size_t(y) * row_out + x] =
            static_cast<unsigned char>((s[0] + s[3] + s[row_in] + s[row_in + 3] + 2) >> 2);
      }
    return out;
  }
  const std::vector<Tap> xs = linear_taps(img.width, width, true);
  const std::vector<Tap> ys = linear_taps(img.height, height, false);
  std::vector<int> h0(row_out), h1(row_out);
  auto horizontal = [&](int sy, std::vector<int>& h) {
    const unsigned char* s = src + size_t(std::clamp(sy, 0, img.height - 1)) * row_in;
    for (int x = 0; x < row_out; ++x) {
      const Tap& t = xs[x / 3];
      const int c = t.index * 3 + x % 3;
      h[x] = t.index >= img.width - 1 ? s[c] * 2048 : s[c] * t.w0 + s[c + 3] * t.w1;
    }
  };
  for (int y = 0; y < height; ++y) {
    const Tap& t = ys[y];
    horizontal(t.index, h0);
    horizontal(t.index + 1, h1);
    unsigned char* d = out.pixels.data() + size_t(y) * row_out;
    for (int x = 0; x < row_out; ++x) {
      const int v = ((((h0[x] >> 4) * t.w0) >> 16) + (((h1[x] >> 4) * t.w1) >> 16) + 2) >> 2;
      d[x] = static_cast<unsigned char>(std::clamp(v, 0, 255));
    }
  }
  return out;
}

}  // namespace facenet
