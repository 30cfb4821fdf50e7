// Traffic control over rtnetlink: the ingress qdisc and u32 match-all + mirred redirect filters
// (Kata's "tcfilter" model; this kernel has no matchall or flower), listing and deletion.
#include <arpa/inet.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <linux/pkt_sched.h>
#include <linux/tc_act/tc_mirred.h>

#include <vector>

#include "addon/netns.h"
#include "addon/nlattr.h"

namespace vmpod {
namespace {

constexpr uint32_t kIngressHandle = 0xffff0000;  // "ffff:", the ingress qdisc and its filters' parent

tcmsg* PutTcmsg(nlmsghdr* nlh, int ifindex, uint32_t parent, uint32_t handle, uint32_t info) {
  auto* t = static_cast<tcmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(tcmsg)));
  t->tcm_family = AF_UNSPEC;
  t->tcm_ifindex = ifindex;
  t->tcm_parent = parent;
  t->tcm_handle = handle;
  t->tcm_info = info;
  return t;
}

// qdiscAddIngress(ns, dev): `tc qdisc add dev DEV ingress`.
Napi::Value QdiscAddIngress(const Napi::CallbackInfo& info) {
  NsRef ns = ParseNs(info.Env(), info[0]);
  std::string dev = ArgString(info[1], "dev");
  return Schedule(info.Env(), [=]() -> ToJs {
    NsTarget target(ns);
    Batch batch(target.rtnl());
    nlmsghdr* nlh = batch.Add(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL, dev);
    PutTcmsg(nlh, target.rtnl().IfIndex(dev), TC_H_INGRESS, kIngressHandle, 0);
    mnl_attr_put_strz(nlh, TCA_KIND, "ingress");
    mnl_attr_nest_end(nlh, mnl_attr_nest_start(nlh, TCA_OPTIONS));
    batch.Send();
    return Undefined();
  });
}

// qdiscDeleteIngress(ns, dev): `tc qdisc del dev DEV ingress` (its filters go with it).
Napi::Value QdiscDeleteIngress(const Napi::CallbackInfo& info) {
  NsRef ns = ParseNs(info.Env(), info[0]);
  std::string dev = ArgString(info[1], "dev");
  return Schedule(info.Env(), [=]() -> ToJs {
    NsTarget target(ns);
    Batch batch(target.rtnl());
    // Handle 0 and no kind: the kernel answers ENOENT when there is no ingress qdisc.
    PutTcmsg(batch.Add(RTM_DELQDISC, 0, dev), target.rtnl().IfIndex(dev), TC_H_INGRESS, 0, 0);
    batch.Send();
    return Undefined();
  });
}

// qdiscList(ns): every qdisc of every link (`tc qdisc show`).
Napi::Value QdiscList(const Napi::CallbackInfo& info) {
  NsRef ns = ParseNs(info.Env(), info[0]);
  return Schedule(info.Env(), [=]() -> ToJs {
    struct Qdisc {
      int index;
      std::string dev, kind;
      uint32_t handle, parent;
    };
    NsTarget target(ns);
    std::vector<Qdisc> qdiscs;
    Batch batch(target.rtnl());
    PutTcmsg(batch.Add(RTM_GETQDISC, NLM_F_DUMP), 0, 0, 0, 0);
    batch.Send([&](const nlmsghdr* m) {
      if (m->nlmsg_type != RTM_NEWQDISC) return;
      auto* t = static_cast<const tcmsg*>(mnl_nlmsg_get_payload(m));
      nla::Table tb = nla::Parse(m, sizeof(tcmsg), TCA_MAX);
      qdiscs.push_back({t->tcm_ifindex, {}, nla::Str(tb[TCA_KIND]), t->tcm_handle, t->tcm_parent});
    });
    for (Qdisc& q : qdiscs) q.dev = target.rtnl().IfName(q.index);
    return [qdiscs = std::move(qdiscs)](Napi::Env env) -> Napi::Value {
      Napi::Array out = Napi::Array::New(env, qdiscs.size());
      for (size_t i = 0; i < qdiscs.size(); ++i) {
        Napi::Object o = Napi::Object::New(env);
        o.Set("index", qdiscs[i].index);
        o.Set("dev", qdiscs[i].dev);
        o.Set("kind", qdiscs[i].kind);
        o.Set("handle", qdiscs[i].handle);
        o.Set("parent", qdiscs[i].parent);
        out.Set(i, o);
      }
      return out;
    };
  });
}

