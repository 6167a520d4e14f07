// The one error type of the engine: caller/input mistakes are thrown as facenet::Error and
// caught at the API boundary (the CLI, tests); internal invariants use FN_ASSERT.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <string>

namespace facenet {

// A mistake by the caller or in the input: bad file, wrong shape, unknown identity, no GPU.
// The message names the file/tensor/argument and says what was expected.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {
template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

// Throws facenet::Error with the streamed arguments as message: fail("tensor ", name, " ...").
template <typename... Args>
[[noreturn]] void fail(Args&&... args) {
  throw Error(detail::concat(std::forward<Args>(args)...));
}

}  // namespace facenet

// Broken internal invariant: a bug in the engine, never a user mistake. Always on.
#define FN_ASSERT(cond)                                                                         \
  do {                                                                                          \
    if (!(cond)) {                                                                              \
      std::fprintf(stderr, "facenet: internal error: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                                             \
    }                                                                                           \
  } while (0)
