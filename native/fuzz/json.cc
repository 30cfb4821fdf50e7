// ParseObject and the strict accessors: any payload is either refused with Error or gives an
// object; every accessor on every member either refuses it with Error or returns a value within
// what it promises (integers in range, strings without NUL bytes).
#include <cstdint>
#include <string>

#include "agent/json.h"
#include "common.h"

namespace {

using agent::json;

void Probe(const json& o, const std::string& path, int depth) {
  if (!o.is_object() || depth > 8) return;
  for (auto it = o.begin(); it != o.end(); ++it) {
    const char* key = it.key().c_str();
    fuzz::Try("CheckNoNul", [&] { agent::CheckNoNul(it.key(), path); });
    fuzz::Try("GetString", [&] {
      std::string s = agent::GetString(o, key, path);
      FUZZ_CHECK(s.find('\0') == std::string::npos, "GetString returned a NUL byte");
    });
    fuzz::Try("OptBool", [&] { agent::OptBool(o, key, path, false); });
    static const std::pair<int64_t, int64_t> kRanges[] = {{0, 65535}, {-1, INT64_MAX}, {INT64_MIN, INT64_MAX}, {1, 64}};
    for (auto [min, max] : kRanges) {
      fuzz::Try("OptInt", [&] {
        auto n = agent::OptInt(o, key, path, min, max);
        if (n) FUZZ_CHECK(*n >= min && *n <= max, "OptInt out of its range");
      });
    }
    fuzz::Try("OptUint64", [&] { agent::OptUint64(o, key, path); });
    fuzz::Try("OptStrings", [&] {
      for (const auto& s : agent::OptStrings(o, key, path, 16)) {
        FUZZ_CHECK(s.find('\0') == std::string::npos, "OptStrings returned a NUL byte");
      }
    });
    fuzz::Try("OptArray", [&] { agent::OptArray(o, key, path); });
    const json* child = nullptr;
    fuzz::Try("OptObject", [&] { child = agent::OptObject(o, key, path); });
    if (child) Probe(*child, path.empty() ? it.key() : path + "." + it.key(), depth + 1);
    if (it->is_array()) {
      for (const auto& e : *it) Probe(e, path + "[]", depth + 1);
    }
  }
  fuzz::Try("CheckKeys", [&] { agent::CheckKeys(o, path, {"method", "params", "id", "process"}); });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  json j;
  if (!fuzz::Try("ParseObject", [&] { j = agent::ParseObject(fuzz::AsText(data, size)); })) return 0;
  FUZZ_CHECK(j.is_object(), "ParseObject returned a non-object");
  Probe(j, "", 0);
  return 0;
}
