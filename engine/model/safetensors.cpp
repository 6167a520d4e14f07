// safetensors container: see https://github.com/huggingface/safetensors (format section).
#include "engine/model/safetensors.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/core/error.h"

namespace facenet {

std::string shape_string(const Shape& shape) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << ']';
  return os.str();
}

namespace {

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // the format's own limit is 100 MB

uint64_t read_le64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace

SafetensorsFile read_safetensors(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open model file ", path.string());
  in.seekg(0, std::ios::end);
  const uint64_t file_size = static_cast<uint64_t>(in.tellg());
  in.seekg(0);
  unsigned char len_bytes[8];
  if (file_size < 8 || !in.read(reinterpret_cast<char*>(len_bytes), 8))
    fail(path.string(), ": not a safetensors file (shorter than its 8-byte header length)");
  const uint64_t header_len = read_le64(len_bytes);
  if (header_len > kMaxHeaderBytes || 8 + header_len > file_size)
    fail(path.string(), ": not a safetensors file (header length ", header_len,
         " does not fit the file of ", file_size, " bytes)");
  std::string header(header_len, '\0');
  in.read(header.data(), static_cast<std::streamsize>(header_len));
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(header);
  } catch (const std::exception& e) {
    fail(path.string(), ": safetensors header is not valid JSON (", e.what(), ")");
  }
  if (!j.is_object()) fail(path.string(), ": safetensors header is not a JSON object");

  const uint64_t data_size = file_size - 8 - header_len;
  std::string payload(data_size, '\0');
  in.read(payload.data(), static_cast<std::streamsize>(data_size));
  if (!in) fail(path.string(), ": truncated data section");

  SafetensorsFile out;
  std::vector<std::pair<std::pair<uint64_t, uint64_t>, std::string>> ranges;  // for overlaps
  for (auto& [name, info] : j.items()) {
    if (name == "__metadata__") {
      for (auto& [k, v] : info.items()) {
        if (!v.is_string()) fail(path.string(), ": metadata value '", k, "' is not a string");
        out.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    try {
      const std::string dtype = info.at("dtype").get<std::string>();
      if (dtype != "F32")
        fail(path.string(), ": tensor '", name, "' has dtype ", dtype, ", expected F32");
      Shape shape = info.at("shape").get<Shape>();
      auto offsets = info.at("data_offsets").get<std::vector<uint64_t>>();
      // The element count, overflow-checked: it can never exceed what the file holds.
      uint64_t count = 1;
      for (int64_t d : shape) {
        if (d < 0) fail(path.string(), ": tensor '", name, "' has a negative extent in its shape");
        if (d != 0 && count > data_size / sizeof(float) / static_cast<uint64_t>(d))
          fail(path.string(), ": tensor '", name, "' shape ", shape_string(shape),
               " holds more values than the file's ", data_size, "-byte data section");
        count *= static_cast<uint64_t>(d);
      }
      const uint64_t bytes = count * sizeof(float);
      if (offsets.size() != 2 || offsets[1] < offsets[0] || offsets[1] > data_size ||
          offsets[1] - offsets[0] != bytes)
        fail(path.string(), ": tensor '", name, "' offsets do not match its shape ",
             shape_string(shape), " within a data section of ", data_size, " bytes");
      HostTensor t(shape);
      if (bytes > 0) {
        std::memcpy(t.data.data(), payload.data() + offsets[0], bytes);  // x86-64: LE host
        ranges.push_back({{offsets[0], offsets[1]}, name});
      }
      out.tensors.emplace(name, std::move(t));
    } catch (const nlohmann::json::exception& e) {
      fail(path.string(), ": tensor '", name, "' has a malformed header entry (", e.what(), ")");
    }
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first.first < ranges[i - 1].first.second)
      fail(path.string(), ": tensors '", ranges[i - 1].second, "' and '", ranges[i].second,
           "' share bytes of the data section");
  return out;
}

void write_safetensors(const std::filesystem::path& path, const SafetensorsFile& file) {
  nlohmann::json header = nlohmann::json::object();
  if (!file.metadata.empty()) header["__metadata__"] = file.metadata;
  uint64_t offset = 0;
  for (const auto& [name, t] : file.tensors) {  // std::map: sorted, reproducible files
    FN_ASSERT(static_cast<int64_t>(t.data.size()) == element_count(t.shape));
    const uint64_t bytes = t.data.size() * sizeof(float);
    header[name] = {
        {"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');  // align the data section to 8 bytes
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) fail("cannot write model file ", path.string());
  unsigned char len_bytes[8];
  for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<unsigned char>(h.size() >> (8 * i));
  out.write(reinterpret_cast<const char*>(len_bytes), 8);
  out.write(h.data(), static_cast<std::streamsize>(h.size()));
  for (const auto& [name, t] : file.tensors)
    out.write(reinterpret_cast<const char*>(t.data.data()),
              static_cast<std::streamsize>(t.data.size() * sizeof(float)));
  if (!out) fail("error while writing model file ", path.string());
}

}  // namespace facenet
