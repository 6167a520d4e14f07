// Private to engine/search: the SQLite pieces both gallery files (gallery.cpp,
// gallery_identities.cpp) use: the statement cache, the statement scope, column and meta
// readers, the embedding spec check.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <string>

#include "engine/search/gallery.h"

namespace facenet {

// Statements prepared on first use and kept for the life of the connection.
struct Gallery::Statements {
  SqliteStmt get_meta, set_meta, application_id, lookup_id, insert_identity, insert_embedding,
      read_identity, list_identities, delete_identity, count_identities, count_embeddings, all_rows,
      rows_of, quick_check, next_embedding_id, check_rows, set_checksum;
};

namespace gallery_detail {

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

int64_t unix_now();
std::string column_text(sqlite3_stmt* s, int col);
// Meta values are written by us as decimal text; anything else means a damaged file.
int64_t parse_meta_int(const std::string& path, const char* key, const std::string& text);
void validate_spec(const EmbeddingSpec& spec);
// Checksums are stored in an INTEGER column: the same 64 bits, read as signed.
inline int64_t checksum_column(uint64_t c) {
  return static_cast<int64_t>(c);
}

}  // namespace gallery_detail

}  // namespace facenet
