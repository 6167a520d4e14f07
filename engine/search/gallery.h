// Durable gallery of enrolled identities and their face embeddings, stored in one SQLite file.
//
// Layout (schema version 2, WAL journal, foreign keys on):
//   meta(key TEXT PRIMARY KEY, value TEXT)   schema_version, model, dim, created_at, generation,
//                                            write_token (random, new with every write)
//   identities(id, name UNIQUE, metadata JSON, created_at)
//   embeddings(id, identity_id -> identities ON DELETE CASCADE, vector BLOB, source, created_at,
//              checksum)
// A vector is `dim` little-endian float32 values. `checksum` is embedding_checksum() of the
// row's id, identity id and vector bytes; every load verifies it and a mismatch is an error
// naming the row and its identity. `generation` is bumped in the same transaction as every
// write, so a reader can tell whether a cached snapshot (<gallery>.snapshot, see
// load_for_search) still shows the committed state.
// Schema 1 files (no checksum column, no generation) are migrated when first opened for
// writing: the column is added and filled from the rows as they are then, in one transaction.
// Opened read-only they stay readable, their rows unverified (check() counts them).
// Identity names are valid UTF-8 without control characters (C0, DEL, C1); others are refused. A
// gallery holds embeddings of exactly one model: the model name and dimension are fixed in `meta`
// at create time or by the first enrolment, and every later write of another model or dimension is
// refused. Enrolment only appends rows; nothing is ever retrained.
//
// Concurrency: any number of reader processes and one writer at a time (WAL). Every write runs
// in a transaction; a process killed at any point leaves every committed transaction intact and
// none of the uncommitted ones. Waits for a lock up to `busy_timeout_ms`, then fails.
//
// Errors: every caller or file mistake (missing/corrupt file, unknown name, model mismatch, bad
// shape) throws facenet::Error naming the gallery path and what was expected.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/model/embedding_spec.h"

struct sqlite3;
struct sqlite3_stmt;

namespace facenet {

// Owning handles for the SQLite C API (sqlite3.h stays out of this header).
struct SqliteCloser {
  void operator()(sqlite3* db) const;
};
struct SqliteFinalizer {
  void operator()(sqlite3_stmt* stmt) const;
};
using SqliteDb = std::unique_ptr<sqlite3, SqliteCloser>;
using SqliteStmt = std::unique_ptr<sqlite3_stmt, SqliteFinalizer>;

struct GalleryOptions {
  // Fixes the model at create time; empty model and dim 0 leave it to the first enrolment.
  EmbeddingSpec spec;
  int busy_timeout_ms = 10000;
  // FULL also survives power loss (an fsync per commit); NORMAL survives any process crash.
  bool fsync_every_commit = false;
  // Opening for writing first runs check() and refuses a damaged gallery (SQLite's quick_check
  // is not "ok", or a checksum does not match): one read of the file, so writes never build on
  // damaged rows.
  bool verify_before_write = true;
};

enum class GalleryMode { kRead, kWrite };

struct Identity {
  int64_t id = 0;
  std::string name;
  std::string metadata;    // JSON object text, "{}" when none was given
  int64_t created_at = 0;  // Unix seconds
  int64_t embeddings = 0;  // number of enrolled embeddings
};

struct GalleryStats {
  int64_t identities = 0;
  int64_t embeddings = 0;
  EmbeddingSpec spec;       // empty model / dim 0 until the first enrolment fixes them
  uint64_t file_bytes = 0;  // database file plus its write-ahead log
  int schema_version = 0;
  int64_t created_at = 0;  // Unix seconds
};

// Every embedding of a gallery as one row-major N x dim float32 matrix, for building an index.
struct GalleryMatrix {
  EmbeddingSpec spec;
  std::vector<float> vectors;          // rows() * spec.dim
  std::vector<int64_t> embedding_ids;  // per row
  std::vector<int64_t> identity_ids;   // per row, the label of the row
  std::vector<Identity> identities;    // the identities the rows belong to, ascending id
  // Set by load_for_search when the rows are read in place from the memory-mapped snapshot:
  // `vectors` is then empty, the rows are at `mapped_rows`, and `mapping` keeps the file
  // mapped while any copy of this matrix lives.
  std::shared_ptr<const void> mapping;
  const float* mapped_rows = nullptr;
  const float* mapped_norms = nullptr;  // with mapped_rows: each row's squared_norm()

