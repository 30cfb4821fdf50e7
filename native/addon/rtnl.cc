// rtnetlink plumbing on libmnl. libmnl builds and walks messages and attributes (alignment, nests,
// bounds) so the families only say what goes into a request; this file adds batching, acks,
// extended-ack messages and the per-thread host socket.
#include "addon/rtnl.h"

#include <arpa/inet.h>
#include <net/if.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>

namespace vmpod {
namespace {

constexpr size_t kSendSize = 32768;
constexpr size_t kRecvSize = 65536;  // a dump part never exceeds 32 KiB

const char* TypeName(uint16_t type) {
  switch (type) {
    case RTM_NEWLINK: return "RTM_NEWLINK";
    case RTM_DELLINK: return "RTM_DELLINK";
    case RTM_GETLINK: return "RTM_GETLINK";
    case RTM_NEWADDR: return "RTM_NEWADDR";
    case RTM_DELADDR: return "RTM_DELADDR";
    case RTM_GETADDR: return "RTM_GETADDR";
    case RTM_NEWROUTE: return "RTM_NEWROUTE";
    case RTM_DELROUTE: return "RTM_DELROUTE";
    case RTM_GETROUTE: return "RTM_GETROUTE";
    case RTM_GETNEIGH: return "RTM_GETNEIGH";
    case RTM_NEWQDISC: return "RTM_NEWQDISC";
    case RTM_DELQDISC: return "RTM_DELQDISC";
    case RTM_GETQDISC: return "RTM_GETQDISC";
    case RTM_NEWTFILTER: return "RTM_NEWTFILTER";
    case RTM_DELTFILTER: return "RTM_DELTFILTER";
    case RTM_GETTFILTER: return "RTM_GETTFILTER";
    default: return "rtnetlink";
  }
}

// The kernel's extended-ack message (NLMSGERR_ATTR_MSG) of an error reply, if any.
std::string ExtAckMessage(const nlmsghdr* nlh) {
  if (!(nlh->nlmsg_flags & NLM_F_ACK_TLVS)) return {};
  auto* err = static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(nlh));
  size_t offset = sizeof(nlmsgerr);
  if (!(nlh->nlmsg_flags & NLM_F_CAPPED)) offset += mnl_nlmsg_get_payload_len(&err->msg);
  std::string message;
  mnl_attr_parse(
      nlh, offset,
      [](const nlattr* attr, void* data) {
        if (mnl_attr_get_type(attr) == NLMSGERR_ATTR_MSG && mnl_attr_validate(attr, MNL_TYPE_NUL_STRING) == 0) {
          *static_cast<std::string*>(data) = mnl_attr_get_str(attr);
        }
        return MNL_CB_OK;
      },
      &message);
  return message;
}

thread_local std::unique_ptr<Rtnl> t_host;

}  // namespace

std::unique_ptr<Rtnl> Rtnl::Open() {
  mnl_socket* nl = mnl_socket_open2(NETLINK_ROUTE, SOCK_CLOEXEC);
  if (nl == nullptr) ThrowSys("socket", errno, "NETLINK_ROUTE");
  int on = 1;
  // Kernel error strings, acks without the echoed request, and strict dump filters.
  mnl_socket_setsockopt(nl, NETLINK_EXT_ACK, &on, sizeof on);
  mnl_socket_setsockopt(nl, NETLINK_CAP_ACK, &on, sizeof on);
  mnl_socket_setsockopt(nl, NETLINK_GET_STRICT_CHK, &on, sizeof on);
  if (mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0) {
    int err = errno;
    mnl_socket_close(nl);
    ThrowSys("bind", err, "NETLINK_ROUTE");
  }
  return std::unique_ptr<Rtnl>(new Rtnl(nl, mnl_socket_get_portid(nl)));
}

Rtnl::Rtnl(mnl_socket* nl, unsigned portid)
    : nl_(nl), portid_(portid), seq_(static_cast<unsigned>(time(nullptr))), send_(kSendSize), recv_(kRecvSize) {}

Rtnl::~Rtnl() { mnl_socket_close(nl_); }

int Rtnl::fd() const { return mnl_socket_get_fd(nl_); }

nlmsghdr* Batch::Add(uint16_t type, uint16_t flags, std::string target) {
  if (last_ != nullptr) len_ += MNL_ALIGN(last_->nlmsg_len);
  if (len_ + 4096 > rtnl_.send_.size()) ThrowSys("sendmsg", ENOBUFS, target, "netlink batch too large");
  nlmsghdr* nlh = mnl_nlmsg_put_header(rtnl_.send_.data() + len_);
  nlh->nlmsg_type = type;
  nlh->nlmsg_flags = NLM_F_REQUEST | flags | ((flags & NLM_F_DUMP) == NLM_F_DUMP ? 0 : NLM_F_ACK);
  nlh->nlmsg_seq = ++rtnl_.seq_;
  if (last_ == nullptr) first_seq_ = nlh->nlmsg_seq;
  last_ = nlh;
  targets_.push_back(std::move(target));
  return nlh;
}

