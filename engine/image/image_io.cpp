// Preprocessing for the model's input, over whichever decoder the build has (image_decode.h).
#include "engine/image/image_io.h"

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <set>

#include "engine/core/error.h"
#include "engine/image/image_decode.h"

namespace facenet {

InputSpec input_spec(const Graph& g) {
  InputSpec s;
  s.channels = static_cast<int>(g.input_shape[0]);
  s.height = static_cast<int>(g.input_shape[1]);
  s.width = static_cast<int>(g.input_shape[2]);
  s.scale = static_cast<float>(g.preprocess.value("scale", 1.0 / 255.0));
  s.rgb = g.preprocess.value("color", "rgb") == "rgb";
  if (g.preprocess.contains("mean")) {
    const auto m = g.preprocess.at("mean").get<std::vector<double>>();
    if (m.size() != 3) fail("model preprocess: 'mean' must have 3 values (one per channel)");
    for (int c = 0; c < 3; ++c) s.mean[c] = static_cast<float>(m[c]);
  }
  if (s.channels != 3) fail("model input has ", s.channels, " channels; only 3 are supported");
  return s;
}

namespace {

Bgr8Image decode_resized(const std::vector<unsigned char>& bytes, const std::string& what,
                         const InputSpec& spec) {
  Bgr8Image img = decode_checked(bytes, what);
  if (img.width != spec.width || img.height != spec.height)
    img = resize_bilinear(img, spec.height, spec.width);
  return img;
}

// `pixels`: spec.height x spec.width x 3 BGR.
void to_input(const unsigned char* pixels, const InputSpec& spec, float* out) {
  const int hw = spec.height * spec.width;
  for (int i = 0; i < hw; ++i) {
    const unsigned char* bgr = pixels + 3 * i;
    for (int c = 0; c < 3; ++c)
      out[c * hw + i] = (static_cast<float>(bgr[spec.rgb ? 2 - c : c]) - spec.mean[c]) * spec.scale;
  }
}

// cv::RNG's multiply-with-carry generator, so the synthetic image is the same whichever
// decoder the build uses: state = lo32(state) * 4164903690 + hi32(state).
class MultiplyWithCarry {
 public:
  explicit MultiplyWithCarry(uint64_t seed) : state_(seed ? seed : 0xffffffffu) {}
  int uniform(int lo, int hi) {  // [lo, hi)
    state_ = static_cast<uint64_t>(static_cast<uint32_t>(state_)) * 4164903690u +
             static_cast<uint32_t>(state_ >> 32);
    return static_cast<int>(static_cast<uint32_t>(state_) % static_cast<uint32_t>(hi - lo)) + lo;
  }

 private:
  uint64_t state_;
};

}  // namespace

void decode_image(const std::vector<unsigned char>& bytes, const std::string& what,
                  const InputSpec& spec, float* out) {
  to_input(decode_resized(bytes, what, spec).pixels.data(), spec, out);
}

void bgr8_to_input(const unsigned char* bgr, int height, int width, const InputSpec& spec,
                   float* out) {
  if (height == spec.height && width == spec.width) return to_input(bgr, spec, out);
  Bgr8Image img;
  img.height = height;
  img.width = width;
  img.pixels.assign(bgr, bgr + static_cast<size_t>(height) * width * 3);
  to_input(resize_bilinear(img, spec.height, spec.width).pixels.data(), spec, out);
}

void decode_image_bgr8(const std::vector<unsigned char>& bytes, const std::string& what,
                       const InputSpec& spec, unsigned char* out) {
  const Bgr8Image img = decode_resized(bytes, what, spec);
  std::copy(img.pixels.begin(), img.pixels.end(), out);
}

std::vector<unsigned char> synthetic_jpeg(int height, int width, unsigned seed) {
  Bgr8Image img;
  img.height = height;
  img.width = width;
  img.pixels.resize(static_cast<size_t>(height) * width * 3);
  MultiplyWithCarry rng(seed);
  unsigned char* p = img.pixels.data();
  for (int y = 0; y < height; ++y)
    for (int x = 0; x < width; ++x)
      for (int c = 0; c < 3; ++c)
        *p++ = static_cast<unsigned char>(
            std::clamp(x * (c + 1) + y * (3 - c) + rng.uniform(0, 40), 0, 255));
  return encode_jpeg(img);
}

Bgr8Image to_bgr8(const PixelView& v, const std::string& what) {
  if (!v.data) fail(what, ": no pixel data");
  if (v.height < 1 || v.width < 1)
    fail(what, ": pixel buffer of ", v.width, "x", v.height, " (width and height must be >= 1)");
  const int64_t row = int64_t{3} * v.width;
  const int64_t stride = v.stride ? v.stride : row;
  if (stride < row)
    fail(what, ": row stride ", stride, " bytes is shorter than a row of ", v.width,
         " 3-byte pixels (", row, " bytes)");
  Bgr8Image out;
  out.height = v.height;
  out.width = v.width;
  out.pixels.resize(static_cast<size_t>(row) * v.height);
  for (int y = 0; y < v.height; ++y) {
    const uint8_t* src = v.data + y * stride;
    unsigned char* dst = out.pixels.data() + y * row;
    if (v.order == PixelOrder::kBgr) {
      std::copy_n(src, row, dst);
    } else {
      for (int x = 0; x < v.width; ++x) {
        dst[3 * x] = src[3 * x + 2];
        dst[3 * x + 1] = src[3 * x + 1];
        dst[3 * x + 2] = src[3 * x];
      }
    }
  }
  return out;
}

std::vector<unsigned char> read_file_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path.string(), ": cannot open (missing or unreadable)");
  std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(in)),
                                   std::istreambuf_iterator<char>());
  if (in.bad()) fail(path.string(), ": read error");
  return bytes;
}

