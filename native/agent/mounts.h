// Mounts: a container's rootfs and OCI mounts (run in the container's child process), and the
// agent's own Mount requests (virtio-fs and 9p shares, block devices, tmpfs, hugetlbfs).
#pragma once
#include <string>
#include <vector>

#include "agent/json.h"
#include "agent/spec.h"

namespace agent {

// Joins `path` under `root`, resolving symlinks as if `root` were "/", so that no component can
// escape it (like the securejoin of runc). The result may not exist yet.
std::string SecureJoin(const std::string& root, const std::string& path);

struct RootfsPlan {
  std::string rootfs;        // directory to use as the container's root
  std::string overlayLower;  // non-empty: mount an overlay of this read-only tree on `rootfs`
  std::string overlayUpper, overlayWork;
  std::string reroot;        // empty directory used when "/" is the initramfs (see PivotRoot)
  bool cgroup2 = false;      // the agent runs with cgroup2: mount cgroup2 for "cgroup" mounts
};

// In the container's child, inside its new mount namespace: prepares the rootfs, the OCI mounts,
// /dev, the hostname, and pivots into it. Throws Error on failure.
void SetupRootfs(const Spec& spec, const RootfsPlan& plan);

// Mount request of the protocol. `stateDir` bounds the targets. Returns the mounted device or
// source, for the response. `retry` is set when the block device has not appeared yet.
struct GuestMount {
  std::string type;    // virtiofs, 9p, ext4, tmpfs, hugetlbfs
  std::string source;  // virtiofs or 9p mount tag (ignored for tmpfs/hugetlbfs)
  std::string devicePci, deviceSerial, devicePath;  // block devices: one of them
  std::string target;
  bool readOnly = false;
  std::vector<std::string> options;
  int64_t timeoutMs = 10000;
  // On a host (--share TAG=DIR): a virtiofs mount of TAG binds DIR instead (recursively).
  std::string shareDir;
};
GuestMount ParseGuestMount(const json& params, const std::string& stateDir);
// Returns the block device path for a GuestMount, or "" when it has not appeared (yet).
std::string FindBlockDevice(const GuestMount& m, const std::string& sysRoot = "/sys");
void DoGuestMount(const GuestMount& m, const std::string& device);

}  // namespace agent
