// Gallery contents: identity lookups, enrolment (one call or a BulkEnroller), removal, reads
// and snapshot loads into a GalleryMatrix.
#include "engine/search/gallery.h"

#include <sqlite3.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "engine/core/error.h"
#include "engine/search/gallery_sqlite.h"

// Vectors are stored as little-endian float32 by copying host memory.
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "gallery_identities.cpp stores float32 vectors by memcpy and needs a little-endian host"
#endif

namespace facenet {

using namespace gallery_detail;  // the private SQLite helpers of gallery_sqlite.h

namespace {

namespace fs = std::filesystem;

constexpr const char* kCountIdentities = "SELECT count(*) FROM identities";
constexpr const char* kCountEmbeddings = "SELECT count(*) FROM embeddings";
// Identity columns in the order identity_from_row reads them, with embedding counts.
constexpr const char* kListIdentities =
    "SELECT i.id, i.name, i.metadata, i.created_at, count(e.id) "
    "FROM identities i LEFT JOIN embeddings e ON e.identity_id = i.id "
    "GROUP BY i.id ORDER BY i.id";

double steady_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

uint64_t size_if_exists(const fs::path& p) {
  std::error_code ec;
  const auto n = fs::file_size(p, ec);
  return ec ? 0 : static_cast<uint64_t>(n);
}

// Normalises metadata to compact JSON text; it must be a JSON object ("" means "{}").
std::string normalize_metadata(const std::string& name, const std::string& text) {
  if (text.empty()) return "{}";
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object())
    fail("metadata of identity '", name, "' must be a JSON object, got: ", text);
  return j.dump();
}

// Length of the UTF-8 sequence at s[i] and its code point; 0 when it is not valid UTF-8
// (truncated, overlong, a surrogate, beyond U+10FFFF).
size_t utf8_sequence(const std::string& s, size_t i, uint32_t& cp) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
  const unsigned char c = b(0);
  size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
  if (n == 0 || i + n > s.size()) return 0;
  cp = n == 1 ? c : c & (0x7F >> n);
  for (size_t k = 1; k < n; ++k) {
    if ((b(k) & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (b(k) & 0x3F);
  }
  static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return n;
}

// Checks a person's rows before any of them is written, so a bad input never half-enrols.
void validate_rows(const std::string& name, int dim, const float* x, size_t n,
                   const std::vector<std::string>& sources) {
  Gallery::validate_name(name);
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

// A gallery whose model is not fixed yet holds nothing: that is reported as "empty" by the
// callers, not as a model mismatch.
void require_same_model(const std::string& path, const EmbeddingSpec& have,
                        const std::string& want) {
  if (!want.empty() && !have.model.empty() && want != have.model)
    fail("gallery '", path, "' holds embeddings of model '", have.model, "', not model '", want,
         "'");
}

}  // namespace

const std::string& GalleryMatrix::name_of(int64_t identity_id) const {
  auto it = std::lower_bound(identities.begin(), identities.end(), identity_id,
                             [](const Identity& a, int64_t id) { return a.id < id; });
  if (it == identities.end() || it->id != identity_id)
    fail("no identity with id ", identity_id, " among the loaded gallery rows");
  return it->name;
}

void Gallery::validate_name(const std::string& name) {
  if (name.empty()) fail("identity name must not be empty");
  for (size_t i = 0; i < name.size();) {
    uint32_t cp = 0;
    const size_t n = utf8_sequence(name, i, cp);
    if (n == 0)
      fail("identity name is not valid UTF-8 (byte ", i, " of ", name.size(),
           "); names must be UTF-8 text");
    if (cp < 0x20 || cp == 0x7F || (cp >= 0x80 && cp <= 0x9F))
      fail("identity name has the control character U+", std::hex, cp, std::dec, " at byte ", i,
           "; names must be printable text");
    i += n;
  }
}

// ---- Transactions ----------------------------------------------------------------------------

template <typename F>
auto Gallery::write_transaction(const char* what, F&& body) {
  require_writable(what);
  begin_write();
  try {
    auto result = body();
    bump_generation();
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

// ---- Identities ------------------------------------------------------------------------------

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
  // The ids are chosen here (AUTOINCREMENT's next) so that each row's checksum, which covers
  // its id, is written with the row.
  int64_t next_id = count(stmts_->next_embedding_id,
                          "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE "
                          "name='embeddings'), 0) + 1");
  StmtScope s(prepare(stmts_->insert_embedding,
                      "INSERT INTO embeddings(identity_id, vector, source, created_at, id, "
                      "checksum) VALUES(?, ?, ?, ?, ?, ?)"));
  const int bytes = dim * static_cast<int>(sizeof(float));
  sqlite3_bind_int64(s.get(), 1, identity_id);
  sqlite3_bind_int64(s.get(), 4, now);
  for (size_t i = 0; i < n; ++i, ++next_id) {
    const float* row = x + i * static_cast<size_t>(dim);
    sqlite3_bind_blob(s.get(), 2, row, bytes, SQLITE_STATIC);
    sqlite3_bind_int64(s.get(), 5, next_id);
    sqlite3_bind_int64(
        s.get(), 6,
        checksum_column(embedding_checksum(next_id, identity_id, row, static_cast<size_t>(bytes))));
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

std::string Gallery::identity_name(int64_t id) {
  SqliteStmt local;
  StmtScope s(prepare(local, "SELECT name FROM identities WHERE id=?"));
  sqlite3_bind_int64(s.get(), 1, id);
  return step(s.get(), "reading an identity") ? column_text(s.get(), 0) : "<no such identity>";
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
                             int64_t now, bool replace) {
  int64_t id = lookup_id(name);
  if (id == 0) {
    id = insert_identity(name, metadata, now);
  } else if (replace) {
    SqliteStmt del;
    StmtScope s(prepare(del, "DELETE FROM embeddings WHERE identity_id=?"));
    sqlite3_bind_int64(s.get(), 1, id);
    step(s.get(), "replacing an identity's embeddings");
  }
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
    StmtScope rows(prepare(stmts_->all_rows, has_checksums_
                                                 ? "SELECT id, identity_id, vector, checksum FROM "
                                                   "embeddings ORDER BY id"
                                                 : "SELECT id, identity_id, vector, NULL FROM "
                                                   "embeddings ORDER BY id"));
    read_rows(m, rows.get());
    StmtScope who(prepare(stmts_->list_identities, kListIdentities));
    while (step(who.get(), "listing identities")) {
      Identity id = identity_from_row(who.get());
      if (id.embeddings > 0) m.identities.push_back(std::move(id));
    }
    return m;
  });
}

int64_t Gallery::snapshot_key() {
  return read_snapshot([&] {
    const std::string created = get_meta("created_at"), token = get_meta("write_token");
    const int64_t key[2] = {created.empty() ? 0 : parse_meta_int(path_, "created_at", created),
                            token.empty() ? 0 : parse_meta_int(path_, "write_token", token)};
    return static_cast<int64_t>(gallery_hash64(key, sizeof key, 0x4B4559));
  });
}

GalleryMatrix Gallery::load_for_search(const std::string& model) {
  // The snapshot is keyed on the generation and on one value standing for this gallery and
  // this write (snapshot_key), read in one read transaction with the spec.
  struct Stamp {
    int64_t generation, key;
    EmbeddingSpec spec;
  };
  const Stamp stamp = read_snapshot([&] {
    return Stamp{generation(), snapshot_key(), read_spec()};
  });
  require_same_model(path_, stamp.spec, model);
  // Generation 0: a schema 1 file that no writer of this version has stamped; nothing to key
  // a snapshot on.
  // Inside an open write transaction (a bulk enrolment's batch) the rows are not committed:
  // no snapshot is read or written for them.
  const bool committed = sqlite3_get_autocommit(db_.get()) != 0;
  if (stamp.generation > 0 && committed) {
    std::optional<GalleryMatrix> m =
        read_gallery_snapshot(snapshot_path(), stamp.generation, stamp.key);
    if (m && m->spec.model == stamp.spec.model && m->spec.dim == stamp.spec.dim)
      return std::move(*m);
  }
  GalleryMatrix m = load_all(model);
  // A writer may have committed since the stamp was read: stamp what load_all saw instead.
  const int64_t seen = read_snapshot([&] { return generation(); });
  if (stamp.generation > 0 && committed && seen == stamp.generation)
    write_gallery_snapshot(snapshot_path(), m, stamp.generation, stamp.key);
  return m;
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
    StmtScope rows(prepare(stmts_->rows_of, has_checksums_
                                                ? "SELECT id, identity_id, vector, checksum FROM "
                                                  "embeddings WHERE identity_id=? ORDER BY id"
                                                : "SELECT id, identity_id, vector, NULL FROM "
                                                  "embeddings WHERE identity_id=? ORDER BY id"));
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
    const int64_t identity_id = sqlite3_column_int64(rows, 1);
    const bool unsummed = sqlite3_column_type(rows, 3) == SQLITE_NULL;
    if (unsummed ? has_checksums_
                 : sqlite3_column_int64(rows, 3) !=
                       checksum_column(embedding_checksum(id, identity_id, blob, bytes))) {
      fail("gallery '", path_, "' is damaged: embedding ", id, " of identity ", identity_id, " ('",
           identity_name(identity_id), "')",
           unsummed ? " has no checksum" : " does not match its checksum",
           " (run: facenet gallery check --gallery ", path_, ")");
    }
    const size_t at = m.vectors.size();
    m.vectors.resize(at + m.spec.dim);
    std::memcpy(m.vectors.data() + at, blob, bytes);
    m.embedding_ids.push_back(id);
    m.identity_ids.push_back(identity_id);
  }
}

// ---- Integrity check -----------------------------------------------------------------------

GalleryCheck Gallery::check() {
  GalleryCheck c;
  try {
    c.sqlite = quick_check();
    read_snapshot([&] {
      const bool has_column = has_checksums_;
      const char* sql = has_column
                            ? "SELECT e.id, e.identity_id, e.vector, i.name, e.checksum FROM "
                              "embeddings e LEFT JOIN identities i ON i.id = e.identity_id "
                              "ORDER BY e.id"
                            : "SELECT e.id, e.identity_id, e.vector, i.name, NULL FROM "
                              "embeddings e LEFT JOIN identities i ON i.id = e.identity_id "
                              "ORDER BY e.id";
      SqliteStmt local;
      StmtScope rows(prepare(local, sql));
      const int dim = read_spec().dim;
      while (step(rows.get(), "checking the embeddings")) {
        ++c.rows;
        DamagedRow d;
        d.embedding_id = sqlite3_column_int64(rows.get(), 0);
        d.identity_id = sqlite3_column_int64(rows.get(), 1);
        d.identity = column_text(rows.get(), 3);
        const auto bytes = static_cast<size_t>(sqlite3_column_bytes(rows.get(), 2));
        const void* blob = sqlite3_column_blob(rows.get(), 2);
        if (sqlite3_column_type(rows.get(), 3) == SQLITE_NULL) {
          d.problem = "belongs to no identity";
        } else if (dim > 0 && bytes != static_cast<size_t>(dim) * sizeof(float)) {
          d.problem = "has " + std::to_string(bytes) + " bytes, expected " +
                      std::to_string(dim * sizeof(float));
        } else if (sqlite3_column_type(rows.get(), 4) == SQLITE_NULL) {
          ++c.unverified;
          if (has_column) d.problem = "has no checksum";
        } else if (sqlite3_column_int64(rows.get(), 4) !=
                   checksum_column(
                       embedding_checksum(d.embedding_id, d.identity_id, blob, bytes))) {
          d.problem = "does not match its checksum";
        }
        if (!d.problem.empty()) c.damaged.push_back(std::move(d));
      }
      return 0;
    });
  } catch (const Error& e) {
    c.error = e.what();
  }
  return c;
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
                       const std::vector<std::string>& sources, const std::string& metadata_json,
                       bool replace) {
  validate_rows(name, spec_.dim, x, n, sources);
  const std::string metadata = normalize_metadata(name, metadata_json);
  try {
    if (!in_transaction_) {
      gallery_->begin_write();
      in_transaction_ = true;
      batch_started_ = steady_seconds();
      gallery_->require_spec(spec_);
      gallery_->bump_generation();
    }
    gallery_->enroll_rows(name, metadata, spec_.dim, x, n, sources, unix_now(), replace);
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
