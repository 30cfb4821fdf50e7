// The agent's requests parsed and validated into plain structs, with no system call and no state:
// the handlers in agent.cc look things up and act on what these return. Kept apart so that every
// byte the host sends can be fuzzed without running anything (native/fuzz/requests.cc).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "agent/json.h"
#include "agent/spec.h"

namespace agent {

// A request frame's payload: {"method": "...", "params": {...}}.
struct Envelope {
  std::string method;
  json params = json::object();
};
Envelope ParseEnvelope(std::string_view payload);

// Same rule as src/validate.ts `id()`: 1-64 of [A-Za-z0-9_.-], a letter or digit first, no "..".
std::string CheckId(const std::string& value, const std::string& field);

// Hello's params; returns the client's name. FAILED_PRECONDITION for another protocol version.
std::string ParseHello(const json& p, int protocolVersion);

// Which of a process's stdio streams get a pipe (`stdio` of CreateContainer and Exec).
struct StdioRequest {
  bool in = false, out = true, err = true;
};
StdioRequest ParseStdio(const json* stdio);

struct CreateRequest {
  std::string id;
  std::optional<std::string> bundle;  // normalised, absolute
  const json* config = nullptr;       // the inline spec (points into the params), or nullptr
  std::optional<std::string> rootfs;
  bool overlay = false;
  const json* stdio = nullptr;   // as sent, for ParseDirect
  StdioRequest pipes;            // parsed `stdio`
  const json* direct = nullptr;  // as sent, for ParseDirect
};
// Everything of CreateContainer's params that needs no file: the spec is parsed by ParseSpec
// (inline, or from the bundle's config.json), `direct` by ParseDirect.
CreateRequest ParseCreateRequest(const json& p);

// A process named by containerId and execId (empty: the container's init).
struct ProcessRef {
  std::string containerId;
  std::string execId;
};
// containerId (required) and execId (optional) of `p`; the keys are checked by the caller.
ProcessRef ParseProcessRef(const json& p);

struct ExecRequest {
  std::string containerId;
  std::string execId;
  ProcessSpec process;
  StdioRequest pipes;
};
ExecRequest ParseExecRequest(const json& p);

struct OpenStdioRequest {
  ProcessRef process;
  int fd = 0;  // 0 stdin, 1 stdout, 2 stderr
};
OpenStdioRequest ParseOpenStdioRequest(const json& p);

struct SignalRequest {
  ProcessRef process;
  int signal = 0;
  bool all = false;
};
SignalRequest ParseSignalRequest(const json& p);

ProcessRef ParseWaitRequest(const json& p);

struct ResizeRequest {
  ProcessRef process;
  uint16_t rows = 0, cols = 0;
};
ResizeRequest ParseResizeRequest(const json& p);

// StartContainer's id.
std::string ParseStartRequest(const json& p);
// Stats' containerId.
std::string ParseStatsRequest(const json& p);

struct DeleteRequest {
  std::string id;
  bool force = false;
};
DeleteRequest ParseDeleteRequest(const json& p);

// PauseContainer and ResumeContainer: the container, and how long the agent waits for its
// cgroup to report the change (cgroup.events "frozen 1" / "frozen 0").
struct PauseRequest {
  std::string id;
  int64_t timeoutMs = 10000;
};
PauseRequest ParsePauseRequest(const json& p);

// UpdateContainer's resources: the subset of OCI LinuxResources that can change while a
// container runs, each field bounded. Absent fields are left as they are.
struct ResourceUpdate {
  std::optional<int64_t> memoryLimit;        // -1: no limit; else bytes >= 1 MiB
  std::optional<int64_t> memoryReservation;  // -1: none; else bytes
  std::optional<int64_t> memorySwap;         // OCI: memory + swap; -1: no limit; 0: unset
  std::optional<uint64_t> cpuShares;         // 2-262144 (cgroup v1 shares)
  std::optional<int64_t> cpuQuota;           // -1: no limit; else 1000-kMaxCpuQuota us
  std::optional<uint64_t> cpuPeriod;         // 1000-1000000 us
  std::optional<std::string> cpus, mems;     // cpu lists, e.g. "0-1,3"
  std::optional<int64_t> pidsLimit;          // -1 or 0: no limit; else 1-4194304
  std::optional<uint64_t> blkioWeight;       // 10-1000 (cgroup v1 blkio weight)
  bool any() const {
    return memoryLimit || memoryReservation || memorySwap || cpuShares || cpuQuota || cpuPeriod || cpus || mems ||
           pidsLimit || blkioWeight;
  }
};
constexpr int64_t kMinMemoryLimit = 1 << 20;
constexpr int64_t kMaxCpuQuota = (int64_t(1) << 44) - 1;  // the kernel's largest CFS runtime, in us
constexpr int64_t kMaxPids = 4194304;                     // PID_MAX_LIMIT on 64-bit

struct UpdateRequest {
  std::string id;
  ResourceUpdate resources;
};
UpdateRequest ParseUpdateRequest(const json& p);

// Conversions of OCI (cgroup v1) values to cgroup v2 files, as runc makes them:
// cpu shares 2-262144 -> cpu.weight 1-10000;
uint64_t CpuWeight(uint64_t shares);
// blkio weight 10-1000 -> io.weight 1-10000;
uint64_t IoWeight(uint64_t blkioWeight);
// OCI memory.swap (memory + swap) -> memory.swap.max (swap alone): "max", a byte count, or
// nullopt when nothing is to be written (0, unset). `limit` is the memory limit of the same
// update. Throws INVALID_ARGUMENT for a swap that needs a limit, or is below it.
std::optional<std::string> SwapMax(int64_t swap, std::optional<int64_t> limit);
// True for a cpu list: "N", "N-M" (N <= M), joined by ',', numbers below 4096, at most 1024 bytes.
bool ValidCpuList(const std::string& list);

// Unmount's target.
std::string ParseUnmountRequest(const json& p);

struct SetTimeRequest {
  int64_t sec = 0, nsec = 0;
};
SetTimeRequest ParseSetTimeRequest(const json& p);

struct FindDeviceRequest {
  std::string pciPath;
  bool netdev = false;
  int64_t timeoutMs = 10000;
};
FindDeviceRequest ParseFindDeviceRequest(const json& p);

// Params of a method that takes none (Ping, ListContainers, Shutdown).
void ParseNoParams(const json& p);

// A window update (a data frame with kFlagWindow) on an output stream that holds `credit`:
// the new credit, or the protocol error that ends the session.
struct WindowUpdate {
  uint32_t credit = 0;
  std::string error;  // non-empty: the session fails with this
};
WindowUpdate GrowWindow(uint32_t credit, std::string_view payload);

}  // namespace agent
