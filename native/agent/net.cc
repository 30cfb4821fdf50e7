#include "agent/net.h"

#include <arpa/inet.h>
#include <linux/if.h>
#include <linux/if_arp.h>
#include <linux/neighbour.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <climits>
#include <cstring>
#include <memory>
#include <set>

#include "agent/netlink.h"

namespace agent {

namespace {

// Routes the agent installs carry this protocol number, so that it replaces and removes only
// its own (the kernel's prefix routes and anything else stay).
constexpr unsigned char kRouteProtocol = 118;
constexpr size_t kMaxAddresses = 64;
constexpr size_t kMaxRoutes = 256;
constexpr size_t kMaxNeighbors = 256;
constexpr int64_t kDefaultTimeoutMs = 10000;

struct Ip {
  int family = 0;  // AF_INET or AF_INET6
  unsigned char bytes[16] = {};
  size_t size() const { return family == AF_INET ? 4 : 16; }
  bool operator==(const Ip& o) const { return family == o.family && memcmp(bytes, o.bytes, size()) == 0; }
};

struct Cidr {
  Ip ip;
  int prefix = 0;
};

bool ParseIp(const std::string& text, Ip* out) {
  if (text.find(':') != std::string::npos) {
    out->family = AF_INET6;
    return inet_pton(AF_INET6, text.c_str(), out->bytes) == 1;
  }
  out->family = AF_INET;
  return inet_pton(AF_INET, text.c_str(), out->bytes) == 1;
}

std::string FormatIp(int family, const void* bytes) {
  char buf[INET6_ADDRSTRLEN] = {};
  inet_ntop(family, bytes, buf, sizeof buf);
  return buf;
}

Ip GetIp(const json& o, const char* key, const std::string& path) {
  std::string text = GetString(o, key, path);
  Ip ip;
  if (text.size() > 64 || !ParseIp(text, &ip)) BadField(path.empty() ? key : path + "." + key, "\"" + text + "\" is not an IP address");
  return ip;
}

// "ADDRESS/PREFIX"; with `network`, the host bits must be zero (a route destination).
Cidr ParseCidr(const std::string& text, const std::string& field, bool network) {
  size_t slash = text.find('/');
  Cidr c;
  if (slash == std::string::npos || text.size() > 64 || !ParseIp(text.substr(0, slash), &c.ip)) {
    BadField(field, "\"" + text + "\" is not an address in ADDRESS/PREFIX form");
  }
  std::string prefix = text.substr(slash + 1);
  int max = c.ip.family == AF_INET ? 32 : 128;
  if (prefix.empty() || prefix.size() > 3 || !std::all_of(prefix.begin(), prefix.end(), ::isdigit) || std::stoi(prefix) > max) {
    BadField(field, "\"" + text + "\" has a prefix length outside 0-" + std::to_string(max));
  }
  c.prefix = std::stoi(prefix);
  if (network) {
    for (int bit = c.prefix; bit < max; bit++) {
      if (c.ip.bytes[bit / 8] & (0x80 >> (bit % 8))) BadField(field, "\"" + text + "\" has host bits set: a destination is a network address");
    }
  }
  return c;
}

bool ParseMac(const std::string& text, unsigned char out[6]) {
  if (text.size() != 17) return false;
  for (int i = 0; i < 6; i++) {
    if (i > 0 && text[i * 3 - 1] != ':') return false;
    if (!isxdigit(static_cast<unsigned char>(text[i * 3])) || !isxdigit(static_cast<unsigned char>(text[i * 3 + 1]))) return false;
    out[i] = static_cast<unsigned char>(std::stoi(text.substr(i * 3, 2), nullptr, 16));
  }
  return true;
}

std::string FormatMac(const unsigned char* mac) {
  char buf[18];
  snprintf(buf, sizeof buf, "%02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
  return buf;
}

// The kernel's dev_valid_name(), on the bytes the host sent.
void CheckInterfaceName(const std::string& name, const std::string& field) {
  bool ok = !name.empty() && name.size() < IFNAMSIZ && name != "." && name != "..";
  for (char ch : name) {
    if (ch == '/' || ch == ':' || isspace(static_cast<unsigned char>(ch)) || ch == '\0') ok = false;
  }
  if (!ok) BadField(field, "\"" + name + "\" is not an interface name (1-15 bytes, no '/', ':' or whitespace)");
}

// A hostname or DNS name: 1-253 characters of letters, digits, '-', '.', '_'.
void CheckDnsName(const std::string& name, const std::string& field, size_t max = 253) {
  bool ok = !name.empty() && name.size() <= max && name.front() != '.' && name.front() != '-';
  for (char ch : name) {
    if (!isalnum(static_cast<unsigned char>(ch)) && ch != '-' && ch != '.' && ch != '_') ok = false;
  }
  if (!ok) BadField(field, "\"" + name + "\" is not a valid name (letters, digits, '-', '.', '_')");
}

struct Route {
  bool isDefault = false;
  Cidr dst;
  std::optional<Ip> gateway, src;
  std::optional<uint32_t> metric, table, mtu;
  std::optional<unsigned char> scope;
  bool onlink = false;
};

struct Neighbor {
  Ip ip;
  unsigned char mac[6];
};

Route ParseRoute(const json& r, const std::string& path) {
  CheckKeys(r, path, {"dst", "family", "gateway", "src", "metric", "table", "scope", "onlink", "mtu"});
  Route route;
  std::string dst = GetString(r, "dst", path);
  auto family = OptInt(r, "family", path, 4, 6);
  if (family && *family != 4 && *family != 6) BadField(path + ".family", "must be 4 or 6");
  int af = 0;
  if (dst == "default") {
    route.isDefault = true;
  } else {
    route.dst = ParseCidr(dst, path + ".dst", true);
    af = route.dst.ip.family;
  }
  if (Field(r, "gateway")) route.gateway = GetIp(r, "gateway", path);
  if (Field(r, "src")) route.src = GetIp(r, "src", path);
  for (const auto& ip : {route.gateway, route.src}) {
    if (!ip) continue;
    if (af != 0 && ip->family != af) BadField(path, "addresses of the route are of different families");
    af = ip->family;
  }
  if (af == 0) af = family.value_or(4) == 6 ? AF_INET6 : AF_INET;
  if (family && (*family == 6) != (af == AF_INET6)) BadField(path + ".family", "does not match the route's addresses");
  if (route.isDefault) route.dst.ip.family = af;
  if (auto m = OptInt(r, "metric", path, 0, UINT32_MAX)) route.metric = static_cast<uint32_t>(*m);
  if (auto t = OptInt(r, "table", path, 1, UINT32_MAX)) {
    if (*t == RT_TABLE_LOCAL || *t == RT_TABLE_DEFAULT) BadField(path + ".table", "the local and default tables are the kernel's");
    route.table = static_cast<uint32_t>(*t);
  }
  if (auto m = OptInt(r, "mtu", path, 68, 65535)) route.mtu = static_cast<uint32_t>(*m);
  if (auto s = OptString(r, "scope", path)) {
    static const std::map<std::string, unsigned char> kScopes = {{"global", RT_SCOPE_UNIVERSE}, {"link", RT_SCOPE_LINK}, {"host", RT_SCOPE_HOST}};
    auto it = kScopes.find(*s);
    if (it == kScopes.end()) BadField(path + ".scope", "must be global, link or host");
    route.scope = it->second;
  }
  route.onlink = OptBool(r, "onlink", path, false);
  return route;
}

// Every link: ifindex -> (name, MAC, flags).
struct LinkInfo {
  int index;
  std::string name;
  std::string mac;
  unsigned flags;
  uint32_t mtu;
  unsigned short type;
};

std::vector<LinkInfo> DumpLinks(Netlink& nl) {
  ifinfomsg ifi{};
  ifi.ifi_family = AF_UNSPEC;
  NlMessage msg(RTM_GETLINK, 0, &ifi, sizeof ifi);
  std::vector<LinkInfo> links;
  for (const auto& reply : nl.Dump(msg, "RTM_GETLINK")) {
    if (reply.type != RTM_NEWLINK || reply.payload.size() < NLMSG_ALIGN(sizeof(ifinfomsg))) continue;
    const auto* info = reinterpret_cast<const ifinfomsg*>(reply.payload.data());
    NlAttrs attrs = ParseAttrs(reply.payload.data() + NLMSG_ALIGN(sizeof(ifinfomsg)), reply.payload.size() - NLMSG_ALIGN(sizeof(ifinfomsg)));
    LinkInfo l{info->ifi_index, AttrString(attrs, IFLA_IFNAME), "", info->ifi_flags, AttrU32(attrs, IFLA_MTU), info->ifi_type};
    auto mac = attrs.find(IFLA_ADDRESS);
    if (mac != attrs.end() && mac->second.size() == 6) l.mac = FormatMac(reinterpret_cast<const unsigned char*>(mac->second.data()));
    links.push_back(l);
  }
  return links;
}

struct AddrInfo {
  int index;
  Cidr cidr;
  unsigned char scope;
};

std::vector<AddrInfo> DumpAddresses(Netlink& nl) {
  ifaddrmsg ifa{};
  NlMessage msg(RTM_GETADDR, 0, &ifa, sizeof ifa);
  std::vector<AddrInfo> out;
  for (const auto& reply : nl.Dump(msg, "RTM_GETADDR")) {
    if (reply.type != RTM_NEWADDR || reply.payload.size() < NLMSG_ALIGN(sizeof(ifaddrmsg))) continue;
    const auto* a = reinterpret_cast<const ifaddrmsg*>(reply.payload.data());
    if (a->ifa_family != AF_INET && a->ifa_family != AF_INET6) continue;
    NlAttrs attrs = ParseAttrs(reply.payload.data() + NLMSG_ALIGN(sizeof(ifaddrmsg)), reply.payload.size() - NLMSG_ALIGN(sizeof(ifaddrmsg)));
    auto local = attrs.find(IFA_LOCAL);
    if (local == attrs.end()) local = attrs.find(IFA_ADDRESS);
    AddrInfo info{static_cast<int>(a->ifa_index), {}, a->ifa_scope};
    info.cidr.ip.family = a->ifa_family;
    info.cidr.prefix = a->ifa_prefixlen;
    if (local == attrs.end() || local->second.size() != info.cidr.ip.size()) continue;
    memcpy(info.cidr.ip.bytes, local->second.data(), info.cidr.ip.size());
    out.push_back(info);
  }
  return out;
}

void ChangeAddress(Netlink& nl, uint16_t type, int index, const Cidr& c) {
  ifaddrmsg ifa{};
  ifa.ifa_family = static_cast<unsigned char>(c.ip.family);
  ifa.ifa_prefixlen = static_cast<unsigned char>(c.prefix);
  ifa.ifa_index = static_cast<unsigned>(index);
  NlMessage msg(type, type == RTM_NEWADDR ? NLM_F_CREATE | NLM_F_REPLACE : 0, &ifa, sizeof ifa);
  msg.Put(IFA_LOCAL, c.ip.bytes, c.ip.size());
  msg.Put(IFA_ADDRESS, c.ip.bytes, c.ip.size());
  if (c.ip.family == AF_INET6 && type == RTM_NEWADDR) msg.PutU32(IFA_FLAGS, IFA_F_NODAD);  // usable at once
  nl.Request(msg, std::string(type == RTM_NEWADDR ? "add" : "delete") + " address " + FormatIp(c.ip.family, c.ip.bytes) + "/" + std::to_string(c.prefix));
}

bool IsLinkLocal6(const Ip& ip) { return ip.family == AF_INET6 && ip.bytes[0] == 0xfe && (ip.bytes[1] & 0xc0) == 0x80; }

struct RouteInfo {
  unsigned char family, dstLen, protocol, scope, type;
  uint32_t table;
  std::optional<Ip> dst, gateway;
  int oif = 0;
  std::optional<uint32_t> metric;
};

std::vector<RouteInfo> DumpRoutes(Netlink& nl) {
  rtmsg rtm{};
  NlMessage msg(RTM_GETROUTE, 0, &rtm, sizeof rtm);
  std::vector<RouteInfo> out;
  for (const auto& reply : nl.Dump(msg, "RTM_GETROUTE")) {
    if (reply.type != RTM_NEWROUTE || reply.payload.size() < NLMSG_ALIGN(sizeof(rtmsg))) continue;
    const auto* r = reinterpret_cast<const rtmsg*>(reply.payload.data());
    if (r->rtm_family != AF_INET && r->rtm_family != AF_INET6) continue;
    NlAttrs attrs = ParseAttrs(reply.payload.data() + NLMSG_ALIGN(sizeof(rtmsg)), reply.payload.size() - NLMSG_ALIGN(sizeof(rtmsg)));
    RouteInfo info{r->rtm_family, r->rtm_dst_len, r->rtm_protocol, r->rtm_scope, r->rtm_type, AttrU32(attrs, RTA_TABLE, r->rtm_table), {}, {}, 0, {}};
    size_t size = r->rtm_family == AF_INET ? 4 : 16;
    for (auto [type, slot] : {std::pair{RTA_DST, &info.dst}, std::pair{RTA_GATEWAY, &info.gateway}}) {
      auto it = attrs.find(static_cast<uint16_t>(type));
      if (it == attrs.end() || it->second.size() != size) continue;
      Ip ip;
      ip.family = r->rtm_family;
      memcpy(ip.bytes, it->second.data(), size);
      *slot = ip;
    }
    info.oif = static_cast<int>(AttrU32(attrs, RTA_OIF));
    if (attrs.count(RTA_PRIORITY)) info.metric = AttrU32(attrs, RTA_PRIORITY);
    out.push_back(info);
  }
  return out;
}

// Deletes the agent's routes through `index` (all of them: the wanted ones are added again).
void DeleteAgentRoutes(Netlink& nl, int index) {
  for (const auto& r : DumpRoutes(nl)) {
    if (r.oif != index || r.protocol != kRouteProtocol) continue;
    rtmsg rtm{};
    rtm.rtm_family = r.family;
    rtm.rtm_dst_len = r.dstLen;
    rtm.rtm_protocol = r.protocol;
    rtm.rtm_scope = RT_SCOPE_NOWHERE;
    rtm.rtm_table = r.table < 256 ? static_cast<unsigned char>(r.table) : static_cast<unsigned char>(RT_TABLE_UNSPEC);
    NlMessage msg(RTM_DELROUTE, 0, &rtm, sizeof rtm);
    msg.PutU32(RTA_TABLE, r.table);
    if (r.dst) msg.Put(RTA_DST, r.dst->bytes, r.dst->size());
    if (r.gateway) msg.Put(RTA_GATEWAY, r.gateway->bytes, r.gateway->size());
    if (r.metric) msg.PutU32(RTA_PRIORITY, *r.metric);
    msg.PutU32(RTA_OIF, static_cast<uint32_t>(index));
    int err = nl.TryRequest(msg);
    if (err != 0 && err != ESRCH) Log("network: deleting an old route through ifindex %d: %s", index, strerror(err));
  }
}

void AddRoute(Netlink& nl, int index, const Route& r) {
  rtmsg rtm{};
  rtm.rtm_family = static_cast<unsigned char>(r.dst.ip.family);
  rtm.rtm_dst_len = r.isDefault ? 0 : static_cast<unsigned char>(r.dst.prefix);
  rtm.rtm_protocol = kRouteProtocol;
  rtm.rtm_type = RTN_UNICAST;
  rtm.rtm_scope = r.scope.value_or(!r.gateway && r.dst.ip.family == AF_INET ? RT_SCOPE_LINK : RT_SCOPE_UNIVERSE);
  uint32_t table = r.table.value_or(RT_TABLE_MAIN);
  rtm.rtm_table = table < 256 ? static_cast<unsigned char>(table) : static_cast<unsigned char>(RT_TABLE_UNSPEC);
  if (r.onlink) rtm.rtm_flags |= RTNH_F_ONLINK;
  NlMessage msg(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, &rtm, sizeof rtm);
  msg.PutU32(RTA_TABLE, table);
  if (!r.isDefault) msg.Put(RTA_DST, r.dst.ip.bytes, r.dst.ip.size());
  if (r.gateway) msg.Put(RTA_GATEWAY, r.gateway->bytes, r.gateway->size());
  if (r.src) msg.Put(RTA_PREFSRC, r.src->bytes, r.src->size());
  if (r.metric) msg.PutU32(RTA_PRIORITY, *r.metric);
  msg.PutU32(RTA_OIF, static_cast<uint32_t>(index));
  if (r.mtu) {
    size_t nest = msg.BeginNest(RTA_METRICS);
    msg.PutU32(RTAX_MTU, *r.mtu);
    msg.EndNest(nest);
  }
  std::string dst = r.isDefault ? "default" : FormatIp(r.dst.ip.family, r.dst.ip.bytes) + "/" + std::to_string(r.dst.prefix);
  nl.Request(msg, "add route " + dst + (r.gateway ? " via " + FormatIp(r.gateway->family, r.gateway->bytes) : ""));
}

void SetNeighbor(Netlink& nl, uint16_t type, int index, const Ip& ip, const unsigned char* mac) {
  ndmsg ndm{};
  ndm.ndm_family = static_cast<unsigned char>(ip.family);
  ndm.ndm_ifindex = index;
  ndm.ndm_state = NUD_PERMANENT;
  NlMessage msg(type, type == RTM_NEWNEIGH ? NLM_F_CREATE | NLM_F_REPLACE : 0, &ndm, sizeof ndm);
  msg.Put(NDA_DST, ip.bytes, ip.size());
  if (mac) msg.Put(NDA_LLADDR, mac, 6);
  nl.Request(msg, std::string(type == RTM_NEWNEIGH ? "add" : "delete") + " neighbour " + FormatIp(ip.family, ip.bytes));
}

// Permanent neighbours on `index`: (ip, mac).
std::vector<std::pair<Ip, std::string>> DumpPermanentNeighbors(Netlink& nl, int index) {
  ndmsg ndm{};
  NlMessage msg(RTM_GETNEIGH, 0, &ndm, sizeof ndm);
  std::vector<std::pair<Ip, std::string>> out;
  for (const auto& reply : nl.Dump(msg, "RTM_GETNEIGH")) {
    if (reply.type != RTM_NEWNEIGH || reply.payload.size() < NLMSG_ALIGN(sizeof(ndmsg))) continue;
    const auto* n = reinterpret_cast<const ndmsg*>(reply.payload.data());
    if ((index != 0 && n->ndm_ifindex != index) || !(n->ndm_state & NUD_PERMANENT)) continue;
    if (n->ndm_family != AF_INET && n->ndm_family != AF_INET6) continue;
    NlAttrs attrs = ParseAttrs(reply.payload.data() + NLMSG_ALIGN(sizeof(ndmsg)), reply.payload.size() - NLMSG_ALIGN(sizeof(ndmsg)));
    auto dst = attrs.find(NDA_DST);
    Ip ip;
    ip.family = n->ndm_family;
    if (dst == attrs.end() || dst->second.size() != ip.size()) continue;
    memcpy(ip.bytes, dst->second.data(), ip.size());
    auto ll = attrs.find(NDA_LLADDR);
    std::string mac = ll != attrs.end() && ll->second.size() == 6 ? FormatMac(reinterpret_cast<const unsigned char*>(ll->second.data())) : "";
    if (index == 0) mac = std::to_string(n->ndm_ifindex) + "/" + mac;  // ListInterfaces needs the link
    out.push_back({ip, mac});
  }
  return out;
}

void SetLink(Netlink& nl, int index, const std::string& name, std::optional<uint32_t> mtu, std::optional<bool> up) {
  ifinfomsg ifi{};
  ifi.ifi_family = AF_UNSPEC;
  ifi.ifi_index = index;
  if (up) {
    ifi.ifi_change = IFF_UP;
    ifi.ifi_flags = *up ? IFF_UP : 0;
  }
  NlMessage msg(RTM_NEWLINK, 0, &ifi, sizeof ifi);
  if (!name.empty()) msg.PutString(IFLA_IFNAME, name);
  if (mtu) msg.PutU32(IFLA_MTU, *mtu);
  nl.Request(msg, "set link " + std::to_string(index) + (name.empty() ? "" : " (" + name + ")"));
}

std::string CidrText(const Cidr& c) { return FormatIp(c.ip.family, c.ip.bytes) + "/" + std::to_string(c.prefix); }

}  // namespace

struct InterfaceRequest {
  unsigned char mac[6];
  std::string macText;
  std::string name;
  std::optional<uint32_t> mtu;
  std::vector<Cidr> addresses;
  std::vector<Route> routes;
  std::vector<Neighbor> neighbors;
};

GuestNetwork::GuestNetwork(Loop& loop, std::string stateDir, bool allowed, bool pid1)
    : loop_(loop), stateDir_(std::move(stateDir)), allowed_(allowed), pid1_(pid1) {}

void GuestNetwork::CheckAllowed() const {
  if (!allowed_) {
    throw Error(Code::kFailedPrecondition, "network settings are changed only by the guest's init (or an agent started with --manage-network)");
  }
}

std::shared_ptr<InterfaceRequest> ParseInterfaceRequest(const json& p, int64_t* timeoutMs) {
  CheckKeys(p, "", {"mac", "name", "mtu", "addresses", "routes", "neighbors", "timeoutMs"});
  auto req = std::make_shared<InterfaceRequest>();
  req->macText = GetString(p, "mac", "");
  if (!ParseMac(req->macText, req->mac)) BadField("mac", "\"" + req->macText + "\" is not a MAC address (aa:bb:cc:dd:ee:ff)");
  req->macText = FormatMac(req->mac);
  req->name = GetString(p, "name", "");
  CheckInterfaceName(req->name, "name");
  if (auto m = OptInt(p, "mtu", "", 68, 65535)) req->mtu = static_cast<uint32_t>(*m);
  auto addresses = OptStrings(p, "addresses", "", kMaxAddresses);
  for (size_t i = 0; i < addresses.size(); i++) req->addresses.push_back(ParseCidr(addresses[i], "addresses[" + std::to_string(i) + "]", false));
  if (const json* routes = OptArray(p, "routes", "")) {
    if (routes->size() > kMaxRoutes) BadField("routes", "has more than " + std::to_string(kMaxRoutes) + " entries");
    for (size_t i = 0; i < routes->size(); i++) {
      std::string path = "routes[" + std::to_string(i) + "]";
      if (!(*routes)[i].is_object()) BadField(path, "must be an object");
      req->routes.push_back(ParseRoute((*routes)[i], path));
    }
  }
  if (const json* neighbors = OptArray(p, "neighbors", "")) {
    if (neighbors->size() > kMaxNeighbors) BadField("neighbors", "has more than " + std::to_string(kMaxNeighbors) + " entries");
    for (size_t i = 0; i < neighbors->size(); i++) {
      std::string path = "neighbors[" + std::to_string(i) + "]";
      const json& n = (*neighbors)[i];
      if (!n.is_object()) BadField(path, "must be an object");
      CheckKeys(n, path, {"ip", "mac"});
      Neighbor neighbor;
      neighbor.ip = GetIp(n, "ip", path);
      std::string mac = GetString(n, "mac", path);
      if (!ParseMac(mac, neighbor.mac)) BadField(path + ".mac", "\"" + mac + "\" is not a MAC address");
      req->neighbors.push_back(neighbor);
    }
  }
  // Gateways first need their on-link routes: routes without a gateway go first.
  std::stable_sort(req->routes.begin(), req->routes.end(), [](const Route& a, const Route& b) { return !a.gateway && b.gateway; });
  *timeoutMs = OptInt(p, "timeoutMs", "", 0, 600000).value_or(kDefaultTimeoutMs);
  return req;
}

const std::string& InterfaceRequestMac(const InterfaceRequest& req) { return req.macText; }

void GuestNetwork::ConfigureInterface(const json& p, Done done, Fail fail) {
  int64_t timeout = 0;
  auto req = ParseInterfaceRequest(p, &timeout);
  CheckAllowed();
  TryConfigure(req, MonotonicMs() + timeout, std::move(done), std::move(fail));
}

// A hot-plugged NIC appears a little after the host plugged it: look again every 50 ms.
void GuestNetwork::TryConfigure(std::shared_ptr<InterfaceRequest> req, int64_t deadline, Done done, Fail fail) {
  try {
    Netlink nl;
    auto links = DumpLinks(nl);
    auto nic = std::find_if(links.begin(), links.end(), [&](const LinkInfo& l) { return l.mac == req->macText && !(l.flags & IFF_LOOPBACK); });
    if (nic == links.end()) {
      if (MonotonicMs() >= deadline) throw Error(Code::kNotFound, "no network interface with MAC " + req->macText + " appeared in time");
      loop_.AddTimer(50, [this, req, deadline, done, fail] { TryConfigure(req, deadline, done, fail); });
      return;
    }
    if (nic->name != req->name) {
      // The kernel named NICs in probe order: a NIC holding the wanted name moves aside (down,
      // renamed vmpodN) until its own ConfigureInterface names it.
      for (const auto& other : links) {
        if (other.name == req->name && other.index != nic->index) {
          if (other.flags & IFF_LOOPBACK) throw Error(Code::kInvalidArgument, "name: \"" + req->name + "\" is the loopback interface");
          SetLink(nl, other.index, "", std::nullopt, false);
          SetLink(nl, other.index, "vmpod" + std::to_string(other.index), std::nullopt, std::nullopt);
        }
      }
      SetLink(nl, nic->index, "", std::nullopt, false);
    }
    done(Apply(*req, nic->index, nic->name));
  } catch (const Error& e) {
    fail(e);
  } catch (const std::exception& e) {
    fail(Error(Code::kInternal, e.what()));
  }
}

json GuestNetwork::Apply(const InterfaceRequest& req, int index, const std::string& currentName) {
  Netlink nl;
  // Renamed (it is down now), MTU, up: one request; the kernel renames before it changes flags.
  SetLink(nl, index, currentName == req.name ? "" : req.name, req.mtu, true);

  std::vector<Cidr> have;
  for (const auto& a : DumpAddresses(nl)) {
    if (a.index != index) continue;
    bool wanted = std::any_of(req.addresses.begin(), req.addresses.end(), [&](const Cidr& c) { return c.ip == a.cidr.ip && c.prefix == a.cidr.prefix; });
    if (wanted) have.push_back(a.cidr);
    else if (!IsLinkLocal6(a.cidr.ip)) ChangeAddress(nl, RTM_DELADDR, index, a.cidr);
  }
  for (const auto& c : req.addresses) {
    bool present = std::any_of(have.begin(), have.end(), [&](const Cidr& h) { return h.ip == c.ip && h.prefix == c.prefix; });
    if (!present) ChangeAddress(nl, RTM_NEWADDR, index, c);
  }

  DeleteAgentRoutes(nl, index);
  for (const auto& r : req.routes) AddRoute(nl, index, r);

  for (const auto& [ip, mac] : DumpPermanentNeighbors(nl, index)) {
    bool wanted = std::any_of(req.neighbors.begin(), req.neighbors.end(), [&](const Neighbor& n) { return n.ip == ip && FormatMac(n.mac) == mac; });
    if (!wanted) SetNeighbor(nl, RTM_DELNEIGH, index, ip, nullptr);
  }
  for (const auto& n : req.neighbors) SetNeighbor(nl, RTM_NEWNEIGH, index, n.ip, n.mac);

  std::vector<std::string> addresses;
  for (const auto& c : req.addresses) addresses.push_back(CidrText(c));
  auto known = std::find_if(interfaces_.begin(), interfaces_.end(), [&](const auto& i) { return i.first == req.macText; });
  if (known == interfaces_.end()) interfaces_.push_back({req.macText, addresses});
  else known->second = addresses;
  Log("network: %s (%s) configured: %zu addresses, %zu routes, %zu neighbours", req.name.c_str(), req.macText.c_str(),
      req.addresses.size(), req.routes.size(), req.neighbors.size());
  RefreshContainers();
  uint32_t mtu = 0;
  for (const auto& l : DumpLinks(nl)) {
    if (l.index == index) mtu = l.mtu;
  }
  return {{"name", req.name}, {"index", index}, {"mac", req.macText}, {"mtu", mtu}};
}

std::string ParseRemoveInterface(const json& p) {
  CheckKeys(p, "", {"mac"});
  std::string text = GetString(p, "mac", "");
  unsigned char mac[6];
  if (!ParseMac(text, mac)) BadField("mac", "\"" + text + "\" is not a MAC address (aa:bb:cc:dd:ee:ff)");
  return FormatMac(mac);
}

json GuestNetwork::RemoveInterface(const json& p) {
  std::string text = ParseRemoveInterface(p);
  CheckAllowed();
  std::erase_if(interfaces_, [&](const auto& i) { return i.first == text; });
  Netlink nl;
  auto links = DumpLinks(nl);
  auto nic = std::find_if(links.begin(), links.end(), [&](const LinkInfo& l) { return l.mac == text && !(l.flags & IFF_LOOPBACK); });
  if (nic == links.end()) return {{"found", false}};
  // Down first: the kernel then drops its routes; addresses and neighbours go explicitly.
  SetLink(nl, nic->index, "", std::nullopt, false);
  DeleteAgentRoutes(nl, nic->index);
  for (const auto& [ip, m] : DumpPermanentNeighbors(nl, nic->index)) SetNeighbor(nl, RTM_DELNEIGH, nic->index, ip, nullptr);
  for (const auto& a : DumpAddresses(nl)) {
    if (a.index == nic->index && !IsLinkLocal6(a.cidr.ip)) ChangeAddress(nl, RTM_DELADDR, nic->index, a.cidr);
  }
  Log("network: %s (%s) deconfigured", nic->name.c_str(), text.c_str());
  RefreshContainers();
  return {{"found", true}};
}

json GuestNetwork::ListInterfaces(const json& p) {
  CheckKeys(p, "", {});
  Netlink nl;
  auto links = DumpLinks(nl);
  auto addresses = DumpAddresses(nl);
  auto neighbors = DumpPermanentNeighbors(nl, 0);
  std::map<int, std::string> names;
  json interfaces = json::array();
  for (const auto& l : links) {
    names[l.index] = l.name;
    json addrs = json::array();
    for (const auto& a : addresses) {
      if (a.index == l.index) addrs.push_back(CidrText(a.cidr));
    }
    json neigh = json::array();
    for (const auto& [ip, where] : neighbors) {
      size_t slash = where.find('/');
      if (where.substr(0, slash) == std::to_string(l.index)) neigh.push_back({{"ip", FormatIp(ip.family, ip.bytes)}, {"mac", where.substr(slash + 1)}});
    }
    interfaces.push_back({{"name", l.name}, {"index", l.index}, {"mac", l.mac}, {"mtu", l.mtu},
                          {"up", (l.flags & IFF_UP) != 0}, {"addresses", addrs}, {"neighbors", neigh}});
  }
  json routes = json::array();
  for (const auto& r : DumpRoutes(nl)) {
    if (r.table == RT_TABLE_LOCAL || r.type != RTN_UNICAST) continue;
    json route = {{"dst", r.dst ? FormatIp(r.family, r.dst->bytes) + "/" + std::to_string(r.dstLen) : "default"},
                  {"family", r.family == AF_INET ? 4 : 6}, {"table", r.table}, {"scope", r.scope}, {"protocol", r.protocol}};
    if (!r.dst && r.dstLen != 0) route["dst"] = std::string(r.family == AF_INET ? "0.0.0.0/" : "::/") + std::to_string(r.dstLen);
    if (r.gateway) route["gateway"] = FormatIp(r.family, r.gateway->bytes);
    if (names.count(r.oif)) route["dev"] = names[r.oif];
    if (r.metric) route["metric"] = *r.metric;
    routes.push_back(route);
  }
  char host[HOST_NAME_MAX + 1] = {};
  gethostname(host, sizeof host - 1);
  return {{"hostname", host}, {"interfaces", interfaces}, {"routes", routes}};
}

NetworkConfig ParseNetworkConfig(const json& p) {
  CheckKeys(p, "", {"hostname", "dns", "hosts"});
  std::string hostname = OptString(p, "hostname", "").value_or("");
  if (!hostname.empty()) CheckDnsName(hostname, "hostname", HOST_NAME_MAX);
  std::string resolv = "# written by vmpod-agent\n";
  if (const json* dns = OptObject(p, "dns", "")) {
    CheckKeys(*dns, "dns", {"nameservers", "search", "options", "domain"});
    auto nameservers = OptStrings(*dns, "nameservers", "dns", 16);
    for (size_t i = 0; i < nameservers.size(); i++) {
      Ip ip;
      if (nameservers[i].size() > 64 || !ParseIp(nameservers[i], &ip)) BadField("dns.nameservers[" + std::to_string(i) + "]", "\"" + nameservers[i] + "\" is not an IP address");
      resolv += "nameserver " + FormatIp(ip.family, ip.bytes) + "\n";
    }
    auto search = OptStrings(*dns, "search", "dns", 32);
    auto domain = OptString(*dns, "domain", "dns");
    if (domain) CheckDnsName(*domain, "dns.domain");
    for (size_t i = 0; i < search.size(); i++) CheckDnsName(search[i], "dns.search[" + std::to_string(i) + "]");
    if (!search.empty()) {
      resolv += "search";
      for (const auto& s : search) resolv += " " + s;
      resolv += "\n";
    } else if (domain) {
      resolv += "domain " + *domain + "\n";
    }
    auto options = OptStrings(*dns, "options", "dns", 32);
    for (size_t i = 0; i < options.size(); i++) {
      const auto& o = options[i];
      bool ok = !o.empty() && o.size() <= 64 && std::all_of(o.begin(), o.end(), [](char ch) { return isalnum(static_cast<unsigned char>(ch)) || ch == ':' || ch == '-' || ch == '_' || ch == '.'; });
      if (!ok) BadField("dns.options[" + std::to_string(i) + "]", "\"" + o + "\" is not a resolver option (e.g. ndots:5)");
    }
    if (!options.empty()) {
      resolv += "options";
      for (const auto& o : options) resolv += " " + o;
      resolv += "\n";
    }
  }
  std::string hosts;
  if (const json* list = OptArray(p, "hosts", "")) {
    if (list->size() > 256) BadField("hosts", "has more than 256 entries");
    for (size_t i = 0; i < list->size(); i++) {
      std::string path = "hosts[" + std::to_string(i) + "]";
      const json& h = (*list)[i];
      if (!h.is_object()) BadField(path, "must be an object");
      CheckKeys(h, path, {"ip", "names"});
      Ip ip = GetIp(h, "ip", path);
      auto names = OptStrings(h, "names", path, 16);
      if (names.empty()) BadField(path + ".names", "needs at least one name");
      hosts += FormatIp(ip.family, ip.bytes);
      for (size_t j = 0; j < names.size(); j++) {
        CheckDnsName(names[j], path + ".names[" + std::to_string(j) + "]");
        hosts += "\t" + names[j];
      }
      hosts += "\n";
    }
  }
  return {hostname, resolv, hosts};
}

json GuestNetwork::SetNetworkConfig(const json& p) {
  NetworkConfig config = ParseNetworkConfig(p);
  CheckAllowed();
  bool applied = false;
  const std::string& hostname = config.hostname;
  if (!hostname.empty() && pid1_) {
    if (sethostname(hostname.c_str(), hostname.size()) < 0) ThrowErrno("sethostname");
    applied = true;
  }
  hostname_ = hostname;
  resolvConf_ = config.resolvConf;
  extraHosts_ = config.hosts;
  configured_ = true;
  MkdirAll(stateDir_ + "/network", 0755);
  WriteFileAtomic(stateDir_ + "/network/resolv.conf", resolvConf_);
  RefreshContainers();
  return {{"hostnameApplied", applied}};
}

std::string GuestNetwork::PrimaryAddress() const {
  for (int family : {AF_INET, AF_INET6}) {
    for (const auto& [mac, addresses] : interfaces_) {
      for (const auto& a : addresses) {
        if ((a.find(':') == std::string::npos) == (family == AF_INET)) return a.substr(0, a.find('/'));
      }
    }
  }
  return "";
}

void GuestNetwork::WriteContainerFiles(const std::string& dir, const std::string& hostname, bool create) {
  std::string primary = PrimaryAddress();
  std::string hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";
  if (!hostname.empty()) hosts += (primary.empty() ? std::string("127.0.1.1") : primary) + "\t" + hostname + "\n";
  hosts += extraHosts_;
  const std::pair<const char*, std::string> files[] = {{"resolv.conf", resolvConf_}, {"hosts", hosts}, {"hostname", hostname + "\n"}};
  for (const auto& [name, text] : files) {
    std::string path = dir + "/" + name;
    if (create) {
      WriteFileAtomic(path, text);
    } else {
      WriteFile(path, text);  // in place: the container's bind mount keeps this inode
    }
  }
}

void GuestNetwork::RefreshContainers() {
  for (auto it = containers_.begin(); it != containers_.end();) {
    if (!IsDirectory(it->first + "/net")) {
      it = containers_.erase(it);  // the container is gone
      continue;
    }
    try {
      WriteContainerFiles(it->first + "/net", it->second, false);
    } catch (const Error& e) {
      Log("network: refreshing %s: %s", it->first.c_str(), e.what());
    }
    ++it;
  }
}

void GuestNetwork::AddContainerFiles(Spec& spec, const std::string& containerDir) {
  if (!configured_) return;
  std::string dir = containerDir + "/net";
  MkdirAll(dir, 0755);
  std::string hostname = spec.hostname.empty() ? hostname_ : spec.hostname;
  WriteContainerFiles(dir, hostname, true);
  containers_[containerDir] = hostname;
  for (const char* name : {"resolv.conf", "hosts", "hostname"}) {
    std::string destination = std::string("/etc/") + name;
    bool own = std::any_of(spec.mounts.begin(), spec.mounts.end(), [&](const MountSpec& m) { return NormalizePath(m.destination) == destination; });
    if (!own) spec.mounts.push_back({destination, "bind", dir + "/" + name, {"rbind", "ro"}});
  }
}

}  // namespace agent
