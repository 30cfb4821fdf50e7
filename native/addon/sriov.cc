// A VF's MAC address and VLAN, set through its PF with rtnetlink: RTM_SETLINK on the PF carrying
// IFLA_VFINFO_LIST { IFLA_VF_INFO { IFLA_VF_MAC, IFLA_VF_VLAN } }, as
// `ip link set PF vf N mac M vlan V qos Q` does. The message is built by one function so that
// tests can check its bytes without SR-IOV hardware.
#include <libmnl/libmnl.h>
#include <linux/if_link.h>
#include <linux/rtnetlink.h>
#include <net/if.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "addon/errno_worker.h"

namespace vmpod {
namespace {

struct VfSettings {
  uint32_t vf = 0;
  std::optional<std::vector<uint8_t>> mac;  // 6 bytes
  std::optional<uint32_t> vlan;             // 0-4095 (0 clears the VLAN)
  uint32_t qos = 0;                         // 802.1p priority, 0-7
};

// Writes the RTM_SETLINK request into buf (MNL_SOCKET_BUFFER_SIZE bytes); returns its length.
size_t BuildVfMessage(char* buf, uint32_t seq, int ifindex, const VfSettings& s) {
  nlmsghdr* nlh = mnl_nlmsg_put_header(buf);
  nlh->nlmsg_type = RTM_SETLINK;
  nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
  nlh->nlmsg_seq = seq;
  auto* ifm = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg)));
  ifm->ifi_family = AF_UNSPEC;
  ifm->ifi_index = ifindex;
  nlattr* list = mnl_attr_nest_start(nlh, IFLA_VFINFO_LIST);
  nlattr* info = mnl_attr_nest_start(nlh, IFLA_VF_INFO);
  if (s.mac) {
    ifla_vf_mac mac{};
    mac.vf = s.vf;
    std::memcpy(mac.mac, s.mac->data(), s.mac->size());
    mnl_attr_put(nlh, IFLA_VF_MAC, sizeof(mac), &mac);
  }
  if (s.vlan) {
    ifla_vf_vlan vlan{};
    vlan.vf = s.vf;
    vlan.vlan = *s.vlan;
    vlan.qos = s.qos;
    mnl_attr_put(nlh, IFLA_VF_VLAN, sizeof(vlan), &vlan);
  }
  mnl_attr_nest_end(nlh, info);
  mnl_attr_nest_end(nlh, list);
  return nlh->nlmsg_len;
}

VfSettings SettingsArgs(const Napi::CallbackInfo& info, size_t first) {
  Napi::Env env = info.Env();
  VfSettings s;
  if (!info[first].IsNumber()) throw Napi::TypeError::New(env, "vf must be a number");
  s.vf = info[first].As<Napi::Number>().Uint32Value();
  if (info[first + 1].IsBuffer()) {
    auto mac = info[first + 1].As<Napi::Buffer<uint8_t>>();
    if (mac.Length() != 6) throw Napi::TypeError::New(env, "mac must be 6 bytes");
    s.mac = std::vector<uint8_t>(mac.Data(), mac.Data() + 6);
  } else if (!info[first + 1].IsNull() && !info[first + 1].IsUndefined()) {
    throw Napi::TypeError::New(env, "mac must be a Buffer or null");
  }
  if (info[first + 2].IsNumber()) {
    s.vlan = info[first + 2].As<Napi::Number>().Uint32Value();
  } else if (!info[first + 2].IsNull() && !info[first + 2].IsUndefined()) {
    throw Napi::TypeError::New(env, "vlan must be a number or null");
  }
  if (info[first + 3].IsNumber()) s.qos = info[first + 3].As<Napi::Number>().Uint32Value();
  if (!s.mac && !s.vlan) throw Napi::TypeError::New(env, "set at least one of mac and vlan");
  return s;
}

// sriovVfMessage(ifindex, vf, mac|null, vlan|null, qos, seq): Buffer — the request bytes.
Napi::Value SriovVfMessage(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber() || !info[5].IsNumber()) throw Napi::TypeError::New(env, "ifindex and seq must be numbers");
  VfSettings s = SettingsArgs(info, 1);
  std::vector<char> buf(MNL_SOCKET_BUFFER_SIZE);
  size_t len = BuildVfMessage(buf.data(), info[5].As<Napi::Number>().Uint32Value(), info[0].As<Napi::Number>().Int32Value(), s);
  return Napi::Buffer<char>::Copy(env, buf.data(), len);
}

// Sends the request for the PF `ifname` in the calling thread's network namespace; 0 or an errno.
int SetVf(const std::string& ifname, const VfSettings& s) {
  unsigned ifindex = if_nametoindex(ifname.c_str());
  if (ifindex == 0) return errno == 0 ? ENODEV : errno;
  std::unique_ptr<mnl_socket, int (*)(mnl_socket*)> nl(mnl_socket_open(NETLINK_ROUTE), mnl_socket_close);
  if (!nl) return errno;
  if (mnl_socket_bind(nl.get(), 0, MNL_SOCKET_AUTOPID) < 0) return errno;
  std::vector<char> buf(MNL_SOCKET_BUFFER_SIZE);
  auto seq = static_cast<uint32_t>(time(nullptr));
  size_t len = BuildVfMessage(buf.data(), seq, static_cast<int>(ifindex), s);
  if (mnl_socket_sendto(nl.get(), buf.data(), len) < 0) return errno;
  unsigned portid = mnl_socket_get_portid(nl.get());
  for (;;) {
    ssize_t n = mnl_socket_recvfrom(nl.get(), buf.data(), buf.size());
    if (n < 0) return errno;
    int ret = mnl_cb_run(buf.data(), static_cast<size_t>(n), seq, portid, nullptr, nullptr);
    if (ret < 0) return errno;  // the kernel's NLMSG_ERROR code
    if (ret == MNL_CB_STOP) return 0;  // the ACK
  }
}

// sriovSetVf(pfName, vf, mac|null, vlan|null, qos): Promise<void>
Napi::Value SriovSetVf(const Napi::CallbackInfo& info) {
  std::string ifname = StringArg(info, 0, "pf");
  VfSettings s = SettingsArgs(info, 1);
  return ErrnoWorker::Run(info.Env(), "RTM_SETLINK", ifname + " vf " + std::to_string(s.vf),
                          [=]() { return SetVf(ifname, s); });
}

}  // namespace

void InitSriov(Napi::Env env, Napi::Object exports) {
  exports.Set("sriovVfMessage", Napi::Function::New(env, SriovVfMessage, "sriovVfMessage"));
  exports.Set("sriovSetVf", Napi::Function::New(env, SriovSetVf, "sriovSetVf"));
}

}  // namespace vmpod
