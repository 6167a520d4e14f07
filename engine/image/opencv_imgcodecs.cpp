// See opencv_imgcodecs.h. The library is opened by its soname (the one the build found, so the
// system's loader path finds it as it would at start-up) and the two functions are looked up
// by their C++ symbols: for one soname OpenCV keeps its ABI, and these signatures
// (imdecode(InputArray, int), imwrite(const String&, InputArray, const vector<int>&)) are the
// same in every OpenCV 4 release.
#include "engine/image/opencv_imgcodecs.h"

#include <dlfcn.h>

#include <mutex>

#include "engine/core/error.h"

#ifndef FACENET_OPENCV_IMGCODECS_SONAME
#error "FACENET_OPENCV_IMGCODECS_SONAME: the build names OpenCV's imgcodecs library"
#endif

namespace facenet {

namespace {

using DecodeFn = cv::Mat (*)(const cv::_InputArray&, int);
using WriteFn = bool (*)(const std::string&, const cv::_InputArray&, const std::vector<int>&);

struct Imgcodecs {
  DecodeFn decode = nullptr;
  WriteFn write = nullptr;
  std::string error;  // why it could not be loaded; empty when it was
};

const Imgcodecs& imgcodecs() {
  static Imgcodecs lib;
  static std::once_flag once;
  std::call_once(once, [] {
    constexpr const char* kName = FACENET_OPENCV_IMGCODECS_SONAME;
    // Never closed: OpenCV's codecs stay registered for the life of the process.
    void* handle = dlopen(kName, RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
      lib.error = std::string("cannot load OpenCV's image codecs (") + dlerror() + ")";
      return;
    }
    lib.decode = reinterpret_cast<DecodeFn>(dlsym(handle, "_ZN2cv8imdecodeERKNS_11_InputArrayEi"));
    lib.write = reinterpret_cast<WriteFn>(
        dlsym(handle,
              "_ZN2cv7imwriteERKNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEERKNS_11_"
              "InputArrayERKSt6vectorIiSaIiEE"));
    if (!lib.decode || !lib.write)
      lib.error = std::string(kName) + " lacks cv::imdecode or cv::imwrite (not OpenCV 4?)";
  });
  return lib;
}

const Imgcodecs& loaded() {
  const Imgcodecs& lib = imgcodecs();
  if (!lib.error.empty()) fail(lib.error);
  return lib;
}

}  // namespace

cv::Mat imgcodecs_decode(const std::vector<unsigned char>& bytes, int flags) {
  return loaded().decode(bytes, flags);
}

bool imgcodecs_write(const std::string& path, const cv::Mat& img) {
  return loaded().write(path, img, std::vector<int>{});
}

}  // namespace facenet
