// Shared by the harnesses: a parser may reject its input only with agent::Error (the agent turns
// that into an INVALID_ARGUMENT answer); any other exception escaping it is a bug (it would reach
// the host as INTERNAL, or end the agent), and so is a broken invariant: both abort the fuzzer.
#pragma once
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <string_view>

#include "agent/util.h"

namespace fuzz {

[[noreturn]] inline void Fail(const std::string& what) {
  fprintf(stderr, "FUZZ INVARIANT BROKEN: %s\n", what.c_str());
  abort();
}

#define FUZZ_CHECK(cond, what)                                                \
  do {                                                                        \
    if (!(cond)) ::fuzz::Fail(std::string(#cond " -- ") + std::string(what)); \
  } while (0)

// Runs `fn`; true if it returned, false if it threw agent::Error. Anything else aborts.
template <typename Fn>
bool Try(const char* what, Fn&& fn) {
  try {
    fn();
    return true;
  } catch (const agent::Error& e) {
    // The message goes to the host: it must be there.
    FUZZ_CHECK(e.what()[0] != '\0', std::string(what) + ": an error without a message");
    return false;
  } catch (const std::exception& e) {
    Fail(std::string(what) + ": threw a non-agent exception: " + e.what());
  } catch (...) {
    Fail(std::string(what) + ": threw something that is not an exception");
  }
}

inline std::string_view AsText(const uint8_t* data, size_t size) {
  return std::string_view(reinterpret_cast<const char*>(data), size);
}

}  // namespace fuzz
