// The gallery file and its connection: schema, create/open with the format checks, SQLite
// plumbing and transactions, the meta table with the one-model guard, the write generation, the
// checksums, the schema 1 -> 2 migration and the integrity check.
#include "engine/search/gallery.h"

#include <sqlite3.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "engine/core/error.h"
#include "engine/search/gallery_sqlite.h"

namespace facenet {

using namespace gallery_detail;  // the private SQLite helpers of gallery_sqlite.h

void SqliteCloser::operator()(sqlite3* db) const {
  sqlite3_close_v2(db);
}
void SqliteFinalizer::operator()(sqlite3_stmt* stmt) const {
  sqlite3_finalize(stmt);
}

namespace {

namespace fs = std::filesystem;

constexpr int32_t kApplicationId = 0x464E4731;  // "FNG1": marks the file as a facenet gallery
constexpr int kSchemaVersion = 2;               // 2: embeddings.checksum, meta generation
constexpr int kMaxDim = 1 << 16;

constexpr const char* kSchema = R"sql(
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE identities(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  name TEXT NOT NULL UNIQUE,
  metadata TEXT NOT NULL DEFAULT '{}',
  created_at INTEGER NOT NULL);
CREATE TABLE embeddings(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  identity_id INTEGER NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
  vector BLOB NOT NULL,
  source TEXT,
  created_at INTEGER NOT NULL,
  checksum INTEGER);
CREATE INDEX embeddings_by_identity ON embeddings(identity_id);
)sql";

// An SQLite database starts with this 16-byte magic string.
bool has_sqlite_header(const std::string& path) {
  std::array<char, 16> head{};
  std::ifstream in(path, std::ios::binary);
  in.read(head.data(), head.size());
  return in.gcount() == static_cast<std::streamsize>(head.size()) &&
         std::memcmp(head.data(), "SQLite format 3", 16) == 0;
}

SqliteDb open_connection(const std::string& path, int flags) {
  sqlite3* raw = nullptr;
  const int rc = sqlite3_open_v2(path.c_str(), &raw, flags, nullptr);
  SqliteDb db(raw);
  if (rc != SQLITE_OK)
    fail("cannot open gallery '", path, "': ", raw ? sqlite3_errmsg(raw) : sqlite3_errstr(rc));
  sqlite3_extended_result_codes(raw, 1);
  return db;
}

}  // namespace

namespace gallery_detail {

int64_t unix_now() {
  return static_cast<int64_t>(std::time(nullptr));
}

std::string column_text(sqlite3_stmt* s, int col) {
  const auto* p = sqlite3_column_text(s, col);
  return p ? std::string(reinterpret_cast<const char*>(p), sqlite3_column_bytes(s, col))
           : std::string();
}

int64_t parse_meta_int(const std::string& path, const char* key, const std::string& text) {
  size_t used = 0;
  int64_t v = 0;
  try {
    v = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size())
    fail("gallery '", path, "' is corrupt: meta '", key, "' is '", text, "', not an integer");
  return v;
}

void validate_spec(const EmbeddingSpec& spec) {
  if (spec.model.empty()) fail("embedding model name must not be empty");
  if (spec.dim <= 0 || spec.dim > kMaxDim)
    fail("embedding dimension of model '", spec.model, "' must be in [1, ", kMaxDim, "], got ",
         spec.dim);
}

}  // namespace gallery_detail

// ---- Opening ---------------------------------------------------------------------------------

Gallery::Gallery(std::string path, GalleryMode mode, SqliteDb db)
    : path_(std::move(path)),
      mode_(mode),
      db_(std::move(db)),
      stmts_(std::make_unique<Statements>()) {}

Gallery::Gallery(Gallery&&) noexcept = default;
Gallery& Gallery::operator=(Gallery&&) noexcept = default;
Gallery::~Gallery() {
  stmts_.reset();  // statements before the connection
}

