// A small rtnetlink client for the agent's guest network configuration (net.cc): requests that
// wait for their acknowledgement, and dumps. The agent is a static binary and Debian ships no
// static libmnl, so it carries these ~200 lines instead.
#pragma once
#include <linux/netlink.h>
#include <linux/rtnetlink.h>

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "agent/util.h"

namespace agent {

// One netlink message under construction: header, family header, attributes (nests allowed).
class NlMessage {
 public:
  // `header` is the family header (ifinfomsg, ifaddrmsg, rtmsg, ndmsg) copied after nlmsghdr.
  NlMessage(uint16_t type, uint16_t flags, const void* header, size_t headerLen);
  void Put(uint16_t type, const void* data, size_t len);
  void PutU32(uint16_t type, uint32_t value) { Put(type, &value, sizeof value); }
  void PutString(uint16_t type, const std::string& value) { Put(type, value.c_str(), value.size() + 1); }
  // Opens a nested attribute; returns its offset for EndNest.
  size_t BeginNest(uint16_t type);
  void EndNest(size_t offset);
  nlmsghdr* header() { return reinterpret_cast<nlmsghdr*>(buf_.data()); }
  std::string_view bytes() const { return {buf_.data(), buf_.size()}; }

 private:
  std::string buf_;
};

// Attributes of one message (or of a nest), by type; later duplicates win.
using NlAttrs = std::map<uint16_t, std::string_view>;
NlAttrs ParseAttrs(const char* data, size_t len);
std::string AttrString(const NlAttrs& attrs, uint16_t type);  // "" when absent
uint32_t AttrU32(const NlAttrs& attrs, uint16_t type, uint32_t fallback = 0);

// A received message: its type and its payload after nlmsghdr.
struct NlReply {
  uint16_t type;
  std::string payload;
};

class Netlink {
 public:
  Netlink();  // a NETLINK_ROUTE socket with extended acks and a receive timeout
  // Sends `msg` with NLM_F_ACK and waits for the acknowledgement. A negative ack throws
  // Error(kInternal, "what: strerror (kernel message)", errno); EEXIST/ENOENT... keep their errno.
  void Request(NlMessage& msg, const std::string& what);
  // Like Request, but returns the errno of a negative ack (0 on success) instead of throwing.
  int TryRequest(NlMessage& msg, std::string* detail = nullptr);
  // Sends a dump request (NLM_F_DUMP) and returns every reply until NLMSG_DONE.
  std::vector<NlReply> Dump(NlMessage& msg, const std::string& what);

 private:
  int Send(NlMessage& msg, uint16_t extraFlags);
  Fd fd_;
  uint32_t seq_ = 0;
};

}  // namespace agent
