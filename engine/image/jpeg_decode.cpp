// JPEG decoding with libjpeg-turbo, in both builds: library defaults (ISLOW integer DCT, fancy
// upsampling), so with the same libjpeg-turbo the pixels are the ones OpenCV 4's
// imdecode(IMREAD_COLOR) returns (checked bit for bit on 415 LFW, OpenFace and happy-house
// photos, OpenCV 4.6 on Debian 12); grey is replicated, CMYK/YCCK converted with OpenCV's
// formula, the EXIF orientation (APP1) applied. Unlike OpenCV it sees libjpeg's warnings:
// a warning means corrupt data decoded into grey or garbled rows, and the image is refused.
#include <algorithm>
#include <csetjmp>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include <jpeglib.h>  // after <cstdio>: it uses FILE and size_t without including them

#include "engine/core/error.h"
#include "engine/image/image_decode.h"

namespace facenet {

namespace {

// libjpeg reports errors through a callback that must not return: it longjmps back to the
// reader, whose frame holds only C objects, so no destructor is skipped.
struct JpegError {
  jpeg_error_mgr mgr;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void jpeg_error_exit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegError*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  longjmp(err->jump, 1);
}

// libjpeg's default emit_message counts warnings (num_warnings) and passes the first one here:
// kept as the reason, since a warning means corrupt data (a bad Huffman code, a premature end
// of data) decoded into grey or garbled rows. The library never prints.
void jpeg_keep_warning(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegError*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
}

constexpr unsigned kExifMarker = JPEG_APP0 + 1;

// EXIF orientation (TIFF tag 0x0112) from an APP1 "Exif" payload; 1 (as stored) if absent.
int exif_orientation(const unsigned char* p, size_t n) {
  if (n < 14 || std::memcmp(p, "Exif\0\0", 6) != 0) return 1;
  const unsigned char* tiff = p + 6;
  const size_t size = n - 6;
  const bool le = tiff[0] == 'I' && tiff[1] == 'I';
  if (!le && !(tiff[0] == 'M' && tiff[1] == 'M')) return 1;
  auto u16 = [&](size_t o) { return le ? tiff[o] | tiff[o + 1] << 8 : tiff[o] << 8 | tiff[o + 1]; };
  auto u32 = [&](size_t o) {
    return le ? uint32_t(u16(o)) | uint32_t(u16(o + 2)) << 16
              : uint32_t(u16(o)) << 16 | uint32_t(u16(o + 2));
  };
  const size_t ifd = u32(4);
  if (ifd + 2 > size) return 1;
  const int entries = u16(ifd);
  for (int i = 0; i < entries; ++i) {
    const size_t e = ifd + 2 + 12 * static_cast<size_t>(i);
    if (e + 12 > size) break;
    if (u16(e) == 0x0112 && u16(e + 2) == 3) return u16(e + 8);  // SHORT value, inline
  }
  return 1;
}

// Reads into `img` (sized here); `row` is scratch for CMYK. False with err->message on an
// error or a warning (corrupt data).
bool read_jpeg(const unsigned char* data, size_t size, Bgr8Image* img,
               std::vector<unsigned char>* row, int* orientation, JpegError* err) {
  jpeg_decompress_struct cinfo;
  cinfo.err = jpeg_std_error(&err->mgr);
  err->mgr.error_exit = jpeg_error_exit;
  err->mgr.output_message = jpeg_keep_warning;
  if (setjmp(err->jump)) {
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, static_cast<unsigned long>(size));
  jpeg_save_markers(&cinfo, kExifMarker, 0xffff);
  jpeg_read_header(&cinfo, TRUE);
  for (jpeg_saved_marker_ptr m = cinfo.marker_list; m; m = m->next)
    if (m->marker == kExifMarker && m->data_length >= 6 && std::memcmp(m->data, "Exif", 4) == 0) {
      *orientation = exif_orientation(m->data, m->data_length);
      break;
    }
  const bool cmyk = cinfo.num_components == 4;
  cinfo.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;  // defaults otherwise: ISLOW, fancy
  jpeg_start_decompress(&cinfo);
  img->height = static_cast<int>(cinfo.output_height);
  img->width = static_cast<int>(cinfo.output_width);
  img->pixels.resize(static_cast<size_t>(img->height) * img->width * 3);
  row->resize(static_cast<size_t>(img->width) * 4);
  while (cinfo.output_scanline < cinfo.output_height) {
    unsigned char* dst = img->pixels.data() + size_t(cinfo.output_scanline) * img->width * 3;
    JSAMPROW rows[1] = {cmyk ? row->data() : dst};
    jpeg_read_scanlines(&cinfo, rows, 1);
    for (int x = 0; x < img->width; ++x, dst += 3) {
      if (cmyk) {  // OpenCV's icvCvt_CMYK2BGR_8u_C4C3R
        const unsigned char* s = row->data() + 4 * x;
        const int k = s[3];
        dst[2] = static_cast<unsigned char>(k - ((255 - s[0]) * k >> 8));
        dst[1] = static_cast<unsigned char>(k - ((255 - s[1]) * k >> 8));
        dst[0] = static_cast<unsigned char>(k - ((255 - s[2]) * k >> 8));
      } else {
        std::swap(dst[0], dst[2]);  // RGB -> BGR
      }
    }
  }
  jpeg_finish_decompress(&cinfo);
  const bool warned = err->mgr.num_warnings > 0;
  jpeg_destroy_decompress(&cinfo);
  return !warned;
}

// OpenCV's ApplyExifOrientation: 2 flip x, 3 flip both, 4 flip y, 5 transpose, 6 transpose +
// flip x, 7 transpose + flip both, 8 transpose + flip y.
Bgr8Image apply_orientation(Bgr8Image img, int orientation) {
  if (orientation < 2 || orientation > 8) return img;
  const bool transpose = orientation >= 5;
  const bool flip_x = orientation == 2 || orientation == 3 || orientation == 6 || orientation == 7;
  const bool flip_y = orientation == 3 || orientation == 4 || orientation == 7 || orientation == 8;
  Bgr8Image out;
  out.height = transpose ? img.width : img.height;
  out.width = transpose ? img.height : img.width;
  out.pixels.resize(img.pixels.size());
  for (int y = 0; y < out.height; ++y)
    for (int x = 0; x < out.width; ++x) {
      const int ty = flip_y ? out.height - 1 - y : y, tx = flip_x ? out.width - 1 - x : x;
      const int sy = transpose ? tx : ty, sx = transpose ? ty : tx;
      std::copy_n(img.pixels.data() + (size_t(sy) * img.width + sx) * 3, 3,
                  out.pixels.data() + (size_t(y) * out.width + x) * 3);
    }
  return out;
}

}  // namespace

Bgr8Image decode_jpeg(const std::vector<unsigned char>& bytes, const std::string& what) {
  Bgr8Image img;
  std::vector<unsigned char> row;
  int orientation = 1;
  JpegError err;
  if (!read_jpeg(bytes.data(), bytes.size(), &img, &row, &orientation, &err))
    fail(what, ": not a decodable image (corrupt JPEG: ", err.message, ")");
  return apply_orientation(std::move(img), orientation);
}

// Baseline JPEG, quality 95, 4:2:0, as cv::imencode(".jpg") writes it by default.
std::vector<unsigned char> encode_jpeg(const Bgr8Image& img) {
  // Allocated before the C objects, so nothing throws while they live.
  std::vector<unsigned char> rgb(size_t(img.width) * 3);
  jpeg_compress_struct cinfo;
  jpeg_error_mgr err;  // default handler (exits): encoding our own buffer only fails on OOM
  cinfo.err = jpeg_std_error(&err);
  jpeg_create_compress(&cinfo);
  unsigned char* buffer = nullptr;
  unsigned long size = 0;
  jpeg_mem_dest(&cinfo, &buffer, &size);
  cinfo.image_width = img.width;
  cinfo.image_height = img.height;
  cinfo.input_components = 3;
  cinfo.in_color_space = JCS_RGB;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, 95, TRUE);
  jpeg_start_compress(&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height) {
    const unsigned char* bgr = img.pixels.data() + size_t(cinfo.next_scanline) * img.width * 3;
    for (int x = 0; x < img.width; ++x)
      for (int c = 0; c < 3; ++c) rgb[3 * x + c] = bgr[3 * x + 2 - c];
    JSAMPROW rows[1] = {rgb.data()};
    jpeg_write_scanlines(&cinfo, rows, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  // libjpeg malloc'ed the output; owned here so the copy below cannot leak it.
  const std::unique_ptr<unsigned char, decltype(&std::free)> owned(buffer, &std::free);
  return std::vector<unsigned char>(owned.get(), owned.get() + size);
}

}  // namespace facenet
