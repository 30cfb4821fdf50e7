// Direct-stream options of CreateContainer (`direct`: the ports and the 32-byte markers, as 64
// hex digits) against `stdio` and the spec: refused with Error, or each marker is exactly 32
// bytes decoded from the cookie, on a vmpod.stream.N port, for an output that exists.
#include <cstdint>
#include <string>

#include "agent/direct_stream.h"
#include "agent/spec.h"
#include "common.h"

namespace {

std::string Hex(const std::string& raw) {
  static const char* kDigits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : raw) {
    out += kDigits[c >> 4];
    out += kDigits[c & 15];
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // {"direct": ..., "stdio": ..., "terminal": bool, "pidns": "path"}
  agent::json j;
  if (!fuzz::Try("ParseObject", [&] { j = agent::ParseObject(fuzz::AsText(data, size)); })) return 0;
  agent::Spec spec;
  spec.process.args = {"/bin/true"};
  if (const agent::json* t = agent::Field(j, "terminal"); t && t->is_boolean()) spec.process.terminal = t->get<bool>();
  if (const agent::json* ns = agent::Field(j, "pidns"); ns && ns->is_string()) spec.namespaces.push_back({"pid", ns->get<std::string>()});
  const agent::json* direct = agent::Field(j, "direct");
  const agent::json* stdio = agent::Field(j, "stdio");
  std::array<std::optional<agent::DirectRequest>, 2> out;
  if (!fuzz::Try("ParseDirect", [&] { out = agent::ParseDirect(direct, stdio, spec); })) return 0;
  for (int i = 0; i < 2; i++) {
    if (!out[i]) continue;
    FUZZ_CHECK(out[i]->marker.size() == agent::kStreamMarkerSize, "marker of the wrong size");
    const agent::json& cookie = (*direct)[i == 0 ? "stdout" : "stderr"]["cookie"];
    FUZZ_CHECK(Hex(out[i]->marker) == cookie.get<std::string>(), "marker is not the cookie's bytes");
    FUZZ_CHECK(out[i]->port.rfind(agent::kStreamPortPrefix, 0) == 0 && out[i]->port.size() <= 15, "port name");
    FUZZ_CHECK(!spec.process.terminal, "direct streams for a terminal");
  }
  if (out[0] && out[1]) FUZZ_CHECK(out[0]->port != out[1]->port, "both outputs on one port");
  return 0;
}
