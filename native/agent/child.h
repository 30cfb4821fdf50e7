// Code that runs in a freshly forked child, before execve: a container's init (namespaces,
// rootfs, pivot_root) and an exec'd process (setns into a running container), then the OCI
// process setup (rlimits, user, capabilities, no_new_privs, env, cwd) and execve.
#pragma once
#include <string>
#include <vector>

#include "agent/mounts.h"
#include "agent/spec.h"

namespace agent {

struct ChildIo {
  int in = -1, out = -1, err = -1;  // -1: /dev/null
  int sync = -1;                    // SOCK_SEQPACKET to the agent
};

struct JoinNamespace {
  int nstype;  // CLONE_NEW*
  int fd;      // open namespace file
};

[[noreturn]] void RunInit(ChildIo io, const std::string& cgroup, bool newCgroupNs, std::vector<JoinNamespace> join,
                          const Spec& spec, const RootfsPlan& plan);
[[noreturn]] void RunExec(ChildIo io, const std::string& cgroup, std::vector<JoinNamespace> join,
                          const ProcessSpec& process);

}  // namespace agent