  size_t rows() const { return embedding_ids.size(); }
  // The rows x dim matrix, wherever it is.
  const float* row_data() const { return mapped_rows ? mapped_rows : vectors.data(); }
  // The name of identity `id`; throws facenet::Error when no row carries that id.
  const std::string& name_of(int64_t identity_id) const;
};

// One stored embedding whose bytes do not match its checksum (or cannot be read).
struct DamagedRow {
  int64_t embedding_id = 0;
  int64_t identity_id = 0;
  std::string identity;  // the identity's name, as far as it can be read
  std::string problem;
};

// What check() found: SQLite's structural check and the per-row checksums.
struct GalleryCheck {
  std::string sqlite = "ok";  // PRAGMA quick_check's report, "ok" when clean
  int64_t rows = 0;           // embeddings read
  int64_t unverified = 0;     // rows without a checksum (schema 1, opened read-only)
  std::vector<DamagedRow> damaged;
  std::string error;  // a failure that stopped the check early (empty when it ran to the end)
  bool ok() const { return sqlite == "ok" && damaged.empty() && error.empty(); }
};

// The checksum of one stored embedding: a 64-bit hash of its id, its identity's id and its
// vector bytes (gallery_hash64 below). Stable across versions: it is stored in the file.
uint64_t embedding_checksum(int64_t embedding_id, int64_t identity_id, const void* vector,
                            size_t bytes);
// A fast non-cryptographic 64-bit hash (4 lanes of multiply-rotate over little-endian 64-bit
// words, then a splitmix finaliser): it detects damage, it does not resist forgery.
uint64_t gallery_hash64(const void* data, size_t bytes, uint64_t seed);
// gallery_hash64 of each 8 MiB chunk of `data` (seeded with seed and the chunk's index), the
// chunks hashed in parallel, then gallery_hash64 of the chunk digests: the same value on any
// number of threads. For large buffers read whole on every use (a gallery snapshot).
uint64_t gallery_hash64_chunked(const void* data, size_t bytes, uint64_t seed);
// gallery_hash64 fed in pieces: the same digest as one call over the concatenated bytes.
class GalleryHasher {
 public:
  explicit GalleryHasher(uint64_t seed);
  void update(const void* data, size_t bytes);
  uint64_t digest() const;

 private:
  uint64_t lane_[4];
  unsigned char tail_[32];  // a block not yet complete
  size_t tail_bytes_ = 0;
  uint64_t total_ = 0;
};

// Reads a search snapshot file (see Gallery::load_for_search) written for `generation` of the
// gallery whose stamp is `key` (its creation time and last write token, hashed); nullopt (with the
// reason in `why`) when it is missing, stale, truncated or damaged in any way. Never trusts a byte
// before its hash is verified.
std::optional<GalleryMatrix> read_gallery_snapshot(const std::string& path, int64_t generation,
                                                   int64_t key, std::string* why = nullptr);
// Writes `m` as the snapshot of `generation` atomically (temp file + rename); false when the
// folder is not writable (a snapshot is a cache: failing to write it is not an error).
bool write_gallery_snapshot(const std::string& path, const GalleryMatrix& m, int64_t generation,
                            int64_t key);

// Committed totals of one BulkEnroller, reported after every commit.
struct BulkProgress {
  int64_t identities = 0;  // people whose embeddings were committed (each counted once per add)
  int64_t embeddings = 0;
  int64_t commits = 0;
};

struct BulkOptions {
  // A batch is committed at the first person boundary after this many embeddings are pending,
  // or after `commit_seconds` of pending work, whichever comes first. A crash loses at most the
  // pending batch, never part of a person.
  int64_t commit_rows = 8192;
  double commit_seconds = 2.0;
  std::function<void(const BulkProgress&)> on_commit;  // called after every commit
};

class BulkEnroller;

// One connection to a gallery file. Use a Gallery from one thread at a time; open one per
// thread or process for concurrency.
class Gallery {
 public:
  // Creates a new gallery file; fails when `path` exists.
  static Gallery create(const std::string& path, const GalleryOptions& options = {});
  // Opens an existing gallery; fails when it is missing, not a gallery, corrupt or too new.
  static Gallery open(const std::string& path, GalleryMode mode,
                      const GalleryOptions& options = {});

