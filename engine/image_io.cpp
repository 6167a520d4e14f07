// OpenCV-based decoding and preprocessing.
#include "engine/image_io.h"

#include <algorithm>
#include <fstream>
#include <iterator>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <set>

#include "engine/error.h"

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

cv::Mat decode_bgr(const std::vector<unsigned char>& bytes, const std::string& what) {
  if (bytes.empty()) fail(what, ": empty file");
  cv::Mat img;
  try {
    img = cv::imdecode(bytes, cv::IMREAD_COLOR);  // 8-bit BGR, alpha dropped
  } catch (const cv::Exception& e) {
    fail(what, ": not a decodable image (", e.what(), ")");
  }
  if (img.empty()) fail(what, ": not a decodable image");
  return img;
}

cv::Mat resized(const cv::Mat& img, const InputSpec& spec) {
  if (img.cols == spec.width && img.rows == spec.height) return img;
  cv::Mat out;
  cv::resize(img, out, cv::Size(spec.width, spec.height), 0, 0, cv::INTER_LINEAR);
  return out;
}

std::vector<unsigned char> read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path.string(), ": cannot open (missing or unreadable)");
  std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(in)),
                                   std::istreambuf_iterator<char>());
  if (in.bad()) fail(path.string(), ": read error");
  return bytes;
}

}  // namespace

void image_to_input(const cv::Mat& decoded, const std::string& what, const InputSpec& spec,
                    float* out) {
  if (decoded.empty()) fail(what, ": not a decodable image");
  const cv::Mat img = resized(decoded, spec);
  const int hw = spec.height * spec.width;
  for (int y = 0; y < spec.height; ++y) {
    const cv::Vec3b* row = img.ptr<cv::Vec3b>(y);
    for (int x = 0; x < spec.width; ++x) {
      const cv::Vec3b& bgr = row[x];
      for (int c = 0; c < 3; ++c)
        out[c * hw + y * spec.width + x] =
            (static_cast<float>(bgr[spec.rgb ? 2 - c : c]) - spec.mean[c]) * spec.scale;
    }
  }
}

void decode_image(const std::vector<unsigned char>& bytes, const std::string& what,
                  const InputSpec& spec, float* out) {
  image_to_input(decode_bgr(bytes, what), what, spec, out);
}

void decode_image_bgr8(const std::vector<unsigned char>& bytes, const std::string& what,
                       const InputSpec& spec, unsigned char* out) {
  const cv::Mat img = resized(decode_bgr(bytes, what), spec);
  for (int y = 0; y < spec.height; ++y)
    std::copy_n(img.ptr<unsigned char>(y), spec.width * 3, out + y * spec.width * 3);
}

std::vector<unsigned char> synthetic_jpeg(int height, int width, unsigned seed) {
  cv::Mat img(height, width, CV_8UC3);
  cv::RNG rng(seed);
  for (int y = 0; y < height; ++y)
    for (int x = 0; x < width; ++x)
      for (int c = 0; c < 3; ++c)
        img.at<cv::Vec3b>(y, x)[c] =
            cv::saturate_cast<unsigned char>((x * (c + 1) + y * (3 - c)) + rng.uniform(0, 40));
  std::vector<unsigned char> out;
  cv::imencode(".jpg", img, out);
  return out;
}

cv::Mat read_image(const std::filesystem::path& path) {
  return decode_bgr(read_bytes(path), path.string());
}

void load_image(const std::filesystem::path& path, const InputSpec& spec, float* out) {
  decode_image(read_bytes(path), path.string(), spec, out);
}

std::vector<std::filesystem::path> expand_inputs(const std::vector<std::string>& args) {
  namespace fs = std::filesystem;
  static const std::set<std::string> kExt = {".jpg", ".jpeg", ".png", ".bmp", ".webp",
                                             ".tif", ".tiff", ".pgm", ".ppm"};
  std::vector<fs::path> out;
  for (const auto& a : args) {
    fs::path p(a);
    std::error_code ec;
    if (fs::is_directory(p, ec)) {
      std::vector<fs::path> found;
      for (const auto& e : fs::recursive_directory_iterator(p)) {
        std::string ext = e.path().extension().string();
        std::transform(ext.begin(), ext.end(), ext.begin(), ::tolower);
        if (e.is_regular_file() && kExt.count(ext)) found.push_back(e.path());
      }
      std::sort(found.begin(), found.end());
      out.insert(out.end(), found.begin(), found.end());
    } else {
      out.push_back(p);  // files (even unreadable ones) are reported when decoded
    }
  }
  return out;
}

}  // namespace facenet
