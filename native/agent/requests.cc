#include "agent/requests.h"

#include <regex>

#include "agent/frame.h"
#include "agent/pci.h"

namespace agent {

Envelope ParseEnvelope(std::string_view payload) {
  json request = ParseObject(payload);
  CheckKeys(request, "request", {"method", "params"});
  Envelope e;
  e.method = GetString(request, "method", "request");
  if (const json* p = Field(request, "params")) {
    if (!p->is_object()) BadField("params", "must be an object");
    e.params = *p;
  }
  return e;
}

std::string CheckId(const std::string& value, const std::string& field) {
  static const std::regex kId("[A-Za-z0-9][A-Za-z0-9_.-]{0,63}");
  if (!std::regex_match(value, kId) || value.find("..") != std::string::npos) {
    BadField(field, "\"" + value + "\" is not a valid id: use 1-64 characters of [A-Za-z0-9_.-], starting with a letter or digit, without \"..\"");
  }
  return value;
}

std::string ParseHello(const json& p, int protocolVersion) {
  CheckKeys(p, "", {"version", "client"});
  int64_t version = GetInt(p, "version", "", 0, INT32_MAX);
  if (version != protocolVersion) {
    throw Error(Code::kFailedPrecondition, "protocol version " + std::to_string(version) +
                                               " is not supported (this agent speaks version " +
                                               std::to_string(protocolVersion) + ")");
  }
  return OptString(p, "client", "").value_or("");
}

StdioRequest ParseStdio(const json* stdio) {
  StdioRequest r;
  if (stdio) {
    CheckKeys(*stdio, "stdio", {"stdin", "stdout", "stderr"});
    r.in = OptBool(*stdio, "stdin", "stdio", false);
    r.out = OptBool(*stdio, "stdout", "stdio", true);
    r.err = OptBool(*stdio, "stderr", "stdio", true);
  }
  return r;
}

CreateRequest ParseCreateRequest(const json& p) {
  CheckKeys(p, "", {"id", "bundle", "config", "rootfs", "overlay", "stdio", "direct"});
  CreateRequest r;
  r.id = CheckId(GetString(p, "id", ""), "id");
  r.bundle = OptString(p, "bundle", "");
  if (r.bundle) {
    *r.bundle = NormalizePath(*r.bundle);
    if (r.bundle->empty()) BadField("bundle", "must be an absolute path");
  }
  r.config = OptObject(p, "config", "");
  if (!r.config && !r.bundle) BadField("config", "give a config (an OCI runtime spec) or a bundle holding config.json");
  r.stdio = OptObject(p, "stdio", "");
  r.pipes = ParseStdio(r.stdio);
  r.direct = OptObject(p, "direct", "");
  r.rootfs = OptString(p, "rootfs", "");
  r.overlay = OptBool(p, "overlay", "", false);
  return r;
}

ProcessRef ParseProcessRef(const json& p) {
  ProcessRef r;
  r.containerId = GetString(p, "containerId", "");
  r.execId = OptString(p, "execId", "").value_or("");
  return r;
}

ExecRequest ParseExecRequest(const json& p) {
  CheckKeys(p, "", {"containerId", "execId", "process", "stdio"});
  ExecRequest r;
  r.containerId = GetString(p, "containerId", "");
  r.execId = CheckId(GetString(p, "execId", ""), "execId");
  r.process = ParseProcess(GetObject(p, "process", ""), "process");
  r.pipes = ParseStdio(OptObject(p, "stdio", ""));
  return r;
}

OpenStdioRequest ParseOpenStdioRequest(const json& p) {
  CheckKeys(p, "", {"containerId", "execId", "fd"});
  OpenStdioRequest r;
  r.process = ParseProcessRef(p);
  std::string which = GetString(p, "fd", "");
  if (which == "stdin") r.fd = 0;
  else if (which == "stdout") r.fd = 1;
  else if (which == "stderr") r.fd = 2;
  else BadField("fd", "must be stdin, stdout or stderr");
  return r;
}

SignalRequest ParseSignalRequest(const json& p) {
  CheckKeys(p, "", {"containerId", "execId", "signal", "all"});
  SignalRequest r;
  r.process = ParseProcessRef(p);
  r.signal = static_cast<int>(GetInt(p, "signal", "", 1, 64));
  r.all = OptBool(p, "all", "", false);
  return r;
}

ProcessRef ParseWaitRequest(const json& p) {
  CheckKeys(p, "", {"containerId", "execId"});
  return ParseProcessRef(p);
}

ResizeRequest ParseResizeRequest(const json& p) {
  CheckKeys(p, "", {"containerId", "execId", "rows", "cols"});
  ResizeRequest r;
  r.process = ParseProcessRef(p);
  r.rows = static_cast<uint16_t>(GetInt(p, "rows", "", 1, 65535));
  r.cols = static_cast<uint16_t>(GetInt(p, "cols", "", 1, 65535));
  return r;
}

std::string ParseStartRequest(const json& p) {
  CheckKeys(p, "", {"id"});
  return GetString(p, "id", "");
}

std::string ParseStatsRequest(const json& p) {
  CheckKeys(p, "", {"containerId"});
  return GetString(p, "containerId", "");
}

DeleteRequest ParseDeleteRequest(const json& p) {
  CheckKeys(p, "", {"id", "force"});
  DeleteRequest r;
  r.id = GetString(p, "id", "");
  r.force = OptBool(p, "force", "", false);
  return r;
}

PauseRequest ParsePauseRequest(const json& p) {
  CheckKeys(p, "", {"id", "timeoutMs"});
  PauseRequest r;
  r.id = GetString(p, "id", "");
  r.timeoutMs = OptInt(p, "timeoutMs", "", 0, 600000).value_or(10000);
  return r;
}

bool ValidCpuList(const std::string& list) {
  if (list.empty() || list.size() > 1024) return false;
  size_t i = 0;
  auto number = [&](long* out) {
    size_t start = i;
    long n = 0;
    while (i < list.size() && list[i] >= '0' && list[i] <= '9') {
      n = n * 10 + (list[i] - '0');
      if (n >= 4096) return false;
      i++;
    }
    *out = n;
    return i > start;
  };
  for (;;) {
    long first, last;
    if (!number(&first)) return false;
    last = first;
    if (i < list.size() && list[i] == '-') {
      i++;
      if (!number(&last) || last < first) return false;
    }
    if (i == list.size()) return true;
    if (list[i] != ',') return false;
    i++;
  }
}

uint64_t CpuWeight(uint64_t shares) { return 1 + ((shares - 2) * 9999) / 262142; }

uint64_t IoWeight(uint64_t blkioWeight) { return 1 + ((blkioWeight - 10) * 9999) / 990; }

std::optional<std::string> SwapMax(int64_t swap, std::optional<int64_t> limit) {
  const char* field = "resources.memory.swap";
  if (swap == 0) {
    // "Unset", except with an unlimited memory: both unlimited, as with cgroup v1.
    if (limit && *limit == -1) return "max";
    return std::nullopt;
  }
  if (swap == -1) return "max";
  if (!limit || *limit == -1) {
    BadField(field, "is memory + swap: it needs a memory.limit in the same update (or -1 for no swap limit)");
  }
  if (swap < *limit) BadField(field, "is memory + swap: it must not be below memory.limit");
  return std::to_string(swap - *limit);
}

UpdateRequest ParseUpdateRequest(const json& p) {
  CheckKeys(p, "", {"id", "resources"});
  UpdateRequest r;
  r.id = GetString(p, "id", "");
  const json& res = GetObject(p, "resources", "");
  const std::string rp = "resources";
  CheckKeys(res, rp, {"memory", "cpu", "pids", "blockIO"});
  ResourceUpdate& u = r.resources;
  // -1 or a value in [min, max].
  auto limitOrNone = [](const json& o, const char* key, const std::string& path, int64_t min, int64_t max) {
    auto v = OptInt(o, key, path, -1, max);
    if (v && *v != -1 && *v < min) BadField(path + "." + key, "must be -1 (no limit) or at least " + std::to_string(min));
    return v;
  };
  if (const json* mem = OptObject(res, "memory", rp)) {
    std::string mp = rp + ".memory";
    CheckKeys(*mem, mp, {"limit", "reservation", "swap"});
    u.memoryLimit = limitOrNone(*mem, "limit", mp, kMinMemoryLimit, INT64_MAX);
    u.memoryReservation = OptInt(*mem, "reservation", mp, -1, INT64_MAX);
    u.memorySwap = OptInt(*mem, "swap", mp, -1, INT64_MAX);
    if (u.memorySwap) SwapMax(*u.memorySwap, u.memoryLimit);  // refuses a swap without its limit
  }
  if (const json* cpu = OptObject(res, "cpu", rp)) {
    std::string cp = rp + ".cpu";
    CheckKeys(*cpu, cp, {"shares", "quota", "period", "cpus", "mems"});
    if (auto shares = OptInt(*cpu, "shares", cp, 2, 262144)) u.cpuShares = static_cast<uint64_t>(*shares);
    u.cpuQuota = limitOrNone(*cpu, "quota", cp, 1000, kMaxCpuQuota);
    if (auto period = OptInt(*cpu, "period", cp, 1000, 1000000)) u.cpuPeriod = static_cast<uint64_t>(*period);
    for (auto [key, out] : {std::pair{"cpus", &u.cpus}, std::pair{"mems", &u.mems}}) {
      *out = OptString(*cpu, key, cp);
      if (*out && !ValidCpuList(**out)) BadField(cp + "." + key, "must be a list like 0-1,3 (numbers below 4096)");
    }
  }
  if (const json* pids = OptObject(res, "pids", rp)) {
    CheckKeys(*pids, rp + ".pids", {"limit"});
    u.pidsLimit = OptInt(*pids, "limit", rp + ".pids", -1, kMaxPids);
    if (!u.pidsLimit) BadField(rp + ".pids.limit", "is required");
  }
  if (const json* io = OptObject(res, "blockIO", rp)) {
    CheckKeys(*io, rp + ".blockIO", {"weight"});
    if (auto w = OptInt(*io, "weight", rp + ".blockIO", 10, 1000)) u.blkioWeight = static_cast<uint64_t>(*w);
  }
  if (!u.any()) BadField(rp, "holds nothing to update");
  return r;
}

std::string ParseUnmountRequest(const json& p) {
  CheckKeys(p, "", {"target"});
  return GetString(p, "target", "");
}

SetTimeRequest ParseSetTimeRequest(const json& p) {
  CheckKeys(p, "", {"sec", "nsec"});
  SetTimeRequest r;
  r.sec = GetInt(p, "sec", "", 0, INT64_MAX / 1000000000 - 1);
  r.nsec = GetInt(p, "nsec", "", 0, 999999999);
  return r;
}

FindDeviceRequest ParseFindDeviceRequest(const json& p) {
  CheckKeys(p, "", {"pciPath", "netdev", "timeoutMs"});
  FindDeviceRequest r;
  r.pciPath = GetString(p, "pciPath", "");
  if (!ValidPciPath(r.pciPath)) BadField("pciPath", "must be slots of two hex digits (00-1f) joined by '/', e.g. \"02/00\"");
  r.netdev = OptBool(p, "netdev", "", false);
  r.timeoutMs = OptInt(p, "timeoutMs", "", 0, 600000).value_or(10000);
  return r;
}

void ParseNoParams(const json& p) { CheckKeys(p, "", {}); }

WindowUpdate GrowWindow(uint32_t credit, std::string_view payload) {
  WindowUpdate w;
  w.credit = credit;
  if (payload.size() != 4) {
    w.error = "window update with a payload of " + std::to_string(payload.size()) + " bytes";
    return w;
  }
  uint64_t grown = uint64_t(credit) + GetU32(payload.data());
  if (grown > kMaxWindow) {
    w.error = "window grown beyond " + std::to_string(kMaxWindow) + " bytes";
    return w;
  }
  w.credit = static_cast<uint32_t>(grown);
  return w;
}

}  // namespace agent