  Gallery(Gallery&&) noexcept;
  Gallery& operator=(Gallery&&) noexcept;
  ~Gallery();

  const std::string& path() const { return path_; }
  GalleryMode mode() const { return mode_; }

  // Adds a person with no embeddings; fails when `name` exists. `metadata_json` must be a JSON
  // object (empty means "{}").
  Identity add_identity(const std::string& name, const std::string& metadata_json = "");
  // Appends `n` embeddings (n x d row-major) to the existing identity `name`. `sources` is empty
  // or holds one image path per row. Returns the identity with its new embedding count.
  Identity add_embeddings(const std::string& name, const EmbeddingSpec& spec, const float* x,
                          size_t n, const std::vector<std::string>& sources = {});
  // One-shot enrolment in one transaction: creates `name` when it is new (with
  // `metadata_json`; ignored for an existing name) and appends the embeddings.
  Identity enroll(const std::string& name, const EmbeddingSpec& spec, const float* x, size_t n,
                  const std::vector<std::string>& sources = {},
                  const std::string& metadata_json = "");
  // Streaming bulk enrolment committed in batches; see BulkEnroller.
  BulkEnroller bulk_enroller(const EmbeddingSpec& spec, BulkOptions options = {});

  // Removes `name` and all its embeddings; returns how many embeddings went with it.
  int64_t remove_identity(const std::string& name);

  bool has_identity(const std::string& name);
  // Throws naming `name` unless it is non-empty valid UTF-8 without control characters.
  static void validate_name(const std::string& name);
  // Fails with an error naming `name` and the gallery when there is no such identity.
  Identity find_identity(const std::string& name);
  std::vector<Identity> list_identities();
  GalleryStats stats();

  // All embeddings as one matrix, read from one consistent snapshot. `model` empty accepts the
  // gallery's model; another model fails naming both. An empty gallery (no embeddings) fails
  // with "gallery ... is empty" since there is nothing to search.
  GalleryMatrix load_all(const std::string& model = "");
  // The embeddings of one identity (for verification); fails when `name` is unknown.
  GalleryMatrix load_identity(const std::string& name, const std::string& model = "");

  // load_all through a memory-mapped snapshot of the matrix beside the gallery
  // (<path>.snapshot): used when its generation, gallery and hashes match, else load_all is
  // run (checksums verified) and the snapshot rewritten for the next reader. SQLite stays the
  // source of truth; a stale or damaged snapshot is ignored and replaced, never trusted.
  GalleryMatrix load_for_search(const std::string& model = "");
  std::string snapshot_path() const { return path_ + ".snapshot"; }
  // What load_for_search stamps a snapshot with besides the generation: a hash of the
  // gallery's creation time and its last write's random token (bump_generation).
  int64_t snapshot_key();
  // The committed write generation (0 for a schema 1 file never opened for writing).
  int64_t generation();

  // SQLite's structural check (PRAGMA quick_check): "ok", or the problems it found.
  std::string quick_check();
  // quick_check plus every embedding's checksum; never throws for damage, reports it.
  GalleryCheck check();

