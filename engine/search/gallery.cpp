// Durable gallery on SQLite: schema, model/dimension guard, batched enrolment, snapshot loads.
#include "engine/search/gallery.h"

#include <sqlite3.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/core/error.h"

// Vectors are stored as little-endian float32 by copying host memory.
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "gallery.cpp stores float32 vectors by memcpy and needs a little-endian host"
#endif

namespace facenet {

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

constexpr const char* kCountIdentities = "SELECT count(*) FROM identities";
constexpr const char* kCountEmbeddings = "SELECT count(*) FROM embeddings";
// Identity columns in the order identity_from_row reads them, with embedding counts.
constexpr const char* kListIdentities =
    "SELECT i.id, i.name, i.metadata, i.created_at, count(e.id) "
    "FROM identities i LEFT JOIN embeddings e ON e.identity_id = i.id "
    "GROUP BY i.id ORDER BY i.id";

int64_t unix_now() {
  return static_cast<int64_t>(std::time(nullptr));
}

double steady_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// An SQLite database starts with this 16-byte magic string.
bool has_sqlite_header(const std::string& path) {
  std::array<char, 16> head{};
  std::ifstream in(path, std::ios::binary);
  in.read(head.data(), head.size());
  return in.gcount() == static_cast<std::streamsize>(head.size()) &&
         std::memcmp(head.data(), "SQLite format 3", 16) == 0;
}

uint64_t size_if_exists(const fs::path& p) {
  std::error_code ec;
  const auto n = fs::file_size(p, ec);
  return ec ? 0 : static_cast<uint64_t>(n);
}

// Resets a cached statement and clears its bindings when a scope ends, whatever happened.
class StmtScope {
 public:
  explicit StmtScope(sqlite3_stmt* s) : s_(s) {}
  ~StmtScope() {
    sqlite3_reset(s_);
    sqlite3_clear_bindings(s_);
  }
  StmtScope(const StmtScope&) = delete;
  StmtScope& operator=(const StmtScope&) = delete;
  sqlite3_stmt* get() const { return s_; }

 private:
  sqlite3_stmt* s_;
};

std::string column_text(sqlite3_stmt* s, int col) {
  const auto* p = sqlite3_column_text(s, col);
  return p ? std::string(reinterpret_cast<const char*>(p), sqlite3_column_bytes(s, col))
           : std::string();
}

// Normalises metadata to compact JSON text; it must be a JSON object ("" means "{}").
std::string normalize_metadata(const std::string& name, const std::string& text) {
  if (text.empty()) return "{}";
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object())
    fail("metadata of identity '", name, "' must be a JSON object, got: ", text);
  return j.dump();
}

// Meta values are written by us as decimal text; anything else means a damaged file.
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

void validate_name(const std::string& name) {
  if (name.empty()) fail("identity name must not be empty");
}

void validate_spec(const EmbeddingSpec& spec) {
  if (spec.model.empty()) fail("embedding model name must not be empty");
  if (spec.dim <= 0 || spec.dim > kMaxDim)
    fail("embedding dimension of model '", spec.model, "' must be in [1, ", kMaxDim, "], got ",
         spec.dim);
}

// Checks a person's rows before any of them is written, so a bad input never half-enrols.
void validate_rows(const std::string& name, int dim, const float* x, size_t n,
                   const std::vector<std::string>& sources) {
  validate_name(name);
  if (n == 0) fail("no embeddings given for identity '", name, "'");
  if (x == nullptr) fail("null embedding data for identity '", name, "'");
  if (!sources.empty() && sources.size() != n)
    fail("identity '", name, "': ", sources.size(), " sources for ", n,
         " embeddings (give one per embedding or none)");
  for (size_t i = 0; i < n; ++i) {
    const float* row = x + i * static_cast<size_t>(dim);
    for (int k = 0; k < dim; ++k) {
      if (!std::isfinite(row[k]))
        fail("embedding ", i, sources.empty() ? "" : " (" + sources[i] + ")", " of identity '",
             name, "' has a non-finite value at index ", k);
    }
  }
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

// A gallery whose model is not fixed yet holds nothing: that is reported as "empty" by the
// callers, not as a model mismatch.
void require_same_model(const std::string& path, const EmbeddingSpec& have,
                        const std::string& want) {
  if (!want.empty() && !have.model.empty() && want != have.model)
    fail("gallery '", path, "' holds embeddings of model '", have.model, "', not model '", want,
         "'");
}

}  // namespace

