// safetensors container: see https://github.com/huggingface/safetensors (format section).
#include "engine/model/safetensors.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <vector>

#include "engine/core/error.h"
#include "engine/core/file_bytes.h"

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

// Parses the JSON header, refusing a key that appears twice in one object (nlohmann would keep
// the last silently, so two tensors of one name would read as one).
nlohmann::json parse_header(const std::string& header, const std::string& origin) {
  std::vector<std::set<std::string>> keys;  // one per open object
  std::string duplicate;
  auto on_event = [&](int, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using E = nlohmann::json::parse_event_t;
    if (event == E::object_start) keys.emplace_back();
    if (event == E::object_end && !keys.empty()) keys.pop_back();
    if (event == E::key && !keys.empty() && !keys.back().insert(parsed.get<std::string>()).second &&
        duplicate.empty())
      duplicate = parsed.get<std::string>();
    return true;
  };
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(header, on_event);
  } catch (const nlohmann::json::exception& e) {
    fail(origin, ": safetensors header is not valid JSON (", e.what(), ")");
  }
  if (!duplicate.empty()) fail(origin, ": safetensors header names '", duplicate, "' twice");
  if (!j.is_object()) fail(origin, ": safetensors header is not a JSON object");
  return j;
}

// A header array of integers, each in lo..hi; a float, string or out-of-range value (which
// nlohmann would truncate or wrap) is refused.
std::vector<int64_t> integers(const nlohmann::json& v, int64_t lo, int64_t hi,
                              const std::string& what) {
  if (!v.is_array()) fail(what, " is not an array (got ", v.dump(), ")");
  std::vector<int64_t> out;
  for (const auto& e : v) {
    const bool ok = e.is_number_unsigned()  ? e.get<uint64_t>() <= static_cast<uint64_t>(hi)
                    : e.is_number_integer() ? e.get<int64_t>() >= lo && e.get<int64_t>() <= hi
                                            : false;
    if (!ok && e.is_number_integer() && e.get<int64_t>() < lo)
      fail(what, " has a negative extent ", e.dump(), "; expected integers in ", lo, "..", hi);
    if (!ok) fail(what, " holds ", e.dump(), "; expected integers in ", lo, "..", hi);
    out.push_back(e.get<int64_t>());
  }
  return out;
}

}  // namespace

SafetensorsFile parse_safetensors(std::string_view bytes, const std::string& origin) {
  const uint64_t file_size = bytes.size();
  if (file_size < 8)
    fail(origin, ": not a safetensors file (shorter than its 8-byte header length)");
  const uint64_t header_len = read_le64(reinterpret_cast<const unsigned char*>(bytes.data()));
  if (header_len > kMaxHeaderBytes || 8 + header_len > file_size)
    fail(origin, ": not a safetensors file (header length ", header_len,
         " does not fit the file of ", file_size, " bytes)");
  const nlohmann::json j = parse_header(std::string(bytes.substr(8, header_len)), origin);
  const std::string_view payload = bytes.substr(8 + header_len);
  const uint64_t data_size = payload.size();

  SafetensorsFile out;
  std::vector<std::pair<std::pair<uint64_t, uint64_t>, std::string>> ranges;  // for overlaps
  for (auto& [name, info] : j.items()) {
    const std::string what = origin + ": tensor '" + name + "'";
    if (name == "__metadata__") {
      if (!info.is_object()) fail(origin, ": __metadata__ is not a JSON object");
      for (auto& [k, v] : info.items()) {
        if (!v.is_string()) fail(origin, ": metadata value '", k, "' is not a string");
        out.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    if (!info.is_object()) fail(what, " is not described by a JSON object");
    for (const char* field : {"dtype", "shape", "data_offsets"})
      if (!info.contains(field)) fail(what, " has no '", field, "'");
    if (!info.at("dtype").is_string() || info.at("dtype") != "F32")
      fail(what, " has dtype ", info.at("dtype").dump(), ", expected \"F32\"");
    const Shape shape = integers(info.at("shape"), 0, INT64_MAX, what + " shape");
    const std::vector<int64_t> offsets =
        integers(info.at("data_offsets"), 0, INT64_MAX, what + " data_offsets");
    // The element count, overflow-checked: it can never exceed what the file holds.
    uint64_t count = 1;
    for (int64_t d : shape) {
      if (d != 0 && count > data_size / sizeof(float) / static_cast<uint64_t>(d))
        fail(what, " shape ", shape_string(shape), " holds more values than the file's ", data_size,
             "-byte data section");
      count *= static_cast<uint64_t>(d);
    }
    const uint64_t bytes_needed = count * sizeof(float);
    if (offsets.size() != 2 || offsets[1] < offsets[0] ||
        static_cast<uint64_t>(offsets[1]) > data_size ||
        static_cast<uint64_t>(offsets[1] - offsets[0]) != bytes_needed)
      fail(what, " offsets do not match its shape ", shape_string(shape),
           " within a data section of ", data_size, " bytes");
    HostTensor t(shape);
    if (bytes_needed > 0) {  // never memcpy from/to an empty vector's null data()
      std::memcpy(t.data.data(), payload.data() + offsets[0], bytes_needed);  // x86-64: LE host
      ranges.push_back({{offsets[0], offsets[1]}, name});
    }
    out.tensors.emplace(name, std::move(t));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first.first < ranges[i - 1].first.second)
      fail(origin, ": tensors '", ranges[i - 1].second, "' and '", ranges[i].second,
           "' share bytes of the data section");
  return out;
}

SafetensorsFile read_safetensors(const std::filesystem::path& path) {
  return parse_safetensors(read_input_file(path, "model file"), path.string());
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
