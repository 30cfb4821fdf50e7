// Guest networking: the agent mirrors the sandbox's network namespace into the guest. Each NIC
// is found by its MAC, renamed, given its MTU, addresses, routes and static neighbours; the
// hostname is set; and every container gets /etc/resolv.conf, /etc/hosts and /etc/hostname
// (read-only bind mounts of files the agent writes). See docs/agent-protocol.md, "Networking".
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "agent/json.h"
#include "agent/loop.h"
#include "agent/spec.h"

namespace agent {

// The network requests parsed and validated without netlink or files (the handlers below act on
// what these return; native/fuzz/net.cc fuzzes them).
struct InterfaceRequest;  // ConfigureInterface's NIC: MAC, name, MTU, addresses, routes, neighbours
std::shared_ptr<InterfaceRequest> ParseInterfaceRequest(const json& params, int64_t* timeoutMs);
const std::string& InterfaceRequestMac(const InterfaceRequest& req);  // canonical aa:bb:..
// RemoveInterface's MAC, canonical.
std::string ParseRemoveInterface(const json& params);
// SetNetworkConfig: the hostname and the resolv.conf and hosts lines the agent writes.
struct NetworkConfig {
  std::string hostname;
  std::string resolvConf;
  std::string hosts;
};
NetworkConfig ParseNetworkConfig(const json& params);

class GuestNetwork {
 public:
  // `allowed`: whether this agent may change network settings (as the guest's init, or with
  // --manage-network). `pid1`: the hostname is only ever set by the guest's init.
  GuestNetwork(Loop& loop, std::string stateDir, bool allowed, bool pid1);

  using Done = std::function<void(const json&)>;
  using Fail = std::function<void(const Error&)>;
  // ConfigureInterface: validates, then waits (up to timeoutMs) for a NIC with the MAC to appear.
  void ConfigureInterface(const json& params, Done done, Fail fail);
  json RemoveInterface(const json& params);
  json ListInterfaces(const json& params);
  json SetNetworkConfig(const json& params);

  // For a container about to be created in `containerDir`: writes its resolv.conf, hosts and
  // hostname there and adds read-only bind mounts of them to `spec` (unless the spec mounts
  // those paths itself). Does nothing until the host sent SetNetworkConfig.
  void AddContainerFiles(Spec& spec, const std::string& containerDir);

 private:
  void TryConfigure(std::shared_ptr<InterfaceRequest> req, int64_t deadline, Done done, Fail fail);
  json Apply(const InterfaceRequest& req, int index, const std::string& currentName);
  void CheckAllowed() const;
  // Rewrites the files of every container (in place: the bind mounts keep their inodes).
  void RefreshContainers();
  void WriteContainerFiles(const std::string& dir, const std::string& hostname, bool create);
  std::string PrimaryAddress() const;

  Loop& loop_;
  std::string stateDir_;
  bool allowed_;
  bool pid1_;
  bool configured_ = false;  // SetNetworkConfig was received
  std::string hostname_;
  std::string resolvConf_;
  std::string extraHosts_;
  // NICs configured, in order: MAC -> (name, addresses), for the hosts file's primary address.
  std::vector<std::pair<std::string, std::vector<std::string>>> interfaces_;
  // Container dir -> hostname, for RefreshContainers.
  std::map<std::string, std::string> containers_;
};

}  // namespace agent
