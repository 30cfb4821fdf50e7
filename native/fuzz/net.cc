// The network requests (ConfigureInterface, RemoveInterface, SetNetworkConfig) as the agent
// reads them, with no netlink: refused with Error, or what the agent writes into resolv.conf and
// hosts has one well-formed line per entry (no newline, NUL or space smuggled in from a name).
#include <cstdint>
#include <sstream>
#include <string>

#include "agent/net.h"
#include "common.h"

namespace {

void CheckLines(const std::string& text, bool hosts) {
  FUZZ_CHECK(text.empty() || text.back() == '\n', "unterminated line");
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    FUZZ_CHECK(!line.empty(), "empty line");
    FUZZ_CHECK(line.find('\0') == std::string::npos && line.find('\r') == std::string::npos, "control byte in a line");
    if (hosts) {
      FUZZ_CHECK(line.find('\t') != std::string::npos && line.find(' ') == std::string::npos, "hosts line: " + line);
    } else {
      bool known = line.rfind("# ", 0) == 0 || line.rfind("nameserver ", 0) == 0 || line.rfind("search ", 0) == 0 ||
                   line.rfind("domain ", 0) == 0 || line.rfind("options ", 0) == 0;
      FUZZ_CHECK(known, "resolv.conf line: " + line);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  agent::json j;
  if (!fuzz::Try("ParseObject", [&] { j = agent::ParseObject(fuzz::AsText(data, size)); })) return 0;
  int64_t timeout = -1;
  fuzz::Try("ParseInterfaceRequest", [&] {
    auto req = agent::ParseInterfaceRequest(j, &timeout);
    const std::string& mac = agent::InterfaceRequestMac(*req);
    FUZZ_CHECK(mac.size() == 17 && mac[2] == ':', "MAC text");
    FUZZ_CHECK(timeout >= 0 && timeout <= 600000, "timeout out of range");
  });
  fuzz::Try("ParseRemoveInterface", [&] { FUZZ_CHECK(agent::ParseRemoveInterface(j).size() == 17, "MAC text"); });
  fuzz::Try("ParseNetworkConfig", [&] {
    agent::NetworkConfig c = agent::ParseNetworkConfig(j);
    CheckLines(c.resolvConf, false);
    CheckLines(c.hosts, true);
    FUZZ_CHECK(c.hostname.size() <= 64, "hostname too long");
  });
  return 0;
}
