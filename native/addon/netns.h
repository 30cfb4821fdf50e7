// Network namespaces as the other families see them: open handles and per-call references.
#pragma once
#include <memory>
#include <string>

#include "addon/common.h"
#include "addon/rtnl.h"

namespace vmpod {

// An open network namespace: its fd and an rtnetlink socket opened inside it once. Shared between
// the JS handle and the jobs using it, so closing the handle never pulls an fd from under a job.
struct NetnsState {
  Fd ns;
  std::unique_ptr<Rtnl> rtnl;
  std::string path;
};

// What a JS `ns` argument names: null/undefined for the process's own namespace, a NetnsHandle, or
// a path (e.g. /run/netns/NAME, /proc/PID/ns/net) opened for the one call. Parsed on the main thread.
struct NsRef {
  std::shared_ptr<NetnsState> handle;
  std::string path;
};
NsRef ParseNs(Napi::Env env, const Napi::Value& v);

// An NsRef resolved on the worker thread: the namespace fd and its rtnetlink socket.
class NsTarget {
 public:
  explicit NsTarget(const NsRef& ref);
  int fd() const { return fd_; }
  Rtnl& rtnl();

 private:
  int fd_ = -1;
  Rtnl* rtnl_ = nullptr;
  Fd owned_fd_;
  std::unique_ptr<Rtnl> owned_rtnl_;
};

// Opens `path` and checks that it is a network namespace (ioctl NS_GET_NSTYPE).
Fd OpenNetnsFd(const std::string& path);

}  // namespace vmpod
