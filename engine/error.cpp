#include "engine/error.h"

namespace llr::detail {

void throw_error(const char* expr, const char* file, int line, const std::string& message) {
  std::ostringstream os;
  os << message;
  const char* base = file;
  for (const char* p = file; *p; ++p)
    if (*p == '/') base = p + 1;
  if (expr)
    os << " (check `" << expr << "` failed at " << base << ":" << line << ")";
  else
    os << " (at " << base << ":" << line << ")";
  throw Error(os.str());
}

}  // namespace llr::detail
