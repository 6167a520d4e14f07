// Access keys of `facenet serve`: a file of `<key> ro|rw` lines, checked in constant time.
#pragma once

#include <string>
#include <vector>

namespace facenet::serve {

enum class Access { kNone, kReadOnly, kReadWrite };

class AccessKeys {
 public:
  // Lines `<key> ro|rw`; `#` starts a comment; blank lines are skipped. Throws facenet::Error
  // naming `what` and the line (never the key) for a malformed line, a key shorter than
  // kMinKeyLength, a repeated key, or a file without keys.
  static AccessKeys parse(const std::string& text, const std::string& what);
  static AccessKeys load(const std::string& path);
  static constexpr size_t kMinKeyLength = 16;

  // What `key` may do. Every stored key is compared in full, and each comparison takes a time
  // that depends only on the length of `key`, so the timing says nothing about stored keys.
  Access check(const std::string& key) const;
  size_t size() const { return keys_.size(); }

 private:
  struct Entry {
    std::string key;
    Access access;
  };
  std::vector<Entry> keys_;
};

}  // namespace facenet::serve
