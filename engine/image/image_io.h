// Image decoding and the model's input rule: 8-bit decode (OpenCV, or libjpeg-turbo + libpng),
// BGR->RGB, resize to the input size only when needed (bilinear), y = (x - mean_c) * scale,
// CHW float32.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "engine/image/image.h"
#include "engine/model/graph.h"

namespace facenet {

struct InputSpec {
  int channels = 3, height = 96, width = 96;
  float scale = 1.0f / 255.0f;
  std::array<float, 3> mean{0.f, 0.f, 0.f};  // per input channel, in 0..255 pixel units
  bool rgb = true;
};

InputSpec input_spec(const Graph& g);

struct ImageSize {
  int64_t width = 0, height = 0;
};

// An image's size read from its header without decoding it, for JPEG (its SOF marker), PNG
// (IHDR), BMP, WebP (VP8, VP8L, VP8X), TIFF (IFD0) and PNM; nullopt for another format or a
// header too short to say (the decoder then reports the file).
std::optional<ImageSize> image_header_size(const unsigned char* data, size_t size);

// Why a JPEG's or a PNG's structure is broken, e.g. "JPEG truncated (inside the compressed
// image data)"; "" when it is whole or the format is another. A JPEG must reach its
// end-of-image marker through whole segments, each entropy-coded scan ending in a marker; a
// PNG its IEND chunk through whole chunks. A truncated file fails here, whichever decoder
// the build has (libjpeg decodes one with grey rows, warning "premature end of data").
std::string structure_problem(const unsigned char* data, size_t size);

// The decoder's decode_bgr8 after the checks that need no decoding: not empty, at most
// `max_pixels` (from the header; after decoding for a format whose header is not read
// here), a whole JPEG or PNG (structure_problem). Throws facenet::Error naming `what` and the
// reason.
Bgr8Image decode_checked(const std::vector<unsigned char>& bytes, const std::string& what,
                         int64_t max_pixels = kDefaultMaxPixels);

// Decodes `path` and writes C*H*W floats to `out`. Throws facenet::Error naming the file
// (unreadable, empty, not an image).
void load_image(const std::filesystem::path& path, const InputSpec& spec, float* out);

// Same, from encoded bytes in memory (`what` names the source in errors).
void decode_image(const std::vector<unsigned char>& bytes, const std::string& what,
                  const InputSpec& spec, float* out);

// An already decoded 8-bit BGR image (height x width x 3, rows packed; e.g. an aligned face
// chip) -> C*H*W floats by the input rule, resized first when it is not the input size.
void bgr8_to_input(const unsigned char* bgr, int height, int width, const InputSpec& spec,
                   float* out);

// load_image's decode and resize without the float conversion: spec.height x spec.width x 3
// uint8, BGR, for backends that convert on the device. Throws like load_image.
void load_image_bgr8(const std::filesystem::path& path, const InputSpec& spec, unsigned char* out);

// Same decode and resize, but stops before the float conversion: height x width x 3 uint8
// in OpenCV's BGR order, for backends that convert on the device.
void decode_image_bgr8(const std::vector<unsigned char>& bytes, const std::string& what,
                       const InputSpec& spec, unsigned char* out);

// A deterministic synthetic photo-like image (smooth gradients + noise) encoded as JPEG, for
// end-to-end benchmarks that must not depend on data files.
std::vector<unsigned char> synthetic_jpeg(int height, int width, unsigned seed);

// Decodes a file as 8-bit BGR (alpha dropped, grey expanded, EXIF orientation applied), the
// decode every input goes through; throws facenet::Error naming the file.
Bgr8Image read_bgr8_image(const std::filesystem::path& path);

// The bytes of a file; throws facenet::Error naming it when it cannot be read.
std::vector<unsigned char> read_file_bytes(const std::filesystem::path& path);

// One input found by expand_inputs: an image file to read, or an entry that could not be
// walked (an unreadable directory, a broken symbolic link, a symbolic-link loop) and why.
struct InputEntry {
  std::filesystem::path path;
  std::string error;  // empty: an image file to read; else "<path>: <why>", to report
  bool ok() const { return error.empty(); }
};

// Expands files and directories (recursively, sorted, image extensions only) into a list.
// Files are kept as given, even missing ones: they are reported when decoded, so one bad
// path never stops the others. A directory entry that cannot be read is returned with its
// error in its sorted place and the walk goes on; symbolic links to directories are not
// followed (no loops), symbolic links to image files are.
std::vector<InputEntry> expand_inputs(const std::vector<std::string>& args);

}  // namespace facenet
