// The parts of an OCI runtime spec (config.json) that the agent honours, parsed and validated
// into plain structs before anything is created.
#pragma once
#include <sys/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "agent/json.h"

namespace agent {

struct Rlimit {
  int resource;
  uint64_t soft;
  uint64_t hard;
};

struct Capabilities {
  uint64_t bounding = 0, effective = 0, permitted = 0, inheritable = 0, ambient = 0;
};

struct ProcessSpec {
  bool terminal = false;
  std::vector<std::string> args;
  std::vector<std::string> env;
  std::string cwd = "/";
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> additionalGids;
  std::optional<mode_t> umask;
  std::vector<Rlimit> rlimits;
  std::optional<Capabilities> capabilities;
  bool noNewPrivileges = false;
  std::optional<int> oomScoreAdj;
  // Initial terminal size (vmpod extension `consoleSize`, as in OCI `process.consoleSize`).
  uint16_t rows = 0, cols = 0;
};

struct MountSpec {
  std::string destination;
  std::string type;
  std::string source;
  std::vector<std::string> options;
};

struct NamespaceSpec {
  std::string type;  // pid, network, mount, ipc, uts, cgroup
  std::string path;  // empty: create a new one
};

struct DeviceSpec {
  std::string path;
  char type;  // c, b, u, p
  int64_t major = 0, minor = 0;
  mode_t fileMode = 0666;
  uid_t uid = 0;
  gid_t gid = 0;
};

struct ResourcesSpec {
  std::optional<int64_t> memoryLimit, memoryReservation, memorySwap;
  std::optional<int64_t> pidsLimit;
  std::optional<uint64_t> cpuShares;
  std::optional<int64_t> cpuQuota;
  std::optional<uint64_t> cpuPeriod;
  std::string cpusetCpus, cpusetMems;
  std::vector<std::pair<std::string, uint64_t>> hugepageLimits;  // pageSize ("2MB"), bytes
  std::map<std::string, std::string> unified;
  bool any() const {
    return memoryLimit || memoryReservation || memorySwap || pidsLimit || cpuShares || cpuQuota || cpuPeriod ||
           !cpusetCpus.empty() || !cpusetMems.empty() || !hugepageLimits.empty() || !unified.empty();
  }
};

struct Spec {
  ProcessSpec process;
  std::string rootPath;  // as written in root.path (may be relative to the bundle)
  bool rootReadonly = false;
  std::string hostname;
  std::vector<MountSpec> mounts;
  std::vector<NamespaceSpec> namespaces;
  std::vector<DeviceSpec> devices;
  ResourcesSpec resources;
  std::vector<std::string> maskedPaths, readonlyPaths;
  std::map<std::string, std::string> sysctl;
  std::string rootfsPropagation;
};

// Parses an OCI runtime spec. Throws Error(kInvalidArgument) naming the field on any problem.
Spec ParseSpec(const json& config);
// Parses an OCI `process` object (used by Exec as well). `path` prefixes error messages.
ProcessSpec ParseProcess(const json& process, const std::string& path);

// Mount options ("nosuid", "ro", "rbind", "mode=755", ...) split into flags and a data string.
struct MountOptions {
  unsigned long flags = 0;
  unsigned long propagation = 0;
  bool bind = false;
  std::string data;
};
MountOptions ParseMountOptions(const std::vector<std::string>& options);

// Capability names ("CAP_NET_ADMIN") to numbers; -1 when unknown.
int CapabilityNumber(const std::string& name);

}  // namespace agent
