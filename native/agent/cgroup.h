// Per-container cgroups on cgroup2 (docs/agent-protocol.md, "Cgroups"). The agent owns one
// directory (its cgroup root) and makes one child per container in it.
#pragma once
#include <sys/types.h>

#include <set>
#include <string>

#include "agent/json.h"
#include "agent/requests.h"
#include "agent/spec.h"

namespace agent {

class Cgroups {
 public:
  // Disabled until Init. `root` is a cgroup2 directory (created if missing). With
  // `enableInParent`, the controllers are first enabled in the parent's subtree_control (the guest
  // case, where the agent owns the hierarchy); otherwise the parent is never written.
  void Init(const std::string& root, bool enableInParent);
  bool enabled() const { return !root_.empty(); }
  const std::string& root() const { return root_; }
  const std::set<std::string>& controllers() const { return controllers_; }

  // Creates the container's cgroup and applies the limits; throws (and removes it) on failure.
  std::string Create(const std::string& id, const ResourcesSpec& resources);
  // Removes a container's cgroup; false while processes remain (EBUSY).
  bool Remove(const std::string& path);
  // Signals every process in the cgroup (cgroup.kill for SIGKILL where the kernel has it).
  void Signal(const std::string& path, int sig);
  // oom_kill count from memory.events (0 when there is no memory controller).
  uint64_t OomKills(const std::string& path);
  json Stats(const std::string& path);
  // Asks the kernel to freeze (or thaw) every process of the cgroup (cgroup.freeze); the change
  // is complete once Frozen says so.
  void Freeze(const std::string& path, bool frozen);
  // cgroup.events "frozen": true once every process of the cgroup is frozen.
  bool Frozen(const std::string& path);
  // Applies an UpdateContainer: checks that every controller asked for is there, then writes the
  // files; when a write fails, the files written before it get their old values back.
  void Update(const std::string& path, const ResourceUpdate& update);
  // Removes the root directory if the agent created it and it is empty.
  void Shutdown();

 private:
  std::string root_;
  bool createdRoot_ = false;
  std::set<std::string> controllers_;
};

// Writes "0" to <path>/cgroup.procs: moves the calling process into the cgroup.
void JoinCgroup(const std::string& path);

}  // namespace agent
