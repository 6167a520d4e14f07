// The search snapshot beside a gallery (<gallery>.snapshot): the embedding matrix, its ids and
// the identities of one committed generation, memory-mapped by readers so that `identify`
// skips reading every row out of SQLite. SQLite stays the source of truth: the snapshot is
// written from a load_all whose per-row checksums were verified, stamped with the generation
// and a key of the gallery and its last write (Gallery::load_for_search), and a reader uses it
// only when both match and the hash of the
// whole file matches the one in its header.
//
// Layout (little-endian; offsets from the start of the file):
//   [0, 4096)  header: magic "FNGSNAP1", then the uint64 fields of SnapshotHeader
//   vectors    rows x dim float32, from offset 4096 (page-aligned in the mapping)
//   ids        rows int64 embedding ids, then rows int64 identity ids
//   norms      rows float32: each row's squared_norm() (knn_cpu_kernels.h), so that a reader's
//              index needs no pass over the rows (CpuFlatIndex::borrow)
//   strings    the model name, then per identity: int64 id, int64 embeddings, int64 created_at,
//              uint32 name bytes, uint32 metadata bytes, name, metadata
// The header's payload_hash is gallery_hash64 of [4096, file size); header_hash covers the
// header fields before it. Checking costs one read of the file (measured in tools/
// bench_gallery.cpp), far below re-reading SQLite. The rows are not copied: the matrix a reader
// gets points into the mapping, which the index searches in place (CpuFlatIndex::borrow).
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>

#include "engine/core/error.h"
#include "engine/search/gallery.h"
#include "engine/search/knn_cpu_kernels.h"

