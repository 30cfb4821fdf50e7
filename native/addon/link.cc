// rtnetlink links: create (veth, macvlan, macvtap, bridge), change, delete (one or a group), list.
#include <linux/if.h>
#include <linux/if_arp.h>
#include <linux/if_link.h>
#include <linux/if_tun.h>
#include <linux/veth.h>

#include <array>
#include <optional>
#include <vector>

#include "addon/netns.h"
#include "addon/nlattr.h"

namespace vmpod {
namespace {

// Attributes common to every link, as given by JS (validated in TypeScript).
struct LinkAttrs {
  std::optional<std::string> name;
  std::optional<uint32_t> mtu, group, txqlen;
  std::optional<std::array<uint8_t, 6>> mac;
  std::optional<bool> up;
  std::optional<std::string> master;  // "" detaches from the master (nomaster)
  std::optional<NsRef> netns;         // the namespace the link is created in or moved to
};

LinkAttrs ParseAttrs(Napi::Env env, const Napi::Object& o, const char* name_key) {
  LinkAttrs a;
  a.name = OptString(o, name_key);
  a.mtu = OptU32(o, "mtu");
  a.group = OptU32(o, "group");
  a.txqlen = OptU32(o, "txQueueLen");
  if (auto mac = OptString(o, "mac")) a.mac = ParseMac(env, *mac);
  a.up = OptBool(o, "up");
  if (o.Has("master")) {
    Napi::Value m = o.Get("master");
    if (m.IsNull()) a.master = "";
    else if (!m.IsUndefined()) a.master = ArgString(m, "master");
  }
  if (Has(o, "netns")) a.netns = ParseNs(env, o.Get("netns"));
  return a;
}

// Writes `a` into a link request whose ifinfomsg is `ifi`. `into` is where the link ends up (for
// IFLA_NET_NS_FD); `names` resolves the master in the namespace the link lives in.
void PutAttrs(nlmsghdr* nlh, ifinfomsg* ifi, const LinkAttrs& a, NsTarget* into, Rtnl& names) {
  if (a.up) {
    ifi->ifi_change |= IFF_UP;
    if (*a.up) ifi->ifi_flags |= IFF_UP;
  }
  if (a.name) mnl_attr_put_strz(nlh, IFLA_IFNAME, a.name->c_str());
  if (a.mtu) mnl_attr_put_u32(nlh, IFLA_MTU, *a.mtu);
  if (a.group) mnl_attr_put_u32(nlh, IFLA_GROUP, *a.group);
  if (a.txqlen) mnl_attr_put_u32(nlh, IFLA_TXQLEN, *a.txqlen);
  if (a.mac) mnl_attr_put(nlh, IFLA_ADDRESS, a.mac->size(), a.mac->data());
  if (a.master) mnl_attr_put_u32(nlh, IFLA_MASTER, a.master->empty() ? 0 : names.IfIndex(*a.master));
  if (into != nullptr) mnl_attr_put_u32(nlh, IFLA_NET_NS_FD, into->fd());
}

ifinfomsg* PutIfinfo(nlmsghdr* nlh, int index = 0) {
  auto* ifi = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg)));
  ifi->ifi_family = AF_UNSPEC;
  ifi->ifi_index = index;
  return ifi;
}

uint32_t MacvlanMode(Napi::Env env, const std::string& mode) {
  if (mode == "private") return MACVLAN_MODE_PRIVATE;
  if (mode == "vepa") return MACVLAN_MODE_VEPA;
  if (mode == "bridge") return MACVLAN_MODE_BRIDGE;
  if (mode == "passthru") return MACVLAN_MODE_PASSTHRU;
  if (mode == "source") return MACVLAN_MODE_SOURCE;
  throw Napi::TypeError::New(env, "unknown macvlan mode " + mode);
}

