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
