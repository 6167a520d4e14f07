// The gallery file and its connection: schema, create/open with the format checks, SQLite
// plumbing and transactions, the meta table with the one-model guard, the integrity check.
#include "engine/search/gallery.h"

#include <sqlite3.h>

#include <array>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
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
constexpr int kSchemaVersion = 1;
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
  created_at INTEGER NOT NULL);
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
  g.validate_format();
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

void Gallery::validate_format() {
  const int64_t app_id = count(stmts_->application_id, "PRAGMA application_id");
  if (app_id != kApplicationId)
    fail("'", path_, "' is an SQLite database but not a facenet gallery (application_id ", app_id,
         ")");
  const std::string version = get_meta("schema_version");
  if (version.empty())
    fail("gallery '", path_, "' is corrupt: its meta table has no schema_version");
  if (parse_meta_int(path_, "schema_version", version) > kSchemaVersion)
    fail("gallery '", path_, "' has schema version ", version, "; this build reads up to ",
         kSchemaVersion, " (upgrade facenet)");
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
  spec.dim = dim.empty() ? 0 : static_cast<int>(parse_meta_int(path_, "dim", dim));
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

// ---- Integrity check -------------------------------------------------------------------------

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
