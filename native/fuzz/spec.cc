// The OCI runtime spec reader (config.json, or CreateContainer's inline config): ParseSpec with
// its nested fields (process, user, rlimits, capabilities, mounts, namespaces, devices,
// linux.resources, sysctl...) refuses with Error or gives a Spec whose promises hold, on which
// the agent then acts without checking again (CreateContainer looks namespace types up with
// map::at, the child mounts with ParseMountOptions, sets rlimits, capabilities, sysctls).
#include <cstdint>
#include <set>
#include <string>

#include "agent/json.h"
#include "agent/spec.h"
#include "common.h"

namespace {

bool Absolute(const std::string& p) { return !p.empty() && p[0] == '/'; }

void CheckProcess(const agent::ProcessSpec& p) {
  FUZZ_CHECK(!p.args.empty() && !p.args[0].empty(), "process without a program");
  FUZZ_CHECK(Absolute(p.cwd), "relative cwd");
  for (const auto& e : p.env) FUZZ_CHECK(e.find('=') != std::string::npos && e[0] != '=', "env entry not NAME=VALUE");
  for (const auto& r : p.rlimits) FUZZ_CHECK(r.soft <= r.hard && r.resource >= 0, "bad rlimit");
  if (p.umask) FUZZ_CHECK(*p.umask <= 0777, "umask out of range");
  if (p.oomScoreAdj) FUZZ_CHECK(*p.oomScoreAdj >= -1000 && *p.oomScoreAdj <= 1000, "oomScoreAdj out of range");
  FUZZ_CHECK(p.uid != static_cast<uid_t>(-1) && p.gid != static_cast<gid_t>(-1), "uid/gid -1 (means 'unchanged' to the kernel)");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  agent::json j;
  if (!fuzz::Try("ParseObject", [&] { j = agent::ParseObject(fuzz::AsText(data, size)); })) return 0;
  // Exec's process object goes through the same reader on its own.
  if (const agent::json* p = agent::Field(j, "process")) {
    fuzz::Try("ParseProcess", [&] { CheckProcess(agent::ParseProcess(*p, "process")); });
  }
  agent::Spec spec;
  if (!fuzz::Try("ParseSpec", [&] { spec = agent::ParseSpec(j); })) return 0;
  CheckProcess(spec.process);
  static const std::set<std::string> kNamespaces = {"pid", "network", "mount", "ipc", "uts", "cgroup"};
  for (const auto& ns : spec.namespaces) {
    FUZZ_CHECK(kNamespaces.count(ns.type), "namespace type \"" + ns.type + "\" passed the reader");
    FUZZ_CHECK(ns.path.empty() || Absolute(ns.path), "relative namespace path");
    FUZZ_CHECK(!(ns.type == "mount" && !ns.path.empty()), "joining a mount namespace passed the reader");
  }
  for (const auto& m : spec.mounts) {
    FUZZ_CHECK(Absolute(m.destination) && !m.type.empty(), "mount without an absolute destination or a type");
    fuzz::Try("ParseMountOptions", [&] {
      agent::MountOptions o = agent::ParseMountOptions(m.options);
      FUZZ_CHECK(o.data.find('\0') == std::string::npos, "mount data with a NUL byte");
    });
  }
  for (const auto& d : spec.devices) {
    FUZZ_CHECK(Absolute(d.path) && std::string("cbup").find(d.type) != std::string::npos, "bad device");
    FUZZ_CHECK(d.major >= 0 && d.major <= 4095 && d.minor >= 0 && d.minor <= 1048575, "device numbers out of range");
  }
  for (const auto& [key, value] : spec.sysctl) {
    FUZZ_CHECK(!key.empty() && key.find('/') == std::string::npos && key.find("..") == std::string::npos, "sysctl key escapes /proc/sys");
  }
  for (const auto& [key, value] : spec.resources.unified) {
    FUZZ_CHECK(key.find('/') == std::string::npos && key[0] != '.', "unified key escapes the cgroup");
  }
  for (const auto& [pageSize, limit] : spec.resources.hugepageLimits) {
    FUZZ_CHECK(!pageSize.empty() && pageSize.find('/') == std::string::npos, "hugepage size escapes the cgroup file name");
  }
  FUZZ_CHECK(spec.hostname.size() <= 64, "hostname too long");
  return 0;
}