namespace facenet {

namespace {

constexpr char kMagic[8] = {'F', 'N', 'G', 'S', 'N', 'A', 'P', '2'};  // 2: norms
constexpr uint64_t kHeaderBytes = 4096;
constexpr uint64_t kPayloadSeed = 0x534E4150;  // "SNAP"
constexpr uint64_t kMaxDim = 1 << 16;

struct SnapshotHeader {
  char magic[8];
  uint64_t generation, key, rows, dim, identities;
  uint64_t vectors_at, ids_at, norms_at, strings_at, strings_bytes, file_bytes;
  uint64_t payload_hash, header_hash;  // header_hash: of the bytes before it
};
static_assert(sizeof(SnapshotHeader) <= kHeaderBytes, "the header fits its page");

uint64_t header_hash(const SnapshotHeader& h) {
  return gallery_hash64(&h, offsetof(SnapshotHeader, header_hash), 0x48454144);
}

// A read-only mapping of a whole file, unmapped when it goes.
class Mapping {
 public:
  explicit Mapping(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    struct stat st {};
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) {
      size_ = static_cast<size_t>(st.st_size);
      void* p = mmap(nullptr, size_, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
      data_ = p == MAP_FAILED ? nullptr : static_cast<const unsigned char*>(p);
    }
    ::close(fd);
  }
  ~Mapping() {
    if (data_) munmap(const_cast<unsigned char*>(data_), size_);
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  const unsigned char* data() const { return data_; }
  size_t size() const { return data_ ? size_ : 0; }

 private:
  const unsigned char* data_ = nullptr;
  size_t size_ = 0;
};

// Bounds-checked sequential reads of the strings section.
struct Cursor {
  const unsigned char* p;
  uint64_t left;
  template <typename T>
  bool get(T& v) {
    if (left < sizeof(T)) return false;
    std::memcpy(&v, p, sizeof(T));
    p += sizeof(T);
    left -= sizeof(T);
    return true;
  }
  bool get(std::string& s, uint64_t n) {
    if (left < n) return false;
    s.assign(reinterpret_cast<const char*>(p), n);
    p += n;
    left -= n;
    return true;
  }
};

bool reject(std::string* why, const char* reason) {
  if (why) *why = reason;
  return false;
}

// a + b <= limit without overflow.
bool fits(uint64_t a, uint64_t b, uint64_t limit) {
  return a <= limit && b <= limit - a;
}

bool parse(const unsigned char* data, size_t size, int64_t generation, int64_t key,
           GalleryMatrix& m, std::string* why) {
  if (size < kHeaderBytes) return reject(why, "shorter than its header");
  SnapshotHeader h;
  std::memcpy(&h, data, sizeof h);
  if (std::memcmp(h.magic, kMagic, sizeof kMagic) != 0) return reject(why, "not a snapshot");
  if (h.header_hash != header_hash(h)) return reject(why, "its header hash does not match");
  if (h.generation != static_cast<uint64_t>(generation))
    return reject(why, "stale: written for another gallery generation");
  if (h.key != static_cast<uint64_t>(key)) return reject(why, "written for another gallery");
  if (h.file_bytes != size) return reject(why, "truncated or extended");
  if (h.dim == 0 || h.dim > kMaxDim || h.rows == 0 || h.identities == 0)
    return reject(why, "bad sizes in its header");
  // Every row takes dim floats, two ids and a norm, every identity at least 32 bytes of the
  // strings section: bounds that keep the products below from overflowing and the
  // allocations below within the file's size.
  if (h.rows > (size - kHeaderBytes) / (h.dim * sizeof(float) + 20) ||
      h.identities > h.strings_bytes / 32)
    return reject(why, "bad sizes in its header");
  const uint64_t vec_bytes = h.rows * h.dim * sizeof(float);
  if (h.rows > size || h.identities > size || h.vectors_at != kHeaderBytes ||
      !fits(h.vectors_at, vec_bytes, size) || h.ids_at != h.vectors_at + vec_bytes ||
      !fits(h.ids_at, 16 * h.rows, size) || h.norms_at != h.ids_at + 16 * h.rows ||
      !fits(h.norms_at, 4 * h.rows, size) || h.strings_at != h.norms_at + 4 * h.rows ||
      !fits(h.strings_at, h.strings_bytes, size) || h.strings_at + h.strings_bytes != size)
    return reject(why, "its sections are out of bounds");
  if (h.payload_hash !=
      gallery_hash64_chunked(data + kHeaderBytes, size - kHeaderBytes, kPayloadSeed))
    return reject(why, "its contents do not match their hash");

  Cursor c{data + h.strings_at, h.strings_bytes};
  uint32_t model_bytes = 0;
  if (!c.get(model_bytes) || !c.get(m.spec.model, model_bytes))
    return reject(why, "bad model name");
  m.spec.dim = static_cast<int>(h.dim);
  m.identities.resize(h.identities);
  for (Identity& who : m.identities) {
    uint32_t nb = 0, mb = 0;
    if (!c.get(who.id) || !c.get(who.embeddings) || !c.get(who.created_at) || !c.get(nb) ||
        !c.get(mb) || !c.get(who.name, nb) || !c.get(who.metadata, mb))
      return reject(why, "bad identity table");
  }
  if (c.left != 0) return reject(why, "bytes after the identity table");
  m.mapped_rows = reinterpret_cast<const float*>(data + h.vectors_at);  // 4096-aligned
  m.mapped_norms = reinterpret_cast<const float*>(data + h.norms_at);   // 8-aligned
  m.embedding_ids.resize(h.rows);
  m.identity_ids.resize(h.rows);
  std::memcpy(m.embedding_ids.data(), data + h.ids_at, 8 * h.rows);
  std::memcpy(m.identity_ids.data(), data + h.ids_at + 8 * h.rows, 8 * h.rows);
  return true;
}

// Removes a snapshot being written that could not be finished; false.
bool discard(const std::string& tmp) {
  std::error_code ec;
  std::filesystem::remove(tmp, ec);
  return false;
}

template <typename T>
void put(std::string& s, const T& v) {
  s.append(reinterpret_cast<const char*>(&v), sizeof v);
}

}  // namespace

std::optional<GalleryMatrix> read_gallery_snapshot(const std::string& path, int64_t generation,
                                                   int64_t key, std::string* why) {
  auto map = std::make_shared<const Mapping>(path);
  if (!map->data()) {
    if (why) *why = "missing or unreadable";
    return std::nullopt;
  }
  GalleryMatrix m;
  if (!parse(map->data(), map->size(), generation, key, m, why)) return std::nullopt;
  m.mapping = std::move(map);  // the rows stay where they are: searched in place
  return m;
}

bool write_gallery_snapshot(const std::string& path, const GalleryMatrix& m, int64_t generation,
                            int64_t key) {
  if (m.rows() == 0 || m.identities.empty()) return false;
  std::string strings;
  put(strings, static_cast<uint32_t>(m.spec.model.size()));
  strings += m.spec.model;
  for (const Identity& who : m.identities) {
    put(strings, who.id);
    put(strings, who.embeddings);
    put(strings, who.created_at);
    put(strings, static_cast<uint32_t>(who.name.size()));
    put(strings, static_cast<uint32_t>(who.metadata.size()));
    strings += who.name;
    strings += who.metadata;
  }
  SnapshotHeader h{};
  std::memcpy(h.magic, kMagic, sizeof kMagic);
  h.generation = static_cast<uint64_t>(generation);
  h.key = static_cast<uint64_t>(key);
  h.rows = m.rows();
  h.dim = static_cast<uint64_t>(m.spec.dim);
  h.identities = m.identities.size();
  h.vectors_at = kHeaderBytes;
  h.ids_at = h.vectors_at + m.rows() * m.spec.dim * sizeof(float);
  h.norms_at = h.ids_at + 16 * h.rows;
  h.strings_at = h.norms_at + 4 * h.rows;
  h.strings_bytes = strings.size();
  h.file_bytes = h.strings_at + h.strings_bytes;
  const size_t vec_bytes = m.rows() * m.spec.dim * sizeof(float), id_bytes = 8 * m.rows();
  std::vector<float> norms(m.rows());
#pragma omp parallel for
  for (int64_t i = 0; i < static_cast<int64_t>(m.rows()); ++i)
    norms[i] = knn_detail::squared_norm(m.row_data() + i * m.spec.dim, m.spec.dim);
  std::string head(kHeaderBytes, '\0');  // its hashes are written once the payload is

  // A name of its own (mkstemp: O_EXCL, so no other writer — thread or process — shares the
  // file, and a link planted at a predictable name is never followed).
  std::string tmp = path + ".tmp.XXXXXX";
  const int fd = mkstemp(tmp.data());
  if (fd < 0) return false;
  auto put_bytes = [fd](const void* data, size_t n, off_t at) {
    const auto* p = static_cast<const char*>(data);
    while (n > 0) {
      const ssize_t w = pwrite(fd, p, n, at);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return false;
      p += w, n -= static_cast<size_t>(w), at += w;
    }
    return true;
  };
  off_t at = 0;
  auto append = [&](const void* data, size_t n) {
    const bool ok = put_bytes(data, n, at);
    at += static_cast<off_t>(n);
    return ok;
  };
  bool ok = fchmod(fd, 0644) == 0 && append(head.data(), head.size()) &&
            append(m.row_data(), vec_bytes) && append(m.embedding_ids.data(), id_bytes) &&
            append(m.identity_ids.data(), id_bytes) && append(norms.data(), 4 * m.rows()) &&
            append(strings.data(), strings.size());
  // The payload hash is computed as a reader computes it: over the sections where they lie in
  // the file, read through a mapping.
  if (ok) {
    const Mapping written(tmp);
    ok = written.size() == h.file_bytes;
    if (ok)
      h.payload_hash = gallery_hash64_chunked(written.data() + kHeaderBytes,
                                              written.size() - kHeaderBytes, kPayloadSeed);
  }
  h.header_hash = header_hash(h);
  ok = ok && put_bytes(&h, sizeof h, 0);
  if (::close(fd) != 0 || !ok) return discard(tmp);
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);  // atomic: a reader sees the old file or the new one
  if (ec) std::filesystem::remove(tmp, ec);
  return !ec;
}

}  // namespace facenet
