#include "agent/netlink.h"

#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstring>

namespace agent {

namespace {

constexpr size_t kAlign = NLMSG_ALIGNTO;
size_t Align(size_t n) { return (n + kAlign - 1) & ~(kAlign - 1); }

}  // namespace

NlMessage::NlMessage(uint16_t type, uint16_t flags, const void* header, size_t headerLen) {
  buf_.resize(NLMSG_HDRLEN + Align(headerLen));
  memcpy(buf_.data() + NLMSG_HDRLEN, header, headerLen);
  nlmsghdr* h = this->header();
  h->nlmsg_type = type;
  h->nlmsg_flags = static_cast<uint16_t>(NLM_F_REQUEST | flags);
  h->nlmsg_len = static_cast<uint32_t>(buf_.size());
}

void NlMessage::Put(uint16_t type, const void* data, size_t len) {
  rtattr attr{};
  attr.rta_type = type;
  attr.rta_len = static_cast<unsigned short>(RTA_LENGTH(len));
  size_t at = buf_.size();
  buf_.resize(at + RTA_SPACE(len));
  memcpy(buf_.data() + at, &attr, sizeof attr);
  if (len > 0) memcpy(buf_.data() + at + RTA_LENGTH(0), data, len);
  header()->nlmsg_len = static_cast<uint32_t>(buf_.size());
}

size_t NlMessage::BeginNest(uint16_t type) {
  size_t at = buf_.size();
  Put(static_cast<uint16_t>(type | NLA_F_NESTED), nullptr, 0);
  return at;
}

void NlMessage::EndNest(size_t offset) {
  auto* attr = reinterpret_cast<rtattr*>(buf_.data() + offset);
  attr->rta_len = static_cast<unsigned short>(buf_.size() - offset);
}

NlAttrs ParseAttrs(const char* data, size_t len) {
  NlAttrs attrs;
  while (len >= sizeof(rtattr)) {
    const auto* a = reinterpret_cast<const rtattr*>(data);
    if (a->rta_len < sizeof(rtattr) || a->rta_len > len) break;  // malformed: stop, never overread
    attrs[static_cast<uint16_t>(a->rta_type & NLA_TYPE_MASK)] = std::string_view(data + RTA_LENGTH(0), a->rta_len - RTA_LENGTH(0));
    size_t step = RTA_ALIGN(a->rta_len);
    if (step >= len) break;
    data += step;
    len -= step;
  }
  return attrs;
}

std::string AttrString(const NlAttrs& attrs, uint16_t type) {
  auto it = attrs.find(type);
  if (it == attrs.end()) return "";
  std::string_view v = it->second;
  size_t nul = v.find('\0');
  return std::string(nul == std::string_view::npos ? v : v.substr(0, nul));
}

uint32_t AttrU32(const NlAttrs& attrs, uint16_t type, uint32_t fallback) {
  auto it = attrs.find(type);
  if (it == attrs.end() || it->second.size() < sizeof(uint32_t)) return fallback;
  uint32_t v;
  memcpy(&v, it->second.data(), sizeof v);
  return v;
}

Netlink::Netlink() {
  fd_.reset(socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE));
  if (!fd_.valid()) ThrowErrno("socket(NETLINK_ROUTE)");
  int one = 1;
  setsockopt(fd_.get(), SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof one);  // best effort
  setsockopt(fd_.get(), SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof one);
  timeval tv{5, 0};  // the kernel answers at once; never let a lost reply hang the agent's loop
  setsockopt(fd_.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_nl addr{};
  addr.nl_family = AF_NETLINK;
  if (bind(fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) ThrowErrno("bind(NETLINK_ROUTE)");
}

int Netlink::Send(NlMessage& msg, uint16_t extraFlags) {
  nlmsghdr* h = msg.header();
  h->nlmsg_flags = static_cast<uint16_t>(h->nlmsg_flags | extraFlags);
  h->nlmsg_seq = ++seq_;
  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  std::string_view bytes = msg.bytes();
  if (sendto(fd_.get(), bytes.data(), bytes.size(), 0, reinterpret_cast<sockaddr*>(&kernel), sizeof kernel) < 0) {
    ThrowErrno("sendto(NETLINK_ROUTE)");
  }
  return static_cast<int>(h->nlmsg_seq);
}

// Reads replies for `seq`; calls `each` for data messages. Returns the ack's errno (0: done).
template <typename Fn>
static int Receive(int fd, uint32_t seq, std::string* detail, Fn each) {
  std::string buf(64 * 1024, '\0');
  for (;;) {
    ssize_t n = recv(fd, buf.data(), buf.size(), 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      ThrowErrno("recv(NETLINK_ROUTE)");
    }
    size_t len = static_cast<size_t>(n);
    for (auto* h = reinterpret_cast<nlmsghdr*>(buf.data()); NLMSG_OK(h, len); h = NLMSG_NEXT(h, len)) {
      if (h->nlmsg_seq != seq) continue;  // a late reply to an earlier request
      if (h->nlmsg_type == NLMSG_DONE) return 0;
      if (h->nlmsg_type == NLMSG_ERROR) {
        if (h->nlmsg_len < NLMSG_LENGTH(sizeof(nlmsgerr))) return EPROTO;
        const auto* err = static_cast<const nlmsgerr*>(NLMSG_DATA(h));
        if (err->error != 0 && detail && (h->nlmsg_flags & NLM_F_ACK_TLVS)) {
          // With NETLINK_CAP_ACK the original request is not echoed: the TLVs follow the header.
          size_t off = NLMSG_LENGTH(sizeof(nlmsgerr));
          if (!(h->nlmsg_flags & NLM_F_CAPPED)) off += err->msg.nlmsg_len - NLMSG_HDRLEN;
          if (off < h->nlmsg_len) {
            NlAttrs tlvs = ParseAttrs(reinterpret_cast<const char*>(h) + off, h->nlmsg_len - off);
            *detail = AttrString(tlvs, NLMSGERR_ATTR_MSG);
          }
        }
        return -err->error;
      }
      each(h);
    }
  }
}

int Netlink::TryRequest(NlMessage& msg, std::string* detail) {
  uint32_t seq = static_cast<uint32_t>(Send(msg, NLM_F_ACK));
  return Receive(fd_.get(), seq, detail, [](const nlmsghdr*) {});
}

void Netlink::Request(NlMessage& msg, const std::string& what) {
  std::string detail;
  int err = TryRequest(msg, &detail);
  if (err != 0) {
    throw Error(err == ENODEV || err == ENOENT ? Code::kNotFound : err == EEXIST ? Code::kAlreadyExists : Code::kInternal,
                what + ": " + strerror(err) + (detail.empty() ? "" : " (" + detail + ")"), err);
  }
}

std::vector<NlReply> Netlink::Dump(NlMessage& msg, const std::string& what) {
  uint32_t seq = static_cast<uint32_t>(Send(msg, NLM_F_DUMP));
  std::vector<NlReply> out;
  std::string detail;
  int err = Receive(fd_.get(), seq, &detail, [&](const nlmsghdr* h) {
    out.push_back({h->nlmsg_type, std::string(static_cast<const char*>(NLMSG_DATA(h)), h->nlmsg_len - NLMSG_HDRLEN)});
  });
  if (err != 0) throw Error(Code::kInternal, what + ": " + strerror(err) + (detail.empty() ? "" : " (" + detail + ")"), err);
  return out;
}

}  // namespace agent