const char* MacvlanModeName(uint32_t mode) {
  switch (mode) {
    case MACVLAN_MODE_PRIVATE: return "private";
    case MACVLAN_MODE_VEPA: return "vepa";
    case MACVLAN_MODE_BRIDGE: return "bridge";
    case MACVLAN_MODE_PASSTHRU: return "passthru";
    case MACVLAN_MODE_SOURCE: return "source";
    default: return "unknown";
  }
}

// linkAdd(ns, spec) -> ifindex. spec: LinkAttrs + kind, and for veth `peer` (LinkAttrs), for
// macvlan/macvtap `link` (the lower device, in ns) and `mode`.
Napi::Value Add(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NsRef ns = ParseNs(env, info[0]);
  Napi::Object spec = ArgObject(info[1], "spec");
  std::string kind = ArgString(spec.Get("kind"), "kind");
  LinkAttrs attrs = ParseAttrs(env, spec, "name");
  if (!attrs.name) throw Napi::TypeError::New(env, "name is required");
  std::optional<LinkAttrs> peer;
  std::optional<std::string> lower;
  uint32_t mode = 0;
  if (kind == "veth") {
    if (Has(spec, "peer")) peer = ParseAttrs(env, ArgObject(spec.Get("peer"), "peer"), "name");
  } else if (kind == "macvlan" || kind == "macvtap") {
    lower = ArgString(spec.Get("link"), "link");
    mode = MacvlanMode(env, OptString(spec, "mode").value_or("bridge"));
  } else if (kind != "bridge") {
    throw Napi::TypeError::New(env, "unsupported link kind " + kind);
  }
  return Schedule(env, [=]() -> ToJs {
    NsTarget target(ns);
    std::optional<NsTarget> into, peer_into;
    if (attrs.netns) into.emplace(*attrs.netns);
    if (peer && peer->netns) peer_into.emplace(*peer->netns);
    Rtnl& home = into ? into->rtnl() : target.rtnl();  // where the new link lives

    Batch batch(target.rtnl());
    nlmsghdr* nlh = batch.Add(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, *attrs.name);
    ifinfomsg* ifi = PutIfinfo(nlh);
    PutAttrs(nlh, ifi, attrs, into ? &*into : nullptr, home);
    if (lower) mnl_attr_put_u32(nlh, IFLA_LINK, target.rtnl().IfIndex(*lower));
    nlattr* linkinfo = mnl_attr_nest_start(nlh, IFLA_LINKINFO);
    mnl_attr_put_strz(nlh, IFLA_INFO_KIND, kind.c_str());
    if (kind == "veth" && peer) {
      nlattr* data = mnl_attr_nest_start(nlh, IFLA_INFO_DATA);
      nlattr* peer_nest = mnl_attr_nest_start(nlh, VETH_INFO_PEER);
      ifinfomsg* peer_ifi = PutIfinfo(nlh);
      // The peer is created directly inside its namespace: moving it afterwards costs ~30 ms. It
      // cannot be opened before the pair is linked (ENOTCONN), so `up` follows below.
      LinkAttrs peer_attrs = *peer;
      peer_attrs.up.reset();
      PutAttrs(nlh, peer_ifi, peer_attrs, peer_into ? &*peer_into : nullptr, home);
      mnl_attr_nest_end(nlh, peer_nest);
      mnl_attr_nest_end(nlh, data);
    } else if (lower) {
      nlattr* data = mnl_attr_nest_start(nlh, IFLA_INFO_DATA);
      mnl_attr_put_u32(nlh, IFLA_MACVLAN_MODE, mode);
      mnl_attr_nest_end(nlh, data);
    }
    mnl_attr_nest_end(nlh, linkinfo);
    batch.Send();
    if (peer && peer->up && peer->name) {
      Rtnl& peer_rtnl = peer_into ? peer_into->rtnl() : target.rtnl();
      try {
        Batch up(peer_rtnl);
        nlmsghdr* m = up.Add(RTM_NEWLINK, 0, *peer->name);
        ifinfomsg* i = PutIfinfo(m, peer_rtnl.IfIndex(*peer->name));
        i->ifi_change = IFF_UP;
        i->ifi_flags = *peer->up ? IFF_UP : 0;
        up.Send();
      } catch (const SysError&) {
        Batch undo(home);  // all or nothing: the pair goes
        nlmsghdr* m = undo.Add(RTM_DELLINK, 0, *attrs.name);
        PutIfinfo(m);
        mnl_attr_put_strz(m, IFLA_IFNAME, attrs.name->c_str());
        try { undo.Send(); } catch (const SysError&) {}
        throw;
      }
    }
    int index = home.IfIndex(*attrs.name);
    return [index](Napi::Env env) -> Napi::Value { return Napi::Number::New(env, index); };
  });
}