// Statements prepared on first use and kept for the life of the connection.
struct Gallery::Statements {
  SqliteStmt get_meta, set_meta, application_id, lookup_id, insert_identity, insert_embedding,
      read_identity, list_identities, delete_identity, count_identities, count_embeddings, all_rows,
      rows_of, quick_check;
};

const std::string& GalleryMatrix::name_of(int64_t identity_id) const {
  auto it = std::lower_bound(identities.begin(), identities.end(), identity_id,
                             [](const Identity& a, int64_t id) { return a.id < id; });
  if (it == identities.end() || it->id != identity_id)
    fail("no identity with id ", identity_id, " among the loaded gallery rows");
  return it->name;
}

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

template <typename F>
auto Gallery::write_transaction(const char* what, F&& body) {
  require_writable(what);
  begin_write();
  try {
    auto result = body();
    commit();
    return result;
  } catch (...) {
    rollback();
    throw;
  }
}

template <typename F>
auto Gallery::read_snapshot(F&& body) {
  // One read transaction so every query sees the same committed state; inside a pending bulk
  // batch the open write transaction already is that snapshot.
  if (!sqlite3_get_autocommit(db_.get())) return body();
  exec("BEGIN");
  try {
    auto result = body();
    exec("COMMIT");
    return result;
  } catch (...) {
    rollback();
    throw;
  }
}

// ---- Meta and identities ---------------------------------------------------------------------

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

int64_t Gallery::lookup_id(const std::string& name) {
  StmtScope s(prepare(stmts_->lookup_id, "SELECT id FROM identities WHERE name=?"));
  sqlite3_bind_text(s.get(), 1, name.c_str(), -1, SQLITE_STATIC);
  return step(s.get(), "looking up an identity") ? sqlite3_column_int64(s.get(), 0) : 0;
}

int64_t Gallery::require_id(const std::string& name) {
  const int64_t id = lookup_id(name);
  if (id == 0)
    fail("unknown identity '", name, "' in gallery '", path_, "' (",
         count(stmts_->count_identities, kCountIdentities), " identities enrolled)");
  return id;
}

int64_t Gallery::insert_identity(const std::string& name, const std::string& metadata,
                                 int64_t now) {
  StmtScope s(prepare(stmts_->insert_identity,
                      "INSERT INTO identities(name, metadata, created_at) VALUES(?, ?, ?)"));
  sqlite3_bind_text(s.get(), 1, name.c_str(), -1, SQLITE_STATIC);
  sqlite3_bind_text(s.get(), 2, metadata.c_str(), -1, SQLITE_STATIC);
  sqlite3_bind_int64(s.get(), 3, now);
  step(s.get(), "adding an identity");
  return sqlite3_last_insert_rowid(db_.get());
}

void Gallery::insert_embeddings(int64_t identity_id, int dim, const float* x, size_t n,
                                const std::vector<std::string>& sources, int64_t now) {
  StmtScope s(prepare(stmts_->insert_embedding,
                      "INSERT INTO embeddings(identity_id, vector, source, created_at) "
                      "VALUES(?, ?, ?, ?)"));
  const int bytes = dim * static_cast<int>(sizeof(float));
  sqlite3_bind_int64(s.get(), 1, identity_id);
  sqlite3_bind_int64(s.get(), 4, now);
  for (size_t i = 0; i < n; ++i) {
    sqlite3_bind_blob(s.get(), 2, x + i * static_cast<size_t>(dim), bytes, SQLITE_STATIC);
    if (sources.empty()) {
      sqlite3_bind_null(s.get(), 3);
    } else {
      sqlite3_bind_text(s.get(), 3, sources[i].c_str(), -1, SQLITE_STATIC);
    }
    step(s.get(), "adding an embedding");
    sqlite3_reset(s.get());
  }
}

Identity Gallery::read_identity(int64_t id) {
  StmtScope s(prepare(stmts_->read_identity,
                      "SELECT id, name, metadata, created_at, "
                      "(SELECT count(*) FROM embeddings WHERE identity_id=identities.id) "
                      "FROM identities WHERE id=?"));
  sqlite3_bind_int64(s.get(), 1, id);
  FN_ASSERT(step(s.get(), "reading an identity"));
  return identity_from_row(s.get());
}

Identity Gallery::identity_from_row(sqlite3_stmt* s) {
  Identity who;
  who.id = sqlite3_column_int64(s, 0);
  who.name = column_text(s, 1);
  who.metadata = column_text(s, 2);
  who.created_at = sqlite3_column_int64(s, 3);
  who.embeddings = sqlite3_column_int64(s, 4);
  return who;
}

// ---- Writes ----------------------------------------------------------------------------------

