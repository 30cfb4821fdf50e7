// rtnetlink routes: add, replace, delete, list (`ip route`).
#include <linux/rtnetlink.h>

#include <vector>

#include "addon/netns.h"
#include "addon/nlattr.h"

namespace vmpod {
namespace {

// A route as given by JS: family (4|6), dst + dstLength (0 = default), and optional gateway, dev,
// src, metric, table, scope, protocol, type (numbers as in rtnetlink.h), onlink.
struct RouteSpec {
  int family = AF_INET;
  std::optional<IpAddr> dst, gateway, src;
  uint32_t dst_len = 0;
  std::string text;  // for errors
  std::optional<std::string> dev;
  std::optional<uint32_t> metric, table, scope, protocol, type;
  bool onlink = false;
};

RouteSpec ParseSpec(Napi::Env env, const Napi::Object& o) {
  RouteSpec s;
  uint32_t family = ArgU32(o.Get("family"), "family");
  if (family != 4 && family != 6) throw Napi::TypeError::New(env, "family must be 4 or 6");
  s.family = family == 4 ? AF_INET : AF_INET6;
  s.dst_len = ArgU32(o.Get("dstLength"), "dstLength");
  auto dst = OptString(o, "dst");
  if (dst) s.dst = ParseIp(env, s.family, *dst);
  s.text = dst ? *dst + "/" + std::to_string(s.dst_len) : "default";
  if (auto gw = OptString(o, "gateway")) s.gateway = ParseIp(env, s.family, *gw);
  if (auto src = OptString(o, "src")) s.src = ParseIp(env, s.family, *src);
  s.dev = OptString(o, "dev");
  s.metric = OptU32(o, "metric");
  s.table = OptU32(o, "table");
  s.scope = OptU32(o, "scope");
  s.protocol = OptU32(o, "protocol");
  s.type = OptU32(o, "type");
  s.onlink = OptBool(o, "onlink").value_or(false);
  return s;
}

// RTM_NEWROUTE / RTM_DELROUTE with iproute2's defaults: an added route is protocol boot, type
// unicast, scope link without a gateway (IPv4) and universe otherwise; a deletion matches any
// protocol, type and scope unless they are given.
Napi::Value Modify(const Napi::CallbackInfo& info, uint16_t type, uint16_t flags) {
  Napi::Env env = info.Env();
  NsRef ns = ParseNs(env, info[0]);
  RouteSpec s = ParseSpec(env, ArgObject(info[1], "spec"));
  return Schedule(env, [=]() -> ToJs {
    NsTarget target(ns);
    bool del = type == RTM_DELROUTE;
    Batch batch(target.rtnl());
    nlmsghdr* nlh = batch.Add(type, flags, s.text);
    auto* rtm = static_cast<rtmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(rtmsg)));
    rtm->rtm_family = s.family;
    rtm->rtm_dst_len = s.dst_len;
    uint32_t table = s.table.value_or(RT_TABLE_MAIN);
    rtm->rtm_table = table < 256 ? table : RT_TABLE_UNSPEC;
    rtm->rtm_protocol = s.protocol.value_or(del ? RTPROT_UNSPEC : RTPROT_BOOT);
    rtm->rtm_type = s.type.value_or(del ? RTN_UNSPEC : RTN_UNICAST);
    if (s.scope) rtm->rtm_scope = *s.scope;
    else if (del) rtm->rtm_scope = RT_SCOPE_NOWHERE;
    else if (s.family == AF_INET && !s.gateway && rtm->rtm_type == RTN_UNICAST) rtm->rtm_scope = RT_SCOPE_LINK;
    else rtm->rtm_scope = RT_SCOPE_UNIVERSE;
    if (s.onlink) rtm->rtm_flags |= RTNH_F_ONLINK;
    if (table >= 256) mnl_attr_put_u32(nlh, RTA_TABLE, table);
    if (s.dst) PutIp(nlh, RTA_DST, *s.dst);
    if (s.gateway) PutIp(nlh, RTA_GATEWAY, *s.gateway);
    if (s.src) PutIp(nlh, RTA_PREFSRC, *s.src);
    if (s.dev) mnl_attr_put_u32(nlh, RTA_OIF, target.rtnl().IfIndex(*s.dev));
    if (s.metric) mnl_attr_put_u32(nlh, RTA_PRIORITY, *s.metric);
    batch.Send();
    return Undefined();
  });
}

