// The front door's inputs: files, encoded bytes and pixel buffers, and how each is decoded.
#include "engine/core/error.h"
#include "engine/image/image_io.h"
#include "engine/pipeline/pipeline.h"

namespace facenet {

namespace fs = std::filesystem;

ImageInput ImageInput::file(fs::path path) {
  ImageInput in;
  in.kind_ = Kind::kFile;
  in.name_ = path.string();
  in.path_ = std::move(path);
  return in;
}

ImageInput ImageInput::bytes(std::vector<uint8_t> data, std::string name) {
  ImageInput in;
  in.kind_ = Kind::kBytes;
  in.name_ = std::move(name);
  in.bytes_ = std::move(data);
  return in;
}

ImageInput ImageInput::pixels(const PixelView& view, std::string name) {
  ImageInput in;
  in.kind_ = Kind::kPixels;
  in.name_ = std::move(name);
  try {
    in.pixels_ = to_bgr8(view, in.name_);
  } catch (const Error& e) {
    in.invalid_ = e.what();
  }
  return in;
}

ImageInput& ImageInput::with_boxes(std::vector<FaceBox> boxes) {
  boxes_ = std::move(boxes);
  return *this;
}

ImageInput ImageInput::borrowed_pixels(const PixelView& view, std::string name) {
  ImageInput in;
  in.kind_ = Kind::kBorrowedPixels;
  in.name_ = std::move(name);
  in.borrowed_ = view;
  return in;
}

ImageInput ImageInput::unusable(fs::path path, std::string why) {
  ImageInput in = file(std::move(path));
  in.invalid_ = std::move(why);
  return in;
}

std::vector<ImageInput> file_inputs(const std::vector<std::string>& args) {
  std::vector<ImageInput> out;
  for (InputEntry& e : expand_inputs(args))
    out.push_back(e.ok() ? ImageInput::file(std::move(e.path))
                         : ImageInput::unusable(std::move(e.path), std::move(e.error)));
  return out;
}

const char* status_name(InputStatus s) {
  switch (s) {
    case InputStatus::kOk:
      return "ok";
    case InputStatus::kUnreadable:
      return "unreadable";
    case InputStatus::kUndecodable:
      return "undecodable";
    case InputStatus::kBusy:
      return "busy";
    case InputStatus::kFailed:
      return "failed";
  }
  return "?";
}

Bgr8Image ImageInput::decode(InputStatus& status, int64_t max_pixels) {
  status = InputStatus::kUndecodable;
  if (kind_ == Kind::kPixels) {
    if (!invalid_.empty()) fail(invalid_);
    return std::move(pixels_);
  }
  if (kind_ == Kind::kBorrowedPixels) return to_bgr8(borrowed_, name_);
  std::vector<uint8_t> file_bytes;
  if (kind_ == Kind::kFile) {
    status = InputStatus::kUnreadable;
    if (!invalid_.empty()) fail(invalid_);
    file_bytes = read_file_bytes(path_);
    status = InputStatus::kUndecodable;
  }
  return decode_checked(kind_ == Kind::kFile ? file_bytes : bytes_, name_, max_pixels);
}

}  // namespace facenet
