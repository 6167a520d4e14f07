// libFuzzer target: opening a gallery file and reading it (list, stats, load_all, check,
// load_for_search), and the search snapshot reader, on arbitrary bytes. Every bad input must
// come back as facenet::Error; anything else (a crash, a sanitizer report, another exception
// type) is a finding.
//
// The first byte picks what the rest is: even, an SQLite gallery file (opened read-only);
// odd, a snapshot file. For snapshots, bit 1 of that byte asks the target to write the correct
// hashes into the header first (offsets from engine/search/gallery_snapshot.cpp's
// SnapshotHeader), so that mutations reach the section and identity-table parsing behind the
// hash checks instead of stopping at them.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "engine/core/error.h"
#include "engine/search/gallery.h"

namespace {

namespace fs = std::filesystem;

const std::string& scratch_dir() {
  static const std::string dir = [] {
    const fs::path d = fs::temp_directory_path() / ("fuzz_gallery_" + std::to_string(getpid()));
    fs::create_directories(d);
    return d.string();
  }();
  return dir;
}

void write_file(const std::string& path, const uint8_t* data, size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
}

void remove_gallery(const std::string& path) {
  std::error_code ec;
  for (const char* suffix : {"", "-wal", "-shm", "-journal", ".snapshot"})
    fs::remove(path + suffix, ec);
}

void fuzz_gallery_file(const uint8_t* data, size_t size) {
  const std::string path = scratch_dir() + "/g.db";
  remove_gallery(path);
  write_file(path, data, size);
  try {
    facenet::GalleryOptions options;
    options.busy_timeout_ms = 0;
    facenet::Gallery g = facenet::Gallery::open(path, facenet::GalleryMode::kRead, options);
    (void)g.check();  // reports damage, never throws for it
    try {
      for (const auto& who : g.list_identities()) (void)g.has_identity(who.name);
    } catch (const facenet::Error&) {
    }
    try {
      (void)g.stats();
    } catch (const facenet::Error&) {
    }
    try {
      const facenet::GalleryMatrix m = g.load_all();
      for (int64_t id : m.identity_ids) (void)m.name_of(id);
    } catch (const facenet::Error&) {
    }
    (void)g.load_for_search();
  } catch (const facenet::Error&) {
  }
  remove_gallery(path);
}

void put64(std::string& s, size_t at, uint64_t v) {
  std::memcpy(s.data() + at, &v, 8);
}

void fuzz_snapshot(const uint8_t* data, size_t size, bool fix_hashes) {
  std::string bytes(reinterpret_cast<const char*>(data), size);
  int64_t generation = 0, created_at = 0;
  if (bytes.size() >= 24) {  // take the stamp from the header so the reader gets past it
    std::memcpy(&generation, bytes.data() + 8, 8);
    std::memcpy(&created_at, bytes.data() + 16, 8);
  }
  constexpr size_t kHeaderBytes = 4096, kPayloadHashAt = 8 + 8 * 11, kHeaderHashAt = 8 + 8 * 12;
  if (fix_hashes && bytes.size() >= kHeaderBytes) {
    put64(bytes, kPayloadHashAt,
          facenet::gallery_hash64_chunked(bytes.data() + kHeaderBytes, bytes.size() - kHeaderBytes,
                                          0x534E4150));
    put64(bytes, kHeaderHashAt, facenet::gallery_hash64(bytes.data(), kHeaderHashAt, 0x48454144));
  }
  const std::string path = scratch_dir() + "/s.snapshot";
  write_file(path, reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  std::string why;
  const auto m = facenet::read_gallery_snapshot(path, generation, created_at, &why);
  if (m) {
    for (int64_t id : m->identity_ids) {
      try {
        (void)m->name_of(id);
      } catch (const facenet::Error&) {
      }
    }
  }
  std::error_code ec;
  fs::remove(path, ec);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  if ((data[0] & 1) == 0) {
    fuzz_gallery_file(data + 1, size - 1);
  } else {
    fuzz_snapshot(data + 1, size - 1, (data[0] & 2) != 0);
  }
  return 0;
}
