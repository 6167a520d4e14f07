// .npy format 1.0: magic, version, little-endian header length, a Python-dict header padded
// to a multiple of 64 bytes, then raw data.
#include "engine/core/npy.h"

#include <fstream>
#include <regex>
#include <string>

#include "engine/core/error.h"

namespace facenet {

void write_npy(const std::filesystem::path& path, const float* data, int64_t rows, int64_t cols) {
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" +
                       std::to_string(rows) + ", " + std::to_string(cols) + "), }";
  const size_t preamble = 10;  // magic (6) + version (2) + header length (2)
  header.append((64 - (preamble + header.size() + 1) % 64) % 64, ' ');
  header.push_back('\n');
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) fail("cannot write ", path.string());
  out.write("\x93NUMPY\x01\x00", 8);
  const uint16_t len = static_cast<uint16_t>(header.size());
  const char len_bytes[2] = {static_cast<char>(len & 0xff), static_cast<char>(len >> 8)};
  out.write(len_bytes, 2);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(reinterpret_cast<const char*>(data),
            static_cast<std::streamsize>(rows * cols * sizeof(float)));
  if (!out) fail("error while writing ", path.string());
}

NpyMatrix read_npy(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open ", path.string());
  char pre[10];
  if (!in.read(pre, 10) || std::string(pre, 6) != "\x93NUMPY" || pre[6] != 1)
    fail(path.string(), ": not a version-1 .npy file");
  const uint16_t len =
      static_cast<unsigned char>(pre[8]) | (static_cast<unsigned char>(pre[9]) << 8);
  std::string header(len, '\0');
  in.read(header.data(), len);
  std::smatch m;
  if (header.find("'<f4'") == std::string::npos || header.find("True") != std::string::npos ||
      !std::regex_search(header, m, std::regex(R"(\((\d+),\s*(\d*)\)?)")))
    fail(path.string(), ": expected a C-order little-endian float32 array, header ", header);
  NpyMatrix mat;
  mat.rows = std::stoll(m[1]);
  mat.cols = m[2].length() ? std::stoll(m[2]) : 1;
  mat.data.resize(mat.rows * mat.cols);
  in.read(reinterpret_cast<char*>(mat.data.data()),
          static_cast<std::streamsize>(mat.data.size() * sizeof(float)));
  if (!in) fail(path.string(), ": truncated data");
  return mat;
}

}  // namespace facenet