Bgr8Image read_bgr8_image(const std::filesystem::path& path) {
  return decode_checked(read_file_bytes(path), path.string());
}

namespace {

void check_pixels(int64_t width, int64_t height, int64_t max_pixels, const std::string& what) {
  if (width > 0 && height > 0 && width > max_pixels / height)  // width * height may overflow
    fail(what, ": ", width, "x", height, " pixels is more than the limit of ", max_pixels,
         " (--max-pixels); not decoded");
}

}  // namespace

Bgr8Image decode_checked(const std::vector<unsigned char>& bytes, const std::string& what,
                         int64_t max_pixels) {
  if (bytes.empty()) fail(what, ": empty file");
  const std::optional<ImageSize> size = image_header_size(bytes.data(), bytes.size());
  if (size) check_pixels(size->width, size->height, max_pixels, what);
  const std::string problem = structure_problem(bytes.data(), bytes.size());
  if (!problem.empty()) fail(what, ": not a decodable image (", problem, ")");
  Bgr8Image img = decode_bgr8(bytes, what);
  check_pixels(img.width, img.height, max_pixels, what);  // the header may not have told all
  return img;
}

void load_image(const std::filesystem::path& path, const InputSpec& spec, float* out) {
  decode_image(read_file_bytes(path), path.string(), spec, out);
}

void load_image_bgr8(const std::filesystem::path& path, const InputSpec& spec, unsigned char* out) {
  decode_image_bgr8(read_file_bytes(path), path.string(), spec, out);
}

namespace {

namespace fs = std::filesystem;

bool has_image_extension(const fs::path& p) {
  static const std::set<std::string> kExt = {".jpg", ".jpeg", ".png", ".bmp", ".webp",
                                             ".tif", ".tiff", ".pgm", ".ppm"};
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), ::tolower);
  return kExt.count(ext) > 0;
}

// Appends the image files under `dir` (and the entries that cannot be walked, with why) to
// `out`, unsorted. Each directory is read on its own, so an error ends only that directory's
// listing (std::filesystem's recursive iterator ends the whole walk at the first error).
void walk_directory(const fs::path& dir, std::vector<InputEntry>& out) {
  std::error_code ec;
  fs::directory_iterator it(dir, ec);
  if (ec) {
    out.push_back({dir, dir.string() + ": cannot read this directory (" + ec.message() + ")"});
    return;
  }
  for (const fs::directory_iterator end; it != end; it.increment(ec)) {
    if (ec) break;
    const fs::directory_entry& e = *it;
    std::error_code sec;
    const fs::file_status own = e.symlink_status(sec);
    if (!sec && fs::is_directory(own)) {
      walk_directory(e.path(), out);
      continue;
    }
    const fs::file_status target = e.status(sec);  // follows a symbolic link
    if (sec) {
      const bool link = fs::is_symlink(own);
      out.push_back({e.path(), e.path().string() + ": " +
                                   (link ? "symbolic link that cannot be followed ("
                                         : "cannot be examined (") +
                                   sec.message() + ")"});
    } else if (fs::is_regular_file(target) && has_image_extension(e.path())) {
      out.push_back({e.path(), ""});
    }
  }
  if (ec)
    out.push_back({dir, dir.string() + ": the listing stopped early (" + ec.message() +
                            "); the entries after it are not read"});
}

}  // namespace

std::vector<InputEntry> expand_inputs(const std::vector<std::string>& args) {
  std::vector<InputEntry> out;
  for (const auto& a : args) {
    fs::path p(a);
    std::error_code ec;
    if (fs::is_directory(p, ec)) {
      std::vector<InputEntry> found;
      walk_directory(p, found);
      std::sort(found.begin(), found.end(),
                [](const InputEntry& x, const InputEntry& y) { return x.path < y.path; });
      out.insert(out.end(), std::make_move_iterator(found.begin()),
                 std::make_move_iterator(found.end()));
    } else {
      out.push_back({p, ""});  // files (even unreadable ones) are reported when decoded
    }
  }
  return out;
}

}  // namespace facenet