// linkSet(ns, name, change): change = LinkAttrs with `newName` for a rename and `netns` to move.
Napi::Value Set(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NsRef ns = ParseNs(env, info[0]);
  std::string name = ArgString(info[1], "name");
  LinkAttrs attrs = ParseAttrs(env, ArgObject(info[2], "change"), "newName");
  return Schedule(env, [=]() -> ToJs {
    NsTarget target(ns);
    std::optional<NsTarget> into;
    if (attrs.netns) into.emplace(*attrs.netns);
    Batch batch(target.rtnl());
    nlmsghdr* nlh = batch.Add(RTM_NEWLINK, 0, name);
    ifinfomsg* ifi = PutIfinfo(nlh, target.rtnl().IfIndex(name));
    PutAttrs(nlh, ifi, attrs, into ? &*into : nullptr, into ? into->rtnl() : target.rtnl());
    batch.Send();
    return Undefined();
  });
}

// linkDelete(ns, name): RTM_DELLINK by name (a veth takes its peer along).
Napi::Value Delete(const Napi::CallbackInfo& info) {
  NsRef ns = ParseNs(info.Env(), info[0]);
  std::string name = ArgString(info[1], "name");
  return Schedule(info.Env(), [=]() -> ToJs {
    NsTarget target(ns);
    Batch batch(target.rtnl());
    nlmsghdr* nlh = batch.Add(RTM_DELLINK, 0, name);
    PutIfinfo(nlh);
    mnl_attr_put_strz(nlh, IFLA_IFNAME, name.c_str());
    batch.Send();
    return Undefined();
  });
}

// linkDeleteGroup(ns, group): one RTM_DELLINK for every link of the group, unregistered in one
// batch (one RCU grace period instead of one per link).
Napi::Value DeleteGroup(const Napi::CallbackInfo& info) {
  NsRef ns = ParseNs(info.Env(), info[0]);
  uint32_t group = ArgU32(info[1], "group");
  return Schedule(info.Env(), [=]() -> ToJs {
    NsTarget target(ns);
    Batch batch(target.rtnl());
    nlmsghdr* nlh = batch.Add(RTM_DELLINK, 0, "group " + std::to_string(group));
    PutIfinfo(nlh);
    mnl_attr_put_u32(nlh, IFLA_GROUP, group);
    batch.Send();
    return Undefined();
  });
}

// --- Reading links ---------------------------------------------------------------------------

struct TunInfo {
  uint8_t type = 0, pi = 0, vnet_hdr = 0, persist = 0, multi_queue = 0;
  uint32_t queues = 0, disabled_queues = 0;
  std::optional<uint32_t> owner, group;
};

struct LinkInfo {
  int index = 0;
  unsigned flags = 0;
  unsigned type = 0;
  std::string name, kind, slave_kind, mac;
  uint32_t mtu = 0, group = 0, txqlen = 0;
  int master = 0, link = 0;
  std::optional<int32_t> link_netnsid;
  uint8_t operstate = 0;
  std::optional<uint32_t> macvlan_mode;
  std::optional<TunInfo> tun;
  std::string master_name;
};

