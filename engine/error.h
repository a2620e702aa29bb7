// Error checking for the engine: one macro family that captures the failing expression, file and line and throws.
// Library code never exits or aborts; only a program's main turns an llr::Error into an exit code.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace llr {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
inline void append(std::ostringstream&) {}
template <class T, class... Rest>
void append(std::ostringstream& os, const T& first, const Rest&... rest) {
  os << first;
  append(os, rest...);
}
[[noreturn]] void throw_error(const char* expr, const char* file, int line, const std::string& message);
}  // namespace detail

}  // namespace llr

// LLR_CHECK(cond, parts...): throws llr::Error("message (check `cond` failed at file:line)") when cond is false.
#define LLR_CHECK(cond, ...)                                                              \
  do {                                                                                    \
    if (!(cond)) {                                                                        \
      std::ostringstream llr_check_os_;                                                   \
      ::llr::detail::append(llr_check_os_, __VA_ARGS__);                                  \
      ::llr::detail::throw_error(#cond, __FILE__, __LINE__, llr_check_os_.str());         \
    }                                                                                     \
  } while (0)

// LLR_FAIL(parts...): throws unconditionally.
#define LLR_FAIL(...)                                                                     \
  do {                                                                                    \
    std::ostringstream llr_check_os_;                                                     \
    ::llr::detail::append(llr_check_os_, __VA_ARGS__);                                    \
    ::llr::detail::throw_error(nullptr, __FILE__, __LINE__, llr_check_os_.str());         \
  } while (0)