Identity Gallery::add_identity(const std::string& name, const std::string& metadata_json) {
  validate_name(name);
  const std::string metadata = normalize_metadata(name, metadata_json);
  return write_transaction("add an identity", [&] {
    if (lookup_id(name) != 0) fail("identity '", name, "' already exists in gallery '", path_, "'");
    return read_identity(insert_identity(name, metadata, unix_now()));
  });
}

Identity Gallery::add_embeddings(const std::string& name, const EmbeddingSpec& spec, const float* x,
                                 size_t n, const std::vector<std::string>& sources) {
  validate_spec(spec);
  validate_rows(name, spec.dim, x, n, sources);
  return write_transaction("add embeddings", [&] {
    require_spec(spec);
    const int64_t id = require_id(name);
    insert_embeddings(id, spec.dim, x, n, sources, unix_now());
    return read_identity(id);
  });
}

Identity Gallery::enroll(const std::string& name, const EmbeddingSpec& spec, const float* x,
                         size_t n, const std::vector<std::string>& sources,
                         const std::string& metadata_json) {
  validate_spec(spec);
  validate_rows(name, spec.dim, x, n, sources);
  const std::string metadata = normalize_metadata(name, metadata_json);
  return write_transaction("enroll", [&] {
    require_spec(spec);
    const int64_t id = enroll_rows(name, metadata, spec.dim, x, n, sources, unix_now());
    return read_identity(id);
  });
}

int64_t Gallery::enroll_rows(const std::string& name, const std::string& metadata, int dim,
                             const float* x, size_t n, const std::vector<std::string>& sources,
                             int64_t now) {
  int64_t id = lookup_id(name);
  if (id == 0) id = insert_identity(name, metadata, now);
  insert_embeddings(id, dim, x, n, sources, now);
  return id;
}

int64_t Gallery::remove_identity(const std::string& name) {
  return write_transaction("remove an identity", [&] {
    const int64_t id = require_id(name);
    const int64_t removed = read_identity(id).embeddings;
    StmtScope s(prepare(stmts_->delete_identity, "DELETE FROM identities WHERE id=?"));
    sqlite3_bind_int64(s.get(), 1, id);
    step(s.get(), "removing an identity");  // embeddings go by ON DELETE CASCADE
    return removed;
  });
}

BulkEnroller Gallery::bulk_enroller(const EmbeddingSpec& spec, BulkOptions options) {
  require_writable("enroll");
  validate_spec(spec);
  // Fail on a wrong model now, before the caller computes any embedding.
  check_compatible(read_snapshot([&] { return read_spec(); }), spec);
  return BulkEnroller(*this, spec, std::move(options));
}

// ---- Reads -----------------------------------------------------------------------------------

bool Gallery::has_identity(const std::string& name) {
  return read_snapshot([&] { return lookup_id(name) != 0; });
}

Identity Gallery::find_identity(const std::string& name) {
  return read_snapshot([&] { return read_identity(require_id(name)); });
}

std::vector<Identity> Gallery::list_identities() {
  return read_snapshot([&] {
    StmtScope s(prepare(stmts_->list_identities, kListIdentities));
    std::vector<Identity> all;
    while (step(s.get(), "listing identities")) all.push_back(identity_from_row(s.get()));
    return all;
  });
}

GalleryStats Gallery::stats() {
  GalleryStats st = read_snapshot([&] {
    GalleryStats r;
    r.identities = count(stmts_->count_identities, kCountIdentities);
    r.embeddings = count(stmts_->count_embeddings, kCountEmbeddings);
    r.spec = read_spec();
    r.schema_version =
        static_cast<int>(parse_meta_int(path_, "schema_version", get_meta("schema_version")));
    const std::string created = get_meta("created_at");
    r.created_at = created.empty() ? 0 : parse_meta_int(path_, "created_at", created);
    return r;
  });
  st.file_bytes = size_if_exists(path_) + size_if_exists(path_ + "-wal");
  return st;
}

GalleryMatrix Gallery::load_all(const std::string& model) {
  return read_snapshot([&] {
    GalleryMatrix m;
    m.spec = read_spec();
    require_same_model(path_, m.spec, model);
    const int64_t n = count(stmts_->count_embeddings, kCountEmbeddings);
    if (n == 0 || m.spec.model.empty())
      fail("gallery '", path_, "' is empty: no embeddings enrolled yet");
    reserve_rows(m, static_cast<size_t>(n));
    StmtScope rows(
        prepare(stmts_->all_rows, "SELECT id, identity_id, vector FROM embeddings ORDER BY id"));
    read_rows(m, rows.get());
    StmtScope who(prepare(stmts_->list_identities, kListIdentities));
    while (step(who.get(), "listing identities")) {
      Identity id = identity_from_row(who.get());
      if (id.embeddings > 0) m.identities.push_back(std::move(id));
    }
    return m;
  });
}

