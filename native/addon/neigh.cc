// rtnetlink neighbours: list (`ip neigh show`), so that the entries someone made permanent in a
// sandbox's namespace can be mirrored into the guest.
#include <linux/neighbour.h>
#include <linux/rtnetlink.h>

#include <vector>

#include "addon/netns.h"
#include "addon/nlattr.h"

namespace vmpod {
namespace {

struct NeighInfo {
  int family = 0;
  std::string dst, lladdr, dev;
  int ifindex = 0;
  unsigned state = 0, flags = 0;
};

// neighList(ns): every IPv4/IPv6 neighbour entry (RTM_GETNEIGH dump).
Napi::Value List(const Napi::CallbackInfo& info) {
  NsRef ns = ParseNs(info.Env(), info[0]);
  return Schedule(info.Env(), [=]() -> ToJs {
    NsTarget target(ns);
    std::vector<NeighInfo> entries;
    Batch batch(target.rtnl());
    nlmsghdr* nlh = batch.Add(RTM_GETNEIGH, NLM_F_DUMP);
    static_cast<ndmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ndmsg)))->ndm_family = AF_UNSPEC;
    batch.Send([&](const nlmsghdr* m) {
      if (m->nlmsg_type != RTM_NEWNEIGH) return;
      auto* ndm = static_cast<const ndmsg*>(mnl_nlmsg_get_payload(m));
      if (ndm->ndm_family != AF_INET && ndm->ndm_family != AF_INET6) return;
      nla::Table tb = nla::Parse(m, sizeof(ndmsg), NDA_MAX);
      NeighInfo n;
      n.family = ndm->ndm_family;
      n.ifindex = ndm->ndm_ifindex;
      n.state = ndm->ndm_state;
      n.flags = ndm->ndm_flags;
      n.dst = nla::Ip(tb[NDA_DST], n.family);
      if (tb[NDA_LLADDR] != nullptr) n.lladdr = FormatMac(mnl_attr_get_payload(tb[NDA_LLADDR]), mnl_attr_get_payload_len(tb[NDA_LLADDR]));
      if (!n.dst.empty()) entries.push_back(std::move(n));
    });
    for (NeighInfo& n : entries) n.dev = target.rtnl().IfName(n.ifindex);
    return [entries = std::move(entries)](Napi::Env env) -> Napi::Value {
      Napi::Array out = Napi::Array::New(env, entries.size());
      for (size_t i = 0; i < entries.size(); ++i) {
        const NeighInfo& n = entries[i];
        Napi::Object o = Napi::Object::New(env);
        o.Set("family", n.family == AF_INET ? 4 : 6);
        o.Set("dst", n.dst);
        if (!n.lladdr.empty()) o.Set("lladdr", n.lladdr);
        if (!n.dev.empty()) o.Set("dev", n.dev);
        o.Set("state", n.state);
        o.Set("flags", n.flags);
        out.Set(i, o);
      }
      return out;
    };
  });
}

}  // namespace

void InitNeigh(Napi::Env env, Napi::Object exports) {
  exports.Set("neighList", Napi::Function::New<List>(env, "neighList"));
}

}  // namespace vmpod
