// .npy format 1.0: magic, version, little-endian header length, a Python-dict header padded
// to a multiple of 64 bytes, then raw data.
#include "engine/core/npy.h"

#include <cstring>
#include <fstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "engine/core/error.h"
#include "engine/core/file_bytes.h"

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

namespace {

// The header dict, as numpy writes it: {'descr': '<f4', 'fortran_order': False, 'shape': (r, c), }
// Parsed strictly (keys, quotes, a tuple of at most two non-negative integers); anything else
// is an error naming the file, never a guess.
class HeaderParser {
 public:
  HeaderParser(std::string_view text, const std::string& origin) : s_(text), origin_(origin) {}

  struct Header {
    std::string descr;
    bool fortran = true, has_descr = false, has_order = false, has_shape = false;
    std::vector<int64_t> shape;
  };

  Header parse() {
    Header h;
    expect('{');
    while (!take('}')) {
      const std::string key = quoted();
      expect(':');
      if (key == "descr" && !h.has_descr) {
        h.descr = quoted();
        h.has_descr = true;
      } else if (key == "fortran_order" && !h.has_order) {
        h.fortran = boolean();
        h.has_order = true;
      } else if (key == "shape" && !h.has_shape) {
        h.shape = tuple();
        h.has_shape = true;
      } else {
        bad("unexpected or repeated key '" + key + "'");
      }
      if (!take(',')) {
        expect('}');
        break;
      }
    }
    space();
    if (pos_ != s_.size()) bad("text after the header dict");
    if (!h.has_descr || !h.has_order || !h.has_shape) bad("descr, fortran_order or shape missing");
    return h;
  }

 private:
  [[noreturn]] void bad(const std::string& why) const {
    fail(origin_, ": malformed .npy header (", why, " at byte ", pos_, ")");
  }
  void space() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\n')) ++pos_;
  }
  bool take(char c) {
    space();
    if (pos_ < s_.size() && s_[pos_] == c) return ++pos_, true;
    return false;
  }
  void expect(char c) {
    if (!take(c)) bad(std::string("expected '") + c + "'");
  }
  std::string quoted() {
    space();
    if (pos_ >= s_.size() || (s_[pos_] != '\'' && s_[pos_] != '"')) bad("expected a quoted string");
    const char q = s_[pos_++];
    const size_t end = s_.find(q, pos_);
    if (end == std::string_view::npos) bad("unterminated string");
    std::string out(s_.substr(pos_, end - pos_));
    pos_ = end + 1;
    return out;
  }
  bool boolean() {
    space();
    for (const auto& [word, value] :
         {std::pair<std::string_view, bool>{"False", false}, {"True", true}})
      if (s_.substr(pos_, word.size()) == word) return pos_ += word.size(), value;
    bad("expected True or False");
  }
  std::vector<int64_t> tuple() {
    expect('(');
    std::vector<int64_t> dims;
    while (!take(')')) {
      space();
      if (pos_ >= s_.size() || s_[pos_] < '0' || s_[pos_] > '9') bad("expected an extent");
      int64_t d = 0;
      for (; pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9'; ++pos_) {
        if (d > (INT64_MAX - 9) / 10) bad("extent too large");
        d = d * 10 + (s_[pos_] - '0');
      }
      dims.push_back(d);
      if (!take(',')) {
        expect(')');
        break;
      }
    }
    return dims;
  }

  std::string_view s_;
  const std::string& origin_;
  size_t pos_ = 0;
};

}  // namespace

NpyMatrix parse_npy(std::string_view bytes, const std::string& origin) {
  constexpr size_t kPreamble = 10;  // magic (6) + version (2) + header length (2)
  if (bytes.size() < kPreamble || bytes.substr(0, 6) != "\x93NUMPY" || bytes[6] != 1)
    fail(origin, ": not a version-1 .npy file");
  const size_t len = static_cast<unsigned char>(bytes[8]) |
                     (static_cast<size_t>(static_cast<unsigned char>(bytes[9])) << 8);
  if (kPreamble + len > bytes.size())
    fail(origin, ": .npy header of ", len, " bytes does not fit the file of ", bytes.size(),
         " bytes");
  const HeaderParser::Header h = HeaderParser(bytes.substr(kPreamble, len), origin).parse();
  if (h.descr != "<f4" || h.fortran)
    fail(origin, ": expected a C-order little-endian float32 array ('<f4', fortran_order False)",
         ", got '", h.descr, "'", h.fortran ? " in Fortran order" : "");
  if (h.shape.empty() || h.shape.size() > 2)
    fail(origin, ": expected a 1-D or 2-D array, got ", h.shape.size(), " dimensions");
  NpyMatrix mat;
  mat.rows = h.shape[0];
  mat.cols = h.shape.size() == 2 ? h.shape[1] : 1;
  // Checked against the bytes present before anything is allocated (and without overflow).
  const uint64_t data_bytes = bytes.size() - kPreamble - len;
  if (mat.cols != 0 && static_cast<uint64_t>(mat.rows) >
                           data_bytes / sizeof(float) / static_cast<uint64_t>(mat.cols))
    fail(origin, ": truncated data (shape ", mat.rows, " x ", mat.cols, " needs more than the ",
         data_bytes, " bytes present)");
  const uint64_t need = static_cast<uint64_t>(mat.rows * mat.cols) * sizeof(float);
  if (need != data_bytes)
    fail(origin, ": data is ", data_bytes, " bytes; shape ", mat.rows, " x ", mat.cols, " needs ",
         need);
  mat.data.resize(static_cast<size_t>(mat.rows * mat.cols));
  if (need > 0) std::memcpy(mat.data.data(), bytes.data() + kPreamble + len, need);
  return mat;
}

NpyMatrix read_npy(const std::filesystem::path& path) {
  return parse_npy(read_input_file(path, ".npy file"), path.string());
}

}  // namespace facenet
