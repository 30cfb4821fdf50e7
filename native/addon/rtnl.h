// rtnetlink requests over libmnl: one socket per network namespace, batches, acks, dumps, extack.
#pragma once
#include <libmnl/libmnl.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "addon/common.h"

namespace vmpod {

// An rtnetlink socket. A netlink socket stays bound to the network namespace it was opened in, so
// requests on it need no setns. Used only on the worker thread (one request batch at a time).
class Rtnl {
 public:
  // Opens a socket in the calling thread's current network namespace.
  static std::unique_ptr<Rtnl> Open();
  ~Rtnl();
  Rtnl(const Rtnl&) = delete;
  Rtnl& operator=(const Rtnl&) = delete;

  // Interface index of `name` in this socket's namespace (SIOCGIFINDEX); throws ENODEV.
  int IfIndex(const std::string& name);
  // Interface name of `index` in this socket's namespace; "" when there is none.
  std::string IfName(int index);

  int fd() const;

 private:
  friend class Batch;
  Rtnl(mnl_socket* nl, unsigned portid);
  mnl_socket* nl_;
  unsigned portid_;
  unsigned seq_;
  std::vector<char> send_;
  std::vector<char> recv_;
};

// Requests sent together in one sendmsg(). Scoped: requests never sent are dropped with it.
class Batch {
 public:
  explicit Batch(Rtnl& rtnl) : rtnl_(rtnl) {}

  // Appends a request and returns its header, to be filled with mnl_nlmsg_put_extra_header() and
  // mnl_attr_put_*(). Requests that are not dumps get NLM_F_ACK. `target` names the object the
  // request is about, for errors.
  nlmsghdr* Add(uint16_t type, uint16_t flags, std::string target = {});

  using OnMessage = std::function<void(const nlmsghdr*)>;
  // Sends the batch and waits until every request is answered (ack, error or end of dump),
  // passing each data message to `on_message`. Throws the first failure as a SysError named after
  // the failing request type (e.g. "RTM_NEWLINK"), with the kernel's extended-ack message.
  void Send(const OnMessage& on_message = {});

 private:
  Rtnl& rtnl_;
  size_t len_ = 0;            // bytes before the last request
  nlmsghdr* last_ = nullptr;  // last request added
  unsigned first_seq_ = 0;
  std::vector<std::string> targets_;
};

// The rtnetlink socket of the worker thread's home namespace (the process's own).
Rtnl& HostRtnl();

// An IPv4 or IPv6 address in network byte order, parsed on the main thread.
struct IpAddr {
  int family = 0;  // AF_INET or AF_INET6
  uint8_t len = 0;
  std::array<uint8_t, 16> bytes{};
};
// Parses text of the given family (AF_INET/AF_INET6); throws TypeError (validated in TypeScript).
IpAddr ParseIp(Napi::Env env, int family, const std::string& text);
inline void PutIp(nlmsghdr* nlh, uint16_t type, const IpAddr& ip) { mnl_attr_put(nlh, type, ip.len, ip.bytes.data()); }

// Formats a hardware address as aa:bb:cc:dd:ee:ff.
std::string FormatMac(const void* bytes, size_t len);
// Parses aa:bb:cc:dd:ee:ff; throws TypeError (input was validated in TypeScript).
std::array<uint8_t, 6> ParseMac(Napi::Env env, const std::string& text);

}  // namespace vmpod
