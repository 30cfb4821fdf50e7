// Every request the host can send, as the agent reads it: the envelope of a request frame, then
// the parser of the method it names (the parse half of each handler in agent.cc, net.cc,
// mounts.cc, direct_stream.cc), with an inline OCI spec and direct-stream options for
// CreateContainer. Refusals are Error; what passes keeps the promises the handlers rely on.
#include <cstdint>
#include <string>

#include "agent/direct_stream.h"
#include "agent/mounts.h"
#include "agent/net.h"
#include "agent/requests.h"
#include "agent/spec.h"
#include "common.h"

namespace {

const char* const kStateDir = "/run/vmpod";

void CheckId(const std::string& id) {
  FUZZ_CHECK(!id.empty() && id.size() <= 64 && id.find("..") == std::string::npos && id.find('/') == std::string::npos,
             "id \"" + id + "\" passed CheckId");
}

// What UpdateContainer writes is within the cgroup files' ranges whatever the request said.
void CheckUpdate(const agent::ResourceUpdate& u) {
  FUZZ_CHECK(u.any(), "an update with nothing in it");
  if (u.memoryLimit) FUZZ_CHECK(*u.memoryLimit == -1 || *u.memoryLimit >= agent::kMinMemoryLimit, "memory limit out of range");
  if (u.memoryReservation) FUZZ_CHECK(*u.memoryReservation >= -1, "memory reservation out of range");
  if (u.memorySwap) {
    auto swap = agent::SwapMax(*u.memorySwap, u.memoryLimit);  // must not throw once parsed
    if (swap && *swap != "max") {
      FUZZ_CHECK(swap->find_first_not_of("0123456789") == std::string::npos && !swap->empty(), "swap.max \"" + *swap + "\"");
    }
  }
  if (u.cpuShares) {
    FUZZ_CHECK(*u.cpuShares >= 2 && *u.cpuShares <= 262144, "shares out of range");
    uint64_t w = agent::CpuWeight(*u.cpuShares);
    FUZZ_CHECK(w >= 1 && w <= 10000, "cpu.weight " + std::to_string(w));
  }
  if (u.cpuQuota) FUZZ_CHECK(*u.cpuQuota == -1 || (*u.cpuQuota >= 1000 && *u.cpuQuota <= agent::kMaxCpuQuota), "quota out of range");
  if (u.cpuPeriod) FUZZ_CHECK(*u.cpuPeriod >= 1000 && *u.cpuPeriod <= 1000000, "period out of range");
  for (const auto* list : {&u.cpus, &u.mems}) {
    if (*list) FUZZ_CHECK(agent::ValidCpuList(**list) && (*list)->find_first_not_of("0123456789,-") == std::string::npos, "cpu list \"" + **list + "\"");
  }
  if (u.pidsLimit) FUZZ_CHECK(*u.pidsLimit >= -1 && *u.pidsLimit <= agent::kMaxPids, "pids limit out of range");
  if (u.blkioWeight) {
    FUZZ_CHECK(*u.blkioWeight >= 10 && *u.blkioWeight <= 1000, "blkio weight out of range");
    uint64_t w = agent::IoWeight(*u.blkioWeight);
    FUZZ_CHECK(w >= 1 && w <= 10000, "io.weight " + std::to_string(w));
  }
}

void Parse(const agent::Envelope& e) {
  const agent::json& p = e.params;
  const std::string& m = e.method;
  if (m == "Hello") {
    agent::ParseHello(p, 1);
  } else if (m == "Ping" || m == "ListContainers" || m == "Shutdown" || m == "ListInterfaces") {
    agent::ParseNoParams(p);
  } else if (m == "CreateContainer") {
    agent::CreateRequest r = agent::ParseCreateRequest(p);
    CheckId(r.id);
    if (r.bundle) FUZZ_CHECK(!r.bundle->empty() && (*r.bundle)[0] == '/', "relative bundle");
    FUZZ_CHECK(r.config || r.bundle, "neither config nor bundle");
    if (r.config) {
      agent::Spec spec = agent::ParseSpec(*r.config);
      auto direct = agent::ParseDirect(r.direct, r.stdio, spec);
      for (int i = 0; i < 2; i++) {
        if (!direct[i]) continue;
        FUZZ_CHECK(direct[i]->marker.size() == agent::kStreamMarkerSize, "marker size");
        FUZZ_CHECK(direct[i]->port.rfind(agent::kStreamPortPrefix, 0) == 0, "direct port name");
        FUZZ_CHECK(i == 0 ? r.pipes.out : r.pipes.err, "direct stream for an output not requested");
      }
    }
  } else if (m == "StartContainer") {
    agent::ParseStartRequest(p);
  } else if (m == "DeleteContainer") {
    agent::ParseDeleteRequest(p);
  } else if (m == "Exec") {
    agent::ExecRequest r = agent::ParseExecRequest(p);
    CheckId(r.execId);
    FUZZ_CHECK(!r.process.args.empty(), "exec without a program");
  } else if (m == "OpenStdio") {
    agent::OpenStdioRequest r = agent::ParseOpenStdioRequest(p);
    FUZZ_CHECK(r.fd >= 0 && r.fd <= 2, "fd out of range");
  } else if (m == "Signal") {
    agent::SignalRequest r = agent::ParseSignalRequest(p);
    FUZZ_CHECK(r.signal >= 1 && r.signal <= 64, "signal out of range");
  } else if (m == "Wait") {
    agent::ParseWaitRequest(p);
  } else if (m == "ResizeTty") {
    agent::ResizeRequest r = agent::ParseResizeRequest(p);
    FUZZ_CHECK(r.rows > 0 && r.cols > 0, "empty terminal");
  } else if (m == "Stats") {
    agent::ParseStatsRequest(p);
  } else if (m == "PauseContainer" || m == "ResumeContainer") {
    agent::PauseRequest r = agent::ParsePauseRequest(p);
    FUZZ_CHECK(r.timeoutMs >= 0 && r.timeoutMs <= 600000, "freeze timeout out of range");
  } else if (m == "UpdateContainer") {
    CheckUpdate(agent::ParseUpdateRequest(p).resources);
  } else if (m == "Mount") {
    agent::GuestMount g = agent::ParseGuestMount(p, kStateDir);
    FUZZ_CHECK(agent::IsUnder(g.target, kStateDir) && g.target != kStateDir, "mount target outside the state dir");
    FUZZ_CHECK(!agent::IsUnder(g.target, std::string(kStateDir) + "/containers"), "mount target among the containers");
  } else if (m == "Unmount") {
    agent::ParseUnmountRequest(p);
  } else if (m == "SetTime") {
    agent::SetTimeRequest r = agent::ParseSetTimeRequest(p);
    FUZZ_CHECK(r.nsec >= 0 && r.nsec < 1000000000, "nsec out of range");
  } else if (m == "FindDevice") {
    agent::ParseFindDeviceRequest(p);
  } else if (m == "ConfigureInterface") {
    int64_t timeout = 0;
    agent::ParseInterfaceRequest(p, &timeout);
    FUZZ_CHECK(timeout >= 0 && timeout <= 600000, "timeout out of range");
  } else if (m == "RemoveInterface") {
    agent::ParseRemoveInterface(p);
  } else if (m == "SetNetworkConfig") {
    agent::ParseNetworkConfig(p);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  agent::Envelope e;
  if (!fuzz::Try("ParseEnvelope", [&] { e = agent::ParseEnvelope(fuzz::AsText(data, size)); })) return 0;
  FUZZ_CHECK(e.params.is_object(), "params not an object");
  fuzz::Try(e.method.c_str(), [&] { Parse(e); });
  return 0;
}