// filterAddRedirect(ns, {dev, to, prio, protocol}):
// `tc filter add dev DEV parent ffff: protocol all [prio P] u32 match u8 0 0
//    action mirred egress redirect dev TO`
Napi::Value FilterAddRedirect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NsRef ns = ParseNs(env, info[0]);
  Napi::Object spec = ArgObject(info[1], "spec");
  std::string dev = ArgString(spec.Get("dev"), "dev");
  std::string to = ArgString(spec.Get("to"), "to");
  uint32_t prio = OptU32(spec, "prio").value_or(0);  // 0: the kernel picks (49152 for the first)
  uint32_t protocol = OptU32(spec, "protocol").value_or(ETH_P_ALL);
  if (prio > 0xffff || protocol > 0xffff) throw Napi::RangeError::New(env, "prio and protocol are 16-bit");
  return Schedule(env, [=]() -> ToJs {
    NsTarget target(ns);
    Rtnl& rtnl = target.rtnl();
    int from_index = rtnl.IfIndex(dev), to_index = rtnl.IfIndex(to);
    Batch batch(rtnl);
    nlmsghdr* nlh = batch.Add(RTM_NEWTFILTER, NLM_F_CREATE | NLM_F_EXCL, dev + " -> " + to);
    PutTcmsg(nlh, from_index, kIngressHandle, 0, TC_H_MAKE(prio << 16, htons(protocol)));
    mnl_attr_put_strz(nlh, TCA_KIND, "u32");
    nlattr* options = mnl_attr_nest_start(nlh, TCA_OPTIONS);
    // One key, `match u8 0 0`: mask 0 matches every packet.
    alignas(tc_u32_sel) unsigned char sel_buf[sizeof(tc_u32_sel) + sizeof(tc_u32_key)] = {};
    auto* sel = reinterpret_cast<tc_u32_sel*>(sel_buf);
    sel->flags = TC_U32_TERMINAL;
    sel->nkeys = 1;
    mnl_attr_put(nlh, TCA_U32_SEL, sizeof sel_buf, sel_buf);
    nlattr* actions = mnl_attr_nest_start(nlh, TCA_U32_ACT);
    nlattr* first = mnl_attr_nest_start(nlh, 1);
    mnl_attr_put_strz(nlh, TCA_ACT_KIND, "mirred");
    nlattr* act_options = mnl_attr_nest_start(nlh, TCA_ACT_OPTIONS);
    tc_mirred parms{};
    parms.action = TC_ACT_STOLEN;
    parms.eaction = TCA_EGRESS_REDIR;
    parms.ifindex = static_cast<uint32_t>(to_index);
    mnl_attr_put(nlh, TCA_MIRRED_PARMS, sizeof parms, &parms);
    mnl_attr_nest_end(nlh, act_options);
    mnl_attr_nest_end(nlh, first);
    mnl_attr_nest_end(nlh, actions);
    mnl_attr_nest_end(nlh, options);
    batch.Send();
    return Undefined();
  });
}

struct Action {
  std::string kind;
  std::optional<tc_mirred> mirred;
};

struct Filter {
  uint32_t parent = 0, handle = 0, prio = 0, protocol = 0;
  std::optional<uint32_t> chain;
  std::string kind;
  std::vector<Action> actions;
  std::vector<std::string> action_devs;
};

