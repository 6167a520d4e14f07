// Reading a whole input file into memory, with errors that say why it could not be read.
#pragma once

#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>

#include "engine/core/error.h"

namespace facenet {

// The bytes of `path`; throws facenet::Error naming `what` and the path when it is missing,
// a directory, unreadable, or changes size while read.
inline std::string read_input_file(const std::filesystem::path& path, const std::string& what) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(status))
    fail("cannot read ", what, " ", path.string(), " (missing)");
  if (std::filesystem::is_directory(status))
    fail("cannot read ", what, " ", path.string(), ": it is a directory");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read ", what, " ", path.string(), " (unreadable)");
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  if (size < 0) fail("cannot read ", what, " ", path.string(), " (not a regular file)");
  in.seekg(0);
  std::string bytes(static_cast<size_t>(size), '\0');
  if (!in.read(bytes.data(), size) || in.peek() != std::char_traits<char>::eof())
    fail("cannot read ", what, " ", path.string(), " (read error or changed while read)");
  return bytes;
}

}  // namespace facenet