GalleryMatrix Gallery::load_identity(const std::string& name, const std::string& model) {
  return read_snapshot([&] {
    GalleryMatrix m;
    m.spec = read_spec();
    require_same_model(path_, m.spec, model);
    Identity who = read_identity(require_id(name));
    if (who.embeddings == 0)
      fail("identity '", name, "' in gallery '", path_, "' has no embeddings enrolled");
    reserve_rows(m, static_cast<size_t>(who.embeddings));
    StmtScope rows(prepare(stmts_->rows_of,
                           "SELECT id, identity_id, vector FROM embeddings "
                           "WHERE identity_id=? ORDER BY id"));
    sqlite3_bind_int64(rows.get(), 1, who.id);
    read_rows(m, rows.get());
    m.identities.push_back(std::move(who));
    return m;
  });
}

void Gallery::reserve_rows(GalleryMatrix& m, size_t n) {
  m.vectors.reserve(n * static_cast<size_t>(m.spec.dim));
  m.embedding_ids.reserve(n);
  m.identity_ids.reserve(n);
}

void Gallery::read_rows(GalleryMatrix& m, sqlite3_stmt* rows) {
  const size_t bytes = static_cast<size_t>(m.spec.dim) * sizeof(float);
  while (step(rows, "reading embeddings")) {
    const int64_t id = sqlite3_column_int64(rows, 0);
    const void* blob = sqlite3_column_blob(rows, 2);
    const auto got = static_cast<size_t>(sqlite3_column_bytes(rows, 2));
    if (got != bytes)
      fail("gallery '", path_, "' is corrupt: embedding ", id, " has ", got, " bytes, expected ",
           bytes, " (", m.spec.dim, " float32)");
    const size_t at = m.vectors.size();
    m.vectors.resize(at + m.spec.dim);
    std::memcpy(m.vectors.data() + at, blob, bytes);
    m.embedding_ids.push_back(id);
    m.identity_ids.push_back(sqlite3_column_int64(rows, 1));
  }
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

// ---- BulkEnroller ----------------------------------------------------------------------------

BulkEnroller::BulkEnroller(Gallery& gallery, EmbeddingSpec spec, BulkOptions options)
    : gallery_(&gallery), spec_(std::move(spec)), options_(std::move(options)) {}

BulkEnroller::BulkEnroller(BulkEnroller&& other) noexcept
    : gallery_(other.gallery_),
      spec_(std::move(other.spec_)),
      options_(std::move(other.options_)),
      committed_(other.committed_),
      pending_(other.pending_),
      in_transaction_(other.in_transaction_),
      batch_started_(other.batch_started_) {
  other.in_transaction_ = false;
}

BulkEnroller::~BulkEnroller() {
  if (in_transaction_) gallery_->rollback();
}

void BulkEnroller::add(const std::string& name, const float* x, size_t n,
                       const std::vector<std::string>& sources, const std::string& metadata_json) {
  validate_rows(name, spec_.dim, x, n, sources);
  const std::string metadata = normalize_metadata(name, metadata_json);
  try {
    if (!in_transaction_) {
      gallery_->begin_write();
      in_transaction_ = true;
      batch_started_ = steady_seconds();
      gallery_->require_spec(spec_);
    }
    gallery_->enroll_rows(name, metadata, spec_.dim, x, n, sources, unix_now());
  } catch (...) {
    // An SQLite failure mid-person: drop the whole pending batch, keep what was committed.
    gallery_->rollback();
    in_transaction_ = false;
    pending_ = {};
    throw;
  }
  pending_.identities += 1;
  pending_.embeddings += static_cast<int64_t>(n);
  if (pending_.embeddings >= options_.commit_rows ||
      steady_seconds() - batch_started_ >= options_.commit_seconds)
    commit_pending();
}

BulkProgress BulkEnroller::finish() {
  if (in_transaction_) commit_pending();
  return committed_;
}

void BulkEnroller::commit_pending() {
  in_transaction_ = false;
  try {
    gallery_->commit();
  } catch (...) {
    gallery_->rollback();
    pending_ = {};
    throw;
  }
  committed_.identities += pending_.identities;
  committed_.embeddings += pending_.embeddings;
  committed_.commits += 1;
  pending_ = {};
  if (options_.on_commit) options_.on_commit(committed_);
}

}  // namespace facenet