// filterList(ns, dev, parent): `tc filter show dev DEV parent PARENT`. u32 hash tables (nodes
// without a selector) are left out: they are containers, not filters.
Napi::Value FilterList(const Napi::CallbackInfo& info) {
  NsRef ns = ParseNs(info.Env(), info[0]);
  std::string dev = ArgString(info[1], "dev");
  uint32_t parent = ArgU32(info[2], "parent");
  return Schedule(info.Env(), [=]() -> ToJs {
    NsTarget target(ns);
    Rtnl& rtnl = target.rtnl();
    std::vector<Filter> filters;
    Batch batch(rtnl);
    PutTcmsg(batch.Add(RTM_GETTFILTER, NLM_F_DUMP, dev), rtnl.IfIndex(dev), parent, 0, 0);
    batch.Send([&](const nlmsghdr* m) {
      if (m->nlmsg_type != RTM_NEWTFILTER) return;
      auto* t = static_cast<const tcmsg*>(mnl_nlmsg_get_payload(m));
      nla::Table tb = nla::Parse(m, sizeof(tcmsg), TCA_MAX);
      Filter f;
      f.parent = t->tcm_parent;
      f.handle = t->tcm_handle;
      f.prio = TC_H_MAJ(t->tcm_info) >> 16;
      f.protocol = ntohs(static_cast<uint16_t>(TC_H_MIN(t->tcm_info)));
      f.chain = nla::U32(tb[TCA_CHAIN]);
      f.kind = nla::Str(tb[TCA_KIND]);
      if (f.kind == "u32") {
        nla::Table opts = nla::Nested(tb[TCA_OPTIONS], TCA_U32_MAX);
        if (opts[TCA_U32_SEL] == nullptr) return;
        nla::Table acts = nla::Nested(opts[TCA_U32_ACT], TCA_ACT_MAX_PRIO);
        for (const nlattr* a : acts) {
          if (a == nullptr) continue;
          nla::Table at = nla::Nested(a, TCA_ACT_MAX);
          Action action{nla::Str(at[TCA_ACT_KIND]), std::nullopt};
          if (action.kind == "mirred") {
            action.mirred = nla::Struct<tc_mirred>(nla::Nested(at[TCA_ACT_OPTIONS], TCA_MIRRED_MAX)[TCA_MIRRED_PARMS]);
          }
          f.actions.push_back(std::move(action));
        }
      }
      filters.push_back(std::move(f));
    });
    for (Filter& f : filters) {
      for (const Action& a : f.actions) {
        f.action_devs.push_back(a.mirred ? rtnl.IfName(static_cast<int>(a.mirred->ifindex)) : "");
      }
    }
    return [filters = std::move(filters)](Napi::Env env) -> Napi::Value {
      Napi::Array out = Napi::Array::New(env, filters.size());
      for (size_t i = 0; i < filters.size(); ++i) {
        const Filter& f = filters[i];
        Napi::Object o = Napi::Object::New(env);
        o.Set("parent", f.parent);
        o.Set("handle", f.handle);
        o.Set("prio", f.prio);
        o.Set("protocol", f.protocol);
        o.Set("kind", f.kind);
        if (f.chain) o.Set("chain", *f.chain);
        Napi::Array actions = Napi::Array::New(env, f.actions.size());
        for (size_t j = 0; j < f.actions.size(); ++j) {
          Napi::Object a = Napi::Object::New(env);
          a.Set("kind", f.actions[j].kind);
          if (const auto& m = f.actions[j].mirred) {
            a.Set("eaction", m->eaction);
            a.Set("action", m->action);
            a.Set("ifindex", m->ifindex);
            if (!f.action_devs[j].empty()) a.Set("dev", f.action_devs[j]);
          }
          actions.Set(j, a);
        }
        o.Set("actions", actions);
        out.Set(i, o);
      }
      return out;
    };
  });
}

// filterDelete(ns, {dev, parent, prio}): `tc filter del dev DEV parent PARENT [prio P]`; without a
// prio every filter under the parent goes.
Napi::Value FilterDelete(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NsRef ns = ParseNs(env, info[0]);
  Napi::Object spec = ArgObject(info[1], "spec");
  std::string dev = ArgString(spec.Get("dev"), "dev");
  uint32_t parent = ArgU32(spec.Get("parent"), "parent");
  uint32_t prio = OptU32(spec, "prio").value_or(0);
  if (prio > 0xffff) throw Napi::RangeError::New(env, "prio is 16-bit");
  return Schedule(env, [=]() -> ToJs {
    NsTarget target(ns);
    Batch batch(target.rtnl());
    PutTcmsg(batch.Add(RTM_DELTFILTER, 0, dev), target.rtnl().IfIndex(dev), parent, 0, TC_H_MAKE(prio << 16, 0));
    batch.Send();
    return Undefined();
  });
}

}  // namespace

void InitTc(Napi::Env env, Napi::Object exports) {
  exports.Set("qdiscAddIngress", Napi::Function::New<QdiscAddIngress>(env, "qdiscAddIngress"));
  exports.Set("qdiscDeleteIngress", Napi::Function::New<QdiscDeleteIngress>(env, "qdiscDeleteIngress"));
  exports.Set("qdiscList", Napi::Function::New<QdiscList>(env, "qdiscList"));
  exports.Set("filterAddRedirect", Napi::Function::New<FilterAddRedirect>(env, "filterAddRedirect"));
  exports.Set("filterList", Napi::Function::New<FilterList>(env, "filterList"));
  exports.Set("filterDelete", Napi::Function::New<FilterDelete>(env, "filterDelete"));
}

}  // namespace vmpod