using nla::Nested;
using nla::Str;
using nla::U32;
using nla::U8;

LinkInfo ParseLink(const nlmsghdr* nlh) {
  auto* ifi = static_cast<const ifinfomsg*>(mnl_nlmsg_get_payload(nlh));
  nla::Table tb = nla::Parse(nlh, sizeof(ifinfomsg), IFLA_MAX);
  LinkInfo l;
  l.index = ifi->ifi_index;
  l.flags = ifi->ifi_flags;
  l.type = ifi->ifi_type;
  l.name = Str(tb[IFLA_IFNAME]);
  if (tb[IFLA_ADDRESS] != nullptr) l.mac = FormatMac(mnl_attr_get_payload(tb[IFLA_ADDRESS]), mnl_attr_get_payload_len(tb[IFLA_ADDRESS]));
  l.mtu = U32(tb[IFLA_MTU]).value_or(0);
  l.group = U32(tb[IFLA_GROUP]).value_or(0);
  l.txqlen = U32(tb[IFLA_TXQLEN]).value_or(0);
  l.master = static_cast<int>(U32(tb[IFLA_MASTER]).value_or(0));
  l.link = static_cast<int>(U32(tb[IFLA_LINK]).value_or(0));
  if (auto id = U32(tb[IFLA_LINK_NETNSID])) l.link_netnsid = static_cast<int32_t>(*id);
  l.operstate = U8(tb[IFLA_OPERSTATE]);
  nla::Table li = Nested(tb[IFLA_LINKINFO], IFLA_INFO_MAX);
  l.kind = Str(li[IFLA_INFO_KIND]);
  l.slave_kind = Str(li[IFLA_INFO_SLAVE_KIND]);
  if (l.kind == "macvlan" || l.kind == "macvtap") {
    l.macvlan_mode = U32(Nested(li[IFLA_INFO_DATA], IFLA_MACVLAN_MAX)[IFLA_MACVLAN_MODE]);
  } else if (l.kind == "tun") {
    nla::Table d = Nested(li[IFLA_INFO_DATA], IFLA_TUN_MAX);
    TunInfo t;
    t.type = U8(d[IFLA_TUN_TYPE]);
    t.pi = U8(d[IFLA_TUN_PI]);
    t.vnet_hdr = U8(d[IFLA_TUN_VNET_HDR]);
    t.persist = U8(d[IFLA_TUN_PERSIST]);
    t.multi_queue = U8(d[IFLA_TUN_MULTI_QUEUE]);
    t.queues = U32(d[IFLA_TUN_NUM_QUEUES]).value_or(0);
    t.disabled_queues = U32(d[IFLA_TUN_NUM_DISABLED_QUEUES]).value_or(0);
    t.owner = U32(d[IFLA_TUN_OWNER]);
    t.group = U32(d[IFLA_TUN_GROUP]);
    l.tun = t;
  }
  return l;
}

const char* OperState(uint8_t s) {
  static const char* names[] = {"unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up"};
  return s < 7 ? names[s] : "unknown";
}

