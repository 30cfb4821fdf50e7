// AF_PACKET sockets: raw Ethernet frames on one link of a namespace (to inject and observe
// traffic on a data path, e.g. to check that frames cross a tc redirect).
#include <arpa/inet.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <sys/socket.h>

#include "addon/netns.h"

namespace vmpod {
namespace {

// packetOpen(ns, dev, {ignoreOutgoing, nonBlocking}) -> fd, bound to dev, receiving every protocol.
// read() returns one frame, write() sends one.
Napi::Value PacketOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NsRef ns = ParseNs(env, info[0]);
  std::string dev = ArgString(info[1], "dev");
  Napi::Object options = info.Length() > 2 && info[2].IsObject() ? info[2].As<Napi::Object>() : Napi::Object::New(env);
  bool ignore_outgoing = OptBool(options, "ignoreOutgoing").value_or(false);
  bool non_blocking = OptBool(options, "nonBlocking").value_or(false);
  return Schedule(env, [=]() -> ToJs {
    NsTarget target(ns);
    int index = target.rtnl().IfIndex(dev);
    Fd fd;
    {
      NetnsScope scope(target.fd());  // a packet socket sees the links of its own namespace
      // Protocol 0 until bound: receive nothing from other links in between.
      fd = Fd(socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC | (non_blocking ? SOCK_NONBLOCK : 0), 0));
    }
    if (!fd) ThrowSys("socket", errno, "AF_PACKET");
    int on = 1;
    if (ignore_outgoing && setsockopt(fd.get(), SOL_PACKET, PACKET_IGNORE_OUTGOING, &on, sizeof on) != 0) {
      ThrowSys("setsockopt", errno, "PACKET_IGNORE_OUTGOING");
    }
    sockaddr_ll sll{};
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(ETH_P_ALL);
    sll.sll_ifindex = index;
    if (bind(fd.get(), reinterpret_cast<sockaddr*>(&sll), sizeof sll) != 0) ThrowSys("bind", errno, dev);
    return [fd = std::move(fd)](Napi::Env env) mutable -> Napi::Value { return Napi::Number::New(env, fd.Release()); };
  });
}

}  // namespace

void InitPacket(Napi::Env env, Napi::Object exports) {
  exports.Set("packetOpen", Napi::Function::New<PacketOpen>(env, "packetOpen"));
}

}  // namespace vmpod