Gallery Gallery::create(const std::string& path, const GalleryOptions& options) {
  if (fs::exists(path)) fail("cannot create gallery '", path, "': the file already exists");
  if (!options.spec.model.empty() || options.spec.dim != 0) validate_spec(options.spec);
  try {
    Gallery g(path, GalleryMode::kWrite,
              open_connection(path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE));
    g.exec("PRAGMA journal_mode=WAL");
    g.configure(options);
    g.begin_write();
    g.exec(kSchema);
    g.exec(("PRAGMA application_id=" + std::to_string(kApplicationId)).c_str());
    g.exec(("PRAGMA user_version=" + std::to_string(kSchemaVersion)).c_str());
    g.set_meta("schema_version", std::to_string(kSchemaVersion));
    g.set_meta("created_at", std::to_string(unix_now()));
    g.set_meta("generation", "1");
    g.set_meta("write_token", std::to_string(random_token()));
    if (!options.spec.model.empty()) {
      g.set_meta("model", options.spec.model);
      g.set_meta("dim", std::to_string(options.spec.dim));
    }
    g.commit();
    return g;
  } catch (...) {
    // Leave no half-made gallery behind.
    std::error_code ec;
    for (const char* suffix : {"", "-wal", "-shm", "-journal"}) fs::remove(path + suffix, ec);
    throw;
  }
}

Gallery Gallery::open(const std::string& path, GalleryMode mode, const GalleryOptions& options) {
  if (!fs::exists(path))
    fail("gallery '", path, "' does not exist (create it with: facenet gallery create)");
  if (!fs::is_regular_file(path)) fail("gallery '", path, "' is not a regular file");
  if (!has_sqlite_header(path))
    fail("'", path, "' is not a facenet gallery: not an SQLite database (corrupt or another file)");
  const int flags = mode == GalleryMode::kWrite ? SQLITE_OPEN_READWRITE : SQLITE_OPEN_READONLY;
  Gallery g(path, mode, open_connection(path, flags));
  g.configure(options);
  const int version = g.validate_format();
  g.has_checksums_ = version >= 2;
  if (mode == GalleryMode::kWrite) {
    if (options.verify_before_write) g.refuse_if_damaged();
    if (version < kSchemaVersion) g.migrate_to_checksums();
    g.has_checksums_ = true;
  }
  return g;
}