Napi::Object LinkToJs(Napi::Env env, const LinkInfo& l) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("index", l.index);
  o.Set("name", l.name);
  o.Set("kind", l.kind);
  if (!l.slave_kind.empty()) o.Set("slaveKind", l.slave_kind);
  o.Set("flags", l.flags);
  o.Set("type", l.type);
  o.Set("up", (l.flags & IFF_UP) != 0);
  o.Set("lowerUp", (l.flags & IFF_LOWER_UP) != 0);
  o.Set("loopback", (l.flags & IFF_LOOPBACK) != 0);
  o.Set("operState", OperState(l.operstate));
  o.Set("mac", l.mac);
  o.Set("mtu", l.mtu);
  o.Set("group", l.group);
  o.Set("txQueueLen", l.txqlen);
  if (l.master != 0) {
    o.Set("masterIndex", l.master);
    if (!l.master_name.empty()) o.Set("master", l.master_name);
  }
  if (l.link != 0) o.Set("linkIndex", l.link);
  if (l.link_netnsid) o.Set("linkNetnsId", *l.link_netnsid);
  if (l.macvlan_mode) o.Set("macvlanMode", MacvlanModeName(*l.macvlan_mode));
  if (l.tun) {
    Napi::Object t = Napi::Object::New(env);
    t.Set("type", l.tun->type == IFF_TAP ? "tap" : "tun");
    t.Set("pi", l.tun->pi != 0);
    t.Set("vnetHdr", l.tun->vnet_hdr != 0);
    t.Set("persist", l.tun->persist != 0);
    t.Set("multiQueue", l.tun->multi_queue != 0);
    t.Set("queues", l.tun->queues);
    t.Set("disabledQueues", l.tun->disabled_queues);
    if (l.tun->owner) t.Set("owner", *l.tun->owner);
    if (l.tun->group) t.Set("group", *l.tun->group);
    o.Set("tun", t);
  }
  return o;
}

// linkList(ns): every link of the namespace (RTM_GETLINK dump).
Napi::Value List(const Napi::CallbackInfo& info) {
  NsRef ns = ParseNs(info.Env(), info[0]);
  return Schedule(info.Env(), [=]() -> ToJs {
    NsTarget target(ns);
    std::vector<LinkInfo> links;
    Batch batch(target.rtnl());
    PutIfinfo(batch.Add(RTM_GETLINK, NLM_F_DUMP));
    batch.Send([&](const nlmsghdr* nlh) {
      if (nlh->nlmsg_type == RTM_NEWLINK) links.push_back(ParseLink(nlh));
    });
    for (LinkInfo& l : links) {
      for (const LinkInfo& m : links) {
        if (m.index == l.master) l.master_name = m.name;
      }
    }
    return [links = std::move(links)](Napi::Env env) -> Napi::Value {
      Napi::Array out = Napi::Array::New(env, links.size());
      for (size_t i = 0; i < links.size(); ++i) out.Set(i, LinkToJs(env, links[i]));
      return out;
    };
  });
}

// linkGet(ns, name): one link (RTM_GETLINK by name).
Napi::Value Get(const Napi::CallbackInfo& info) {
  NsRef ns = ParseNs(info.Env(), info[0]);
  std::string name = ArgString(info[1], "name");
  return Schedule(info.Env(), [=]() -> ToJs {
    NsTarget target(ns);
    std::optional<LinkInfo> link;
    Batch batch(target.rtnl());
    nlmsghdr* nlh = batch.Add(RTM_GETLINK, 0, name);
    PutIfinfo(nlh);
    mnl_attr_put_strz(nlh, IFLA_IFNAME, name.c_str());
    batch.Send([&](const nlmsghdr* m) {
      if (m->nlmsg_type == RTM_NEWLINK) link = ParseLink(m);
    });
    if (!link) ThrowSys("RTM_GETLINK", ENODEV, name);
    link->master_name = target.rtnl().IfName(link->master);
    return [l = std::move(*link)](Napi::Env env) -> Napi::Value { return LinkToJs(env, l); };
  });
}

}  // namespace

void InitLink(Napi::Env env, Napi::Object exports) {
  exports.Set("linkAdd", Napi::Function::New<Add>(env, "linkAdd"));
  exports.Set("linkSet", Napi::Function::New<Set>(env, "linkSet"));
  exports.Set("linkDelete", Napi::Function::New<Delete>(env, "linkDelete"));
  exports.Set("linkDeleteGroup", Napi::Function::New<DeleteGroup>(env, "linkDeleteGroup"));
  exports.Set("linkList", Napi::Function::New<List>(env, "linkList"));
  exports.Set("linkGet", Napi::Function::New<Get>(env, "linkGet"));
}

}  // namespace vmpod
