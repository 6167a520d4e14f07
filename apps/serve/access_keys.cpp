// Access keys of `facenet serve`; see access_keys.h.
#include "apps/serve/access_keys.h"

#include <fstream>
#include <sstream>

#include "engine/core/error.h"

namespace facenet::serve {

namespace {

// 0 when equal; the loop runs over all of `given` whatever `stored` is, and never exits early.
unsigned char constant_time_differs(const std::string& given, const std::string& stored) {
  unsigned char diff = given.size() != stored.size() ? 1 : 0;
  if (stored.empty()) return 1;
  for (size_t i = 0; i < given.size(); ++i)
    diff |= static_cast<unsigned char>(given[i] ^ stored[i % stored.size()]);
  return diff;
}

}  // namespace

AccessKeys AccessKeys::parse(const std::string& text, const std::string& what) {
  AccessKeys out;
  std::istringstream in(text);
  int number = 0;
  for (std::string line; std::getline(in, line);) {
    ++number;
    line = line.substr(0, line.find('#'));
    std::istringstream fields(line);
    std::string key, role, extra;
    if (!(fields >> key)) continue;  // blank or comment
    if (!(fields >> role) || (fields >> extra) || (role != "ro" && role != "rw"))
      fail(what, ":", number, ": expected `<key> ro` or `<key> rw`");
    if (key.size() < kMinKeyLength)
      fail(what, ":", number, ": key shorter than ", kMinKeyLength, " characters");
    for (const Entry& e : out.keys_)
      if (e.key == key) fail(what, ":", number, ": the key of an earlier line again");
    out.keys_.push_back({key, role == "rw" ? Access::kReadWrite : Access::kReadOnly});
  }
  if (out.keys_.empty()) fail(what, ": no keys (expected lines `<key> ro|rw`)");
  return out;
}

AccessKeys AccessKeys::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("--api-keys: cannot read ", path);
  std::stringstream text;
  text << in.rdbuf();
  return parse(text.str(), path);
}

Access AccessKeys::check(const std::string& key) const {
  Access found = Access::kNone;
  for (const Entry& e : keys_)  // no early exit: every key is compared
    if (constant_time_differs(key, e.key) == 0) found = e.access;
  return found;
}

}  // namespace facenet::serve
