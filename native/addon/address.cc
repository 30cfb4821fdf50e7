// rtnetlink addresses: add, delete, list (`ip address`).
#include <arpa/inet.h>
#include <linux/if_addr.h>

#include <vector>

#include "addon/netns.h"
#include "addon/nlattr.h"

namespace vmpod {
namespace {

// An address as given by JS: dev, family (4|6), address, prefixLength, and optional peer,
// broadcast, scope (number), noDad, label.
struct AddrSpec {
  std::string dev;
  int family = AF_INET;
  std::string text;  // ADDRESS/LEN, for errors
  IpAddr address;
  uint32_t prefix = 0;
  std::optional<IpAddr> peer, broadcast;
  std::optional<std::string> label;
  std::optional<uint32_t> scope;
  bool nodad = false;
};

AddrSpec ParseSpec(Napi::Env env, const Napi::Object& o) {
  AddrSpec s;
  s.dev = ArgString(o.Get("dev"), "dev");
  uint32_t family = ArgU32(o.Get("family"), "family");
  if (family != 4 && family != 6) throw Napi::TypeError::New(env, "family must be 4 or 6");
  s.family = family == 4 ? AF_INET : AF_INET6;
  std::string address = ArgString(o.Get("address"), "address");
  s.address = ParseIp(env, s.family, address);
  s.prefix = ArgU32(o.Get("prefixLength"), "prefixLength");
  s.text = address + "/" + std::to_string(s.prefix);
  if (auto peer = OptString(o, "peer")) s.peer = ParseIp(env, s.family, *peer);
  if (auto brd = OptString(o, "broadcast")) s.broadcast = ParseIp(env, s.family, *brd);
  s.label = OptString(o, "label");
  s.scope = OptU32(o, "scope");
  s.nodad = OptBool(o, "noDad").value_or(false);
  return s;
}

// Builds RTM_NEWADDR/RTM_DELADDR.
Napi::Value Modify(const Napi::CallbackInfo& info, uint16_t type, uint16_t flags) {
  Napi::Env env = info.Env();
  NsRef ns = ParseNs(env, info[0]);
  AddrSpec s = ParseSpec(env, ArgObject(info[1], "spec"));
  return Schedule(env, [=]() -> ToJs {
    NsTarget target(ns);
    Batch batch(target.rtnl());
    nlmsghdr* nlh = batch.Add(type, flags, s.text + " dev " + s.dev);
    auto* ifa = static_cast<ifaddrmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifaddrmsg)));
    ifa->ifa_family = s.family;
    ifa->ifa_prefixlen = s.prefix;
    ifa->ifa_scope = s.scope.value_or(0);
    ifa->ifa_index = target.rtnl().IfIndex(s.dev);
    PutIp(nlh, IFA_LOCAL, s.address);
    PutIp(nlh, IFA_ADDRESS, s.peer.value_or(s.address));
    if (s.broadcast) PutIp(nlh, IFA_BROADCAST, *s.broadcast);
    if (s.label) mnl_attr_put_strz(nlh, IFA_LABEL, s.label->c_str());
    if (s.nodad) mnl_attr_put_u32(nlh, IFA_FLAGS, IFA_F_NODAD);
    batch.Send();
    return Undefined();
  });
}

// addrAdd(ns, spec, replace): `ip address add|replace ADDR/LEN dev DEV`.
Napi::Value Add(const Napi::CallbackInfo& info) {
  bool replace = info.Length() > 2 && info[2].IsBoolean() && info[2].As<Napi::Boolean>().Value();
  return Modify(info, RTM_NEWADDR, NLM_F_CREATE | (replace ? NLM_F_REPLACE : NLM_F_EXCL));
}

// addrDelete(ns, spec): `ip address del ADDR/LEN dev DEV`.
Napi::Value Delete(const Napi::CallbackInfo& info) { return Modify(info, RTM_DELADDR, 0); }

struct AddrInfo {
  int index = 0;
  std::string dev;
  int family = 0;
  std::string address, peer, broadcast, label;
  unsigned prefix = 0, scope = 0;
  uint32_t flags = 0;
};

// addrList(ns): every address of the namespace (RTM_GETADDR dump).
Napi::Value List(const Napi::CallbackInfo& info) {
  NsRef ns = ParseNs(info.Env(), info[0]);
  return Schedule(info.Env(), [=]() -> ToJs {
    NsTarget target(ns);
    std::vector<AddrInfo> addrs;
    Batch batch(target.rtnl());
    nlmsghdr* nlh = batch.Add(RTM_GETADDR, NLM_F_DUMP);
    static_cast<ifaddrmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifaddrmsg)))->ifa_family = AF_UNSPEC;
    batch.Send([&](const nlmsghdr* m) {
      if (m->nlmsg_type != RTM_NEWADDR) return;
      auto* ifa = static_cast<const ifaddrmsg*>(mnl_nlmsg_get_payload(m));
      nla::Table tb = nla::Parse(m, sizeof(ifaddrmsg), IFA_MAX);
      AddrInfo a;
      a.index = static_cast<int>(ifa->ifa_index);
      a.family = ifa->ifa_family;
      a.prefix = ifa->ifa_prefixlen;
      a.scope = ifa->ifa_scope;
      a.flags = nla::U32(tb[IFA_FLAGS]).value_or(ifa->ifa_flags);
      std::string local = nla::Ip(tb[IFA_LOCAL], a.family), address = nla::Ip(tb[IFA_ADDRESS], a.family);
      a.address = local.empty() ? address : local;
      if (!local.empty() && !address.empty() && local != address) a.peer = address;
      a.broadcast = nla::Ip(tb[IFA_BROADCAST], a.family);
      a.label = nla::Str(tb[IFA_LABEL]);
      if (!a.address.empty()) addrs.push_back(std::move(a));
    });
    for (AddrInfo& a : addrs) a.dev = target.rtnl().IfName(a.index);
    return [addrs = std::move(addrs)](Napi::Env env) -> Napi::Value {
      Napi::Array out = Napi::Array::New(env, addrs.size());
      for (size_t i = 0; i < addrs.size(); ++i) {
        const AddrInfo& a = addrs[i];
        Napi::Object o = Napi::Object::New(env);
        o.Set("index", a.index);
        o.Set("dev", a.dev);
        o.Set("family", a.family == AF_INET ? 4 : 6);
        o.Set("address", a.address);
        o.Set("prefixLength", a.prefix);
        o.Set("scope", a.scope);
        o.Set("flags", a.flags);
        if (!a.peer.empty()) o.Set("peer", a.peer);
        if (!a.broadcast.empty()) o.Set("broadcast", a.broadcast);
        if (!a.label.empty()) o.Set("label", a.label);
        out.Set(i, o);
      }
      return out;
    };
  });
}

}  // namespace

void InitAddress(Napi::Env env, Napi::Object exports) {
  exports.Set("addrAdd", Napi::Function::New<Add>(env, "addrAdd"));
  exports.Set("addrDelete", Napi::Function::New<Delete>(env, "addrDelete"));
  exports.Set("addrList", Napi::Function::New<List>(env, "addrList"));
}

}  // namespace vmpod
