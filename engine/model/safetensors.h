// Reading and writing the safetensors container (8-byte header length, JSON header, raw
// little-endian data): our model file format, readable by the `safetensors` Python package.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <string_view>

#include "engine/core/tensor.h"

namespace facenet {

struct SafetensorsFile {
  std::map<std::string, HostTensor> tensors;    // F32 only (what the engine stores)
  std::map<std::string, std::string> metadata;  // the "__metadata__" string map
};

// Throws facenet::Error naming the path and the offending tensor/field.
SafetensorsFile read_safetensors(const std::filesystem::path& path);
// The same from the file's bytes; `origin` (a path or a label) starts every error message.
// Every header field is checked before it is used: sizes against the bytes present, element
// counts for overflow, byte ranges in bounds and disjoint, no name given twice.
SafetensorsFile parse_safetensors(std::string_view bytes, const std::string& origin);
void write_safetensors(const std::filesystem::path& path, const SafetensorsFile& file);

}  // namespace facenet