void Gallery::configure(const GalleryOptions& options) {
  check(sqlite3_busy_timeout(db_.get(), options.busy_timeout_ms), "setting the busy timeout");
  exec("PRAGMA foreign_keys=ON");
  if (mode_ == GalleryMode::kWrite) {
    exec(options.fsync_every_commit ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL");
    exec("PRAGMA journal_size_limit=67108864");  // shrink the WAL back to 64 MiB after checkpoints
  }
}

int Gallery::validate_format() {
  const int64_t app_id = count(stmts_->application_id, "PRAGMA application_id");
  if (app_id != kApplicationId)
    fail("'", path_, "' is an SQLite database but not a facenet gallery (application_id ", app_id,
         ")");
  const std::string version = get_meta("schema_version");
  if (version.empty())
    fail("gallery '", path_, "' is corrupt: its meta table has no schema_version");
  const int64_t v = parse_meta_int(path_, "schema_version", version);
  if (v > kSchemaVersion)
    fail("gallery '", path_, "' has schema version ", version, "; this build reads up to ",
         kSchemaVersion, " (upgrade facenet)");
  if (v < 1) fail("gallery '", path_, "' is corrupt: meta 'schema_version' is ", version);
  return static_cast<int>(v);
}

// Schema 1 -> 2: the checksum column, filled from the rows as they are now, and a generation.
void Gallery::migrate_to_checksums() {
  begin_write();
  try {
    // Another writer may have migrated it between validate_format() and our write lock.
    if (parse_meta_int(path_, "schema_version", get_meta("schema_version")) >= kSchemaVersion) {
      commit();
      return;
    }
    exec("ALTER TABLE embeddings ADD COLUMN checksum INTEGER");
    StmtScope rows(prepare(stmts_->check_rows,
                           "SELECT e.id, e.identity_id, e.vector, i.name, e.checksum FROM "
                           "embeddings e LEFT JOIN identities i ON i.id = e.identity_id "
                           "ORDER BY e.id"));
    StmtScope set(prepare(stmts_->set_checksum, "UPDATE embeddings SET checksum=? WHERE id=?"));
    while (step(rows.get(), "migrating the gallery to schema 2")) {
      const int64_t id = sqlite3_column_int64(rows.get(), 0);
      const uint64_t c = embedding_checksum(
          id, sqlite3_column_int64(rows.get(), 1), sqlite3_column_blob(rows.get(), 2),
          static_cast<size_t>(sqlite3_column_bytes(rows.get(), 2)));
      sqlite3_bind_int64(set.get(), 1, checksum_column(c));
      sqlite3_bind_int64(set.get(), 2, id);
      step(set.get(), "migrating the gallery to schema 2");
      sqlite3_reset(set.get());
    }
    exec(("PRAGMA user_version=" + std::to_string(kSchemaVersion)).c_str());
    set_meta("schema_version", std::to_string(kSchemaVersion));
    bump_generation();
    commit();
    has_checksums_ = true;
  } catch (...) {
    rollback();
    throw;
  }
  stmts_->check_rows.reset();  // prepared against the old column list
}

void Gallery::refuse_if_damaged() {
  const GalleryCheck c = check();
  if (c.ok()) return;
  std::string what = !c.error.empty()   ? c.error
                     : c.sqlite != "ok" ? "SQLite reports: " + c.sqlite.substr(0, 300)
                                        : std::to_string(c.damaged.size()) +
                                              " embedding(s) do not match their checksum, "
                                              "the first: embedding " +
                                              std::to_string(c.damaged[0].embedding_id) +
                                              " of identity '" + c.damaged[0].identity + "'";
  fail("gallery '", path_, "' is damaged (", what,
       "); refusing to write into it (see: facenet gallery check --gallery ", path_, ")");
}

// ---- SQLite plumbing -------------------------------------------------------------------------

[[noreturn]] void Gallery::fail_sqlite(int rc, const char* what) const {
  const char* msg = sqlite3_errmsg(db_.get());
  switch (rc & 0xff) {
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      fail("gallery '", path_, "' is corrupt or not a facenet gallery: ", msg);
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      fail("gallery '", path_, "' is locked by another process (", msg, ") while ", what,
           "; try again when the other writer is done");
    case SQLITE_READONLY:
      fail("gallery '", path_, "' is read-only (", msg, ") while ", what);
    case SQLITE_FULL:
      fail("gallery '", path_, "': disk full while ", what);
    default:
      fail("gallery '", path_, "': ", what, " failed: ", msg);
  }
}

void Gallery::check(int rc, const char* what) const {
  if (rc != SQLITE_OK) fail_sqlite(rc, what);
}

void Gallery::exec(const char* sql) {
  char* err = nullptr;
  const int rc = sqlite3_exec(db_.get(), sql, nullptr, nullptr, &err);
  sqlite3_free(err);  // sqlite3_errmsg still holds the message
  if (rc != SQLITE_OK) fail_sqlite(rc, sql);
}

sqlite3_stmt* Gallery::prepare(SqliteStmt& slot, const char* sql) {
  if (!slot) {
    sqlite3_stmt* raw = nullptr;
    check(sqlite3_prepare_v3(db_.get(), sql, -1, SQLITE_PREPARE_PERSISTENT, &raw, nullptr), sql);
    slot.reset(raw);
  }
  return slot.get();
}

// The single integer a one-row query returns (counts, pragmas).
int64_t Gallery::count(SqliteStmt& slot, const char* sql) {
  StmtScope s(prepare(slot, sql));
  FN_ASSERT(step(s.get(), sql));
  return sqlite3_column_int64(s.get(), 0);
}

bool Gallery::step(sqlite3_stmt* s, const char* what) {
  const int rc = sqlite3_step(s);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  fail_sqlite(rc, what);
}

void Gallery::require_writable(const char* what) const {
  if (mode_ != GalleryMode::kWrite)
    fail("gallery '", path_, "' was opened read-only; cannot ", what);
}

void Gallery::begin_write() {
  if (!sqlite3_get_autocommit(db_.get()))
    fail("gallery '", path_, "': a bulk enrolment is pending on this handle; finish it first");
  exec("BEGIN IMMEDIATE");  // take the writer lock now (waiting up to the busy timeout)
}

void Gallery::commit() {
  exec("COMMIT");
}

void Gallery::rollback() noexcept {
  if (!sqlite3_get_autocommit(db_.get()))
    sqlite3_exec(db_.get(), "ROLLBACK", nullptr, nullptr, nullptr);
}

// ---- Meta and the model guard ----------------------------------------------------------------

std::string Gallery::get_meta(const char* key) {
  StmtScope s(prepare(stmts_->get_meta, "SELECT value FROM meta WHERE key=?"));
  sqlite3_bind_text(s.get(), 1, key, -1, SQLITE_STATIC);
  return step(s.get(), "reading the gallery meta table") ? column_text(s.get(), 0) : std::string();
}

void Gallery::set_meta(const char* key, const std::string& value) {
  StmtScope s(prepare(stmts_->set_meta, "INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)"));
  sqlite3_bind_text(s.get(), 1, key, -1, SQLITE_STATIC);
  sqlite3_bind_text(s.get(), 2, value.c_str(), -1, SQLITE_STATIC);
  step(s.get(), "writing the gallery meta table");
}

EmbeddingSpec Gallery::read_spec() {
  EmbeddingSpec spec;
  spec.model = get_meta("model");
  const std::string dim = get_meta("dim");
  const int64_t d = dim.empty() ? 0 : parse_meta_int(path_, "dim", dim);
  if (d < 0 || d > kMaxDim || (d == 0) != spec.model.empty())
    fail("gallery '", path_, "' is corrupt: meta 'dim' is '", dim, "' for model '", spec.model,
         "' (expected 1..", kMaxDim, " with a model, none without)");
  spec.dim = static_cast<int>(d);
  return spec;
}

// Fixes the gallery's model on first use, and refuses any other model or dimension after.
void Gallery::require_spec(const EmbeddingSpec& spec) {
  validate_spec(spec);
  const EmbeddingSpec have = read_spec();
  if (have.model.empty()) {
    set_meta("model", spec.model);
    set_meta("dim", std::to_string(spec.dim));
    return;
  }
  check_compatible(have, spec);
}

void Gallery::check_compatible(const EmbeddingSpec& have, const EmbeddingSpec& want) const {
  if (have.model.empty()) return;
  if (have.model != want.model)
    fail("gallery '", path_, "' holds embeddings of model '", have.model,
         "'; refusing to add embeddings of model '", want.model,
         "' (one model per gallery: use another gallery file)");
  if (have.dim != want.dim)
    fail("gallery '", path_, "' holds ", have.dim, "-dimensional embeddings of model '", have.model,
         "'; refusing ", want.dim, "-dimensional ones");
}

// ---- Generation, checksums, integrity check --------------------------------------------------

int64_t Gallery::generation() {
  const std::string g = get_meta("generation");
  return g.empty() ? 0 : parse_meta_int(path_, "generation", g);
}

// Inside every write transaction, so a snapshot stamped with a generation shows exactly it.
// The random write token makes the stamp unique to this write: a generation number alone
// repeats when a gallery is restored from a backup, recreated within a second, or loses its
// last commit to a crash, and the next writes count up to it again with other contents.
void Gallery::bump_generation() {
  set_meta("generation", std::to_string(generation() + 1));
  set_meta("write_token", std::to_string(random_token()));
}

namespace {
// 63 random bits (a non-negative int64, as SQLite's meta text and parse_meta_int take it).
int64_t random_token_bits() {
  std::random_device rd;
  const uint64_t bits = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  return static_cast<int64_t>(bits >> 1);
}
}  // namespace

int64_t Gallery::random_token() {
  return random_token_bits();
}

namespace {
constexpr uint64_t kMul = 0x9E3779B97F4A7C15ull, kMul2 = 0xC2B2AE3D27D4EB4Full;
uint64_t rotl(uint64_t x, int r) {
  return (x << r) | (x >> (64 - r));
}
uint64_t word(const unsigned char* p) {
  uint64_t w;
  std::memcpy(&w, p, 8);
  return w;
}
}  // namespace

GalleryHasher::GalleryHasher(uint64_t seed)
    : lane_{seed ^ kMul, seed + kMul2, rotl(seed, 17) ^ kMul2, ~seed} {}

void GalleryHasher::update(const void* data, size_t bytes) {
  if (bytes == 0) return;  // data may be null (an empty SQLite blob)
  const auto* p = static_cast<const unsigned char*>(data);
  total_ += bytes;
  auto block = [&](const unsigned char* b) {
    for (int l = 0; l < 4; ++l) lane_[l] = rotl((lane_[l] ^ word(b + 8 * l)) * kMul, 29) * kMul2;
  };
  if (tail_bytes_ > 0) {  // complete the block a previous update left open
    const size_t take = std::min(bytes, sizeof tail_ - tail_bytes_);
    std::memcpy(tail_ + tail_bytes_, p, take);
    tail_bytes_ += take;
    p += take;
    bytes -= take;
    if (tail_bytes_ < sizeof tail_) return;
    block(tail_);
    tail_bytes_ = 0;
  }
  for (; bytes >= 32; p += 32, bytes -= 32) block(p);
  std::memcpy(tail_, p, bytes);
  tail_bytes_ = bytes;
}

uint64_t GalleryHasher::digest() const {
  uint64_t h = total_ * kMul;
  for (int l = 0; l < 4; ++l) h = rotl(h ^ lane_[l], 27) * kMul + kMul2;
  size_t i = 0;
  for (; i + 8 <= tail_bytes_; i += 8) h = rotl(h ^ word(tail_ + i), 31) * kMul;
  for (; i < tail_bytes_; ++i) h = rotl(h ^ tail_[i], 11) * kMul2;
  h ^= h >> 30;  // splitmix64 finaliser
  h *= 0xBF58476D1CE4E5B9ull;
  h ^= h >> 27;
  h *= 0x94D049BB133111EBull;
  return h ^ (h >> 31);
}

uint64_t gallery_hash64(const void* data, size_t bytes, uint64_t seed) {
  GalleryHasher h(seed);
  h.update(data, bytes);
  return h.digest();
}

uint64_t gallery_hash64_chunked(const void* data, size_t bytes, uint64_t seed) {
  constexpr size_t kChunk = size_t{8} << 20;
  const auto* p = static_cast<const unsigned char*>(data);
  const int64_t chunks = static_cast<int64_t>((bytes + kChunk - 1) / kChunk);
  std::vector<uint64_t> digests(chunks + 1);
  digests[chunks] = bytes;  // the length, so that no two lengths share a digest list
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    const size_t at = static_cast<size_t>(c) * kChunk;
    digests[c] = gallery_hash64(p + at, std::min(kChunk, bytes - at),
                                seed ^ (static_cast<uint64_t>(c) * 0x9E3779B97F4A7C15ull));
  }
  return gallery_hash64(digests.data(), digests.size() * sizeof(uint64_t), seed);
}

uint64_t embedding_checksum(int64_t embedding_id, int64_t identity_id, const void* vector,
                            size_t bytes) {
  const uint64_t seed = static_cast<uint64_t>(embedding_id) * 0x9E3779B97F4A7C15ull ^
                        static_cast<uint64_t>(identity_id);
  return gallery_hash64(vector, bytes, seed);
}

std::string Gallery::quick_check() {
  StmtScope s(prepare(stmts_->quick_check, "PRAGMA quick_check"));
  std::string report;
  while (step(s.get(), "checking the gallery")) {
    if (!report.empty()) report += '\n';
    report += column_text(s.get(), 0);
  }
  return report;
}

}  // namespace facenet