void Batch::Send(const OnMessage& on_message) {
  if (last_ == nullptr) return;
  size_t len = len_ + last_->nlmsg_len;
  if (len_ + MNL_ALIGN(last_->nlmsg_len) > rtnl_.send_.size()) abort();  // a request overran the buffer
  struct {
    unsigned first;
    std::vector<std::string> targets;
    std::vector<uint16_t> types;
  } batch{first_seq_, std::move(targets_), {}};
  for (size_t off = 0; off < len;) {
    auto* nlh = reinterpret_cast<nlmsghdr*>(rtnl_.send_.data() + off);
    batch.types.push_back(nlh->nlmsg_type);
    off += MNL_ALIGN(nlh->nlmsg_len);
  }
  targets_.clear();
  last_ = nullptr;
  len_ = 0;

  auto* nl = rtnl_.nl_;
  auto& recv = rtnl_.recv_;
  if (mnl_socket_sendto(nl, rtnl_.send_.data(), len) < 0) ThrowSys("sendmsg", errno, batch.targets.front());
  size_t open = batch.types.size();
  std::optional<SysError> failure;
  while (open > 0) {
    ssize_t n = mnl_socket_recvfrom(nl, recv.data(), recv.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      ThrowSys("recvmsg", errno, batch.targets.front());
    }
    int remaining = static_cast<int>(n);
    for (auto* nlh = reinterpret_cast<const nlmsghdr*>(recv.data()); mnl_nlmsg_ok(nlh, remaining);
         nlh = mnl_nlmsg_next(nlh, &remaining)) {
      unsigned index = nlh->nlmsg_seq - batch.first;
      if (index >= batch.types.size() || nlh->nlmsg_pid != rtnl_.portid_) continue;  // stale or foreign
      if (nlh->nlmsg_type == NLMSG_ERROR || nlh->nlmsg_type == NLMSG_DONE) {
        --open;
        int err = 0;
        if (nlh->nlmsg_type == NLMSG_ERROR) {
          err = -static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(nlh))->error;
        } else if (mnl_nlmsg_get_payload_len(nlh) >= sizeof(int)) {
          err = -*static_cast<const int*>(mnl_nlmsg_get_payload(nlh));
        }
        if (err > 0 && !failure) {
          failure = SysError{TypeName(batch.types[index]), err, batch.targets[index], ExtAckMessage(nlh)};
        }
      } else if (nlh->nlmsg_type == NLMSG_OVERRUN) {
        if (!failure) failure = SysError{TypeName(batch.types[index]), ENOBUFS, batch.targets[index], "overrun"};
      } else if (nlh->nlmsg_type >= NLMSG_MIN_TYPE && on_message && !failure) {
        try {
          on_message(nlh);
        } catch (const SysError& e) {
          failure = e;  // keep draining: the socket must hold nothing stale for the next request
        }
      }
    }
  }
  if (failure) throw *failure;
}

int Rtnl::IfIndex(const std::string& name) {
  ifreq ifr{};
  if (name.empty() || name.size() >= IFNAMSIZ) ThrowSys("SIOCGIFINDEX", ENODEV, name);
  memcpy(ifr.ifr_name, name.data(), name.size());
  // A netlink socket answers device ioctls for the namespace it belongs to.
  if (ioctl(fd(), SIOCGIFINDEX, &ifr) != 0) ThrowSys("SIOCGIFINDEX", errno, name);
  return ifr.ifr_ifindex;
}

std::string Rtnl::IfName(int index) {
  ifreq ifr{};
  ifr.ifr_ifindex = index;
  if (index <= 0 || ioctl(fd(), SIOCGIFNAME, &ifr) != 0) return {};
  return std::string(ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ));
}

Rtnl& HostRtnl() {
  if (!t_host) {
    if (HomeNetns() < 0) ThrowSys("socket", EBADF, "NETLINK_ROUTE", "not on the worker thread");
    NetnsScope home(HomeNetns());  // open it in the home namespace even from inside a scope
    t_host = Rtnl::Open();
  }
  return *t_host;
}

std::string FormatMac(const void* bytes, size_t len) {
  std::string out;
  char part[4];
  for (size_t i = 0; i < len; ++i) {
    snprintf(part, sizeof part, i == 0 ? "%02x" : ":%02x", static_cast<const uint8_t*>(bytes)[i]);
    out += part;
  }
  return out;
}

std::array<uint8_t, 6> ParseMac(Napi::Env env, const std::string& text) {
  std::array<uint8_t, 6> mac{};
  unsigned v[6];
  char tail;
  if (sscanf(text.c_str(), "%2x:%2x:%2x:%2x:%2x:%2x%c", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &tail) != 6) {
    throw Napi::TypeError::New(env, "invalid MAC address " + text);
  }
  for (int i = 0; i < 6; ++i) mac[i] = static_cast<uint8_t>(v[i]);
  return mac;
}

IpAddr ParseIp(Napi::Env env, int family, const std::string& text) {
  IpAddr ip;
  ip.family = family;
  ip.len = family == AF_INET ? 4 : 16;
  if ((family != AF_INET && family != AF_INET6) || inet_pton(family, text.c_str(), ip.bytes.data()) != 1) {
    throw Napi::TypeError::New(env, "invalid IP address " + text);
  }
  return ip;
}

}  // namespace vmpod