// routeAdd(ns, spec, replace): `ip route add|replace ...`.
Napi::Value Add(const Napi::CallbackInfo& info) {
  bool replace = info.Length() > 2 && info[2].IsBoolean() && info[2].As<Napi::Boolean>().Value();
  return Modify(info, RTM_NEWROUTE, NLM_F_CREATE | (replace ? NLM_F_REPLACE : NLM_F_EXCL));
}

// routeDelete(ns, spec): `ip route del ...`.
Napi::Value Delete(const Napi::CallbackInfo& info) { return Modify(info, RTM_DELROUTE, 0); }

struct RouteInfo {
  int family = 0;
  std::string dst, gateway, src, dev;
  unsigned dst_len = 0, scope = 0, protocol = 0, type = 0, flags = 0;
  uint32_t table = 0;
  std::optional<uint32_t> metric;
  int oif = 0;
  bool multipath = false;
};

// routeList(ns): every route of every table (RTM_GETROUTE dump), cached clones excluded.
Napi::Value List(const Napi::CallbackInfo& info) {
  NsRef ns = ParseNs(info.Env(), info[0]);
  return Schedule(info.Env(), [=]() -> ToJs {
    NsTarget target(ns);
    std::vector<RouteInfo> routes;
    Batch batch(target.rtnl());
    nlmsghdr* nlh = batch.Add(RTM_GETROUTE, NLM_F_DUMP);
    static_cast<rtmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(rtmsg)))->rtm_family = AF_UNSPEC;
    batch.Send([&](const nlmsghdr* m) {
      if (m->nlmsg_type != RTM_NEWROUTE) return;
      auto* rtm = static_cast<const rtmsg*>(mnl_nlmsg_get_payload(m));
      if (rtm->rtm_flags & RTM_F_CLONED) return;
      nla::Table tb = nla::Parse(m, sizeof(rtmsg), RTA_MAX);
      RouteInfo r;
      r.family = rtm->rtm_family;
      r.dst_len = rtm->rtm_dst_len;
      r.scope = rtm->rtm_scope;
      r.protocol = rtm->rtm_protocol;
      r.type = rtm->rtm_type;
      r.flags = rtm->rtm_flags;
      r.table = nla::U32(tb[RTA_TABLE]).value_or(rtm->rtm_table);
      r.dst = nla::Ip(tb[RTA_DST], r.family);
      r.gateway = nla::Ip(tb[RTA_GATEWAY], r.family);
      r.src = nla::Ip(tb[RTA_PREFSRC], r.family);
      r.oif = static_cast<int>(nla::U32(tb[RTA_OIF]).value_or(0));
      r.metric = nla::U32(tb[RTA_PRIORITY]);
      r.multipath = tb[RTA_MULTIPATH] != nullptr;
      if (r.family == AF_INET || r.family == AF_INET6) routes.push_back(std::move(r));
    });
    for (RouteInfo& r : routes) r.dev = target.rtnl().IfName(r.oif);
    return [routes = std::move(routes)](Napi::Env env) -> Napi::Value {
      Napi::Array out = Napi::Array::New(env, routes.size());
      for (size_t i = 0; i < routes.size(); ++i) {
        const RouteInfo& r = routes[i];
        Napi::Object o = Napi::Object::New(env);
        o.Set("family", r.family == AF_INET ? 4 : 6);
        if (!r.dst.empty()) o.Set("dst", r.dst);
        o.Set("dstLength", r.dst_len);
        if (!r.gateway.empty()) o.Set("gateway", r.gateway);
        if (r.oif != 0) o.Set("oif", r.oif);
        if (!r.dev.empty()) o.Set("dev", r.dev);
        if (!r.src.empty()) o.Set("src", r.src);
        if (r.metric) o.Set("metric", *r.metric);
        o.Set("table", r.table);
        o.Set("scope", r.scope);
        o.Set("protocol", r.protocol);
        o.Set("type", r.type);
        o.Set("flags", r.flags);
        if (r.multipath) o.Set("multipath", true);
        out.Set(i, o);
      }
      return out;
    };
  });
}

}  // namespace

void InitRoute(Napi::Env env, Napi::Object exports) {
  exports.Set("routeAdd", Napi::Function::New<Add>(env, "routeAdd"));
  exports.Set("routeDelete", Napi::Function::New<Delete>(env, "routeDelete"));
  exports.Set("routeList", Napi::Function::New<List>(env, "routeList"));
}

}  // namespace vmpod