 private:
  friend class BulkEnroller;
  struct Statements;

  Gallery(std::string path, GalleryMode mode, SqliteDb db);
  void configure(const GalleryOptions& options);
  int validate_format();  // the schema version
  void migrate_to_checksums();
  void refuse_if_damaged();
  void bump_generation();
  static int64_t random_token();
  void require_writable(const char* what) const;

  // SQLite plumbing: cached prepared statements, stepping, errors mapped to facenet::Error.
  sqlite3_stmt* prepare(SqliteStmt& slot, const char* sql);
  bool step(sqlite3_stmt* s, const char* what);  // true on a row, false when done
  void exec(const char* sql);
  void check(int rc, const char* what) const;
  [[noreturn]] void fail_sqlite(int rc, const char* what) const;

  void begin_write();
  void commit();
  void rollback() noexcept;
  template <typename F>
  auto write_transaction(const char* what, F&& body);
  template <typename F>
  auto read_snapshot(F&& body);

  std::string get_meta(const char* key);
  void set_meta(const char* key, const std::string& value);
  EmbeddingSpec read_spec();
  void require_spec(const EmbeddingSpec& spec);
  void check_compatible(const EmbeddingSpec& have, const EmbeddingSpec& want) const;

  int64_t lookup_id(const std::string& name);  // 0 when unknown
  int64_t require_id(const std::string& name);
  int64_t insert_identity(const std::string& name, const std::string& metadata, int64_t now);
  void insert_embeddings(int64_t identity_id, int dim, const float* x, size_t n,
                         const std::vector<std::string>& sources, int64_t now);
  int64_t enroll_rows(const std::string& name, const std::string& metadata, int dim, const float* x,
                      size_t n, const std::vector<std::string>& sources, int64_t now,
                      bool replace = false);
  Identity read_identity(int64_t id);
  std::string identity_name(int64_t id);  // for messages; never fails on a missing id
  static Identity identity_from_row(sqlite3_stmt* s);
  static void reserve_rows(GalleryMatrix& m, size_t n);
  void read_rows(GalleryMatrix& m, sqlite3_stmt* rows);
  int64_t count(SqliteStmt& slot, const char* sql);

  std::string path_;
  GalleryMode mode_ = GalleryMode::kRead;
  bool has_checksums_ = true;  // false for a schema 1 file opened read-only
  SqliteDb db_;
  std::unique_ptr<Statements> stmts_;  // prepared once, reused (declared after db_: freed first)
};

// Writes many people in batched transactions: add() queues one person (created when new,
// appended to otherwise), a commit follows at the next batch boundary, finish() commits the rest.
// Destroying an unfinished enroller rolls back the pending batch only; committed ones stay.
// While a batch is pending the writer lock is held: other writers wait, readers do not.
// The enroller points at its Gallery: neither move nor destroy the Gallery while it lives.
class BulkEnroller {
 public:
  BulkEnroller(BulkEnroller&&) noexcept;
  BulkEnroller& operator=(BulkEnroller&&) = delete;
  ~BulkEnroller();

  // `replace`: an existing identity's embeddings are replaced by these (in the same batch)
  // instead of appended to.
  void add(const std::string& name, const float* x, size_t n,
           const std::vector<std::string>& sources = {}, const std::string& metadata_json = "",
           bool replace = false);
  // Commits the pending batch and returns the committed totals; the enroller stays usable.
  BulkProgress finish();
  const BulkProgress& committed() const { return committed_; }

 private:
  friend class Gallery;
  BulkEnroller(Gallery& gallery, EmbeddingSpec spec, BulkOptions options);
  void commit_pending();

  Gallery* gallery_;
  EmbeddingSpec spec_;
  BulkOptions options_;
  BulkProgress committed_;
  BulkProgress pending_;
  bool in_transaction_ = false;
  double batch_started_ = 0.0;  // seconds, steady clock
};

}  // namespace facenet
