// The CLI's per-face JSON fields; see face_json.h.
#include "apps/face_json.h"

#include <cstdio>

namespace facenet::cli {

nlohmann::json box_json(const FaceBox& b) {
  return {b.left, b.top, b.right, b.bottom};
}

nlohmann::json points_json(const std::vector<Point2f>& pts) {
  nlohmann::json a = nlohmann::json::array();
  for (const auto& p : pts) a.push_back({p.x, p.y});
  return a;
}

nlohmann::json detected_face_json(const FaceResult& f) {
  return {{"box", box_json(f.face.box)},
          {"score", f.face.score},
          {"landmarks68", points_json(f.face.landmarks)},
          {"landmarks5", points_json(f.face.landmarks5)}};
}

nlohmann::json face_position_json(size_t index, const FaceResult& f, bool crops) {
  if (crops) return nlohmann::json::object();
  return {{"face", index}, {"box", box_json(f.face.box)}};
}

namespace {

// Length of the valid UTF-8 sequence at s[i] (1-4), or 0 when the byte there starts none
// (RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF).
size_t utf8_sequence(const std::string& s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned c = b(i);
  if (c < 0x80) return 1;
  size_t n;
  unsigned lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;  // U+D800..DFFF are not characters
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (i + n > s.size() || b(i + 1) < lo || b(i + 1) > hi) return 0;
  for (size_t k = 2; k < n; ++k)
    if (b(i + k) < 0x80 || b(i + k) > 0xBF) return 0;
  return n;
}

void append_quoted(const std::string& s, std::string& out) {
  char esc[8];
  out += '"';
  for (size_t i = 0; i < s.size();) {
    const size_t n = utf8_sequence(s, i);
    const auto c = static_cast<unsigned char>(s[i]);
    if (n == 0) {
      std::snprintf(esc, sizeof esc, "\\udc%02x", c);
      out += esc;
      ++i;
      continue;
    }
    if (n == 1 && (c < 0x20 || c == '"' || c == '\\')) {
      const std::string q = nlohmann::json(std::string(1, static_cast<char>(c))).dump();
      out.append(q, 1, q.size() - 2);  // nlohmann's escape of the character, unquoted
    } else {
      out.append(s, i, n);
    }
    i += n;
  }
  out += '"';
}

void append_json(const nlohmann::json& j, std::string& out) {
  if (j.is_string()) return append_quoted(j.get_ref<const std::string&>(), out);
  if (j.is_object() || j.is_array()) {
    out += j.is_object() ? '{' : '[';
    bool first = true;
    for (auto it = j.begin(); it != j.end(); ++it, first = false) {
      if (!first) out += ',';
      if (j.is_object()) {
        append_quoted(it.key(), out);
        out += ':';
      }
      append_json(*it, out);
    }
    out += j.is_object() ? '}' : ']';
    return;
  }
  out += j.dump();
}

}  // namespace

std::string dump_json(const nlohmann::json& j) {
  try {
    return j.dump();
  } catch (const nlohmann::json::type_error&) {  // 316: a string that is not valid UTF-8
    std::string out;
    append_json(j, out);
    return out;
  }
}

}  // namespace facenet::cli
