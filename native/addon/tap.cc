// File descriptors of virtual NICs' host ends: tap queues (/dev/net/tun) and macvtap queues.
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <atomic>
#include <vector>

#include "addon/netns.h"

namespace vmpod {
namespace {

constexpr uint32_t kMaxQueues = 256;  // the kernel's MAX_TAP_QUEUES

// Hands fds over to JS as an array of numbers; until then they are closed with the job.
ToJs FdArray(std::vector<Fd> fds, std::function<void(Napi::Env, Napi::Object&)> extra = {}) {
  return [fds = std::move(fds), extra = std::move(extra)](Napi::Env env) mutable -> Napi::Value {
    Napi::Array arr = Napi::Array::New(env, fds.size());
    for (size_t i = 0; i < fds.size(); ++i) arr.Set(i, fds[i].Release());
    if (!extra) return arr;
    Napi::Object o = Napi::Object::New(env);
    o.Set("fds", arr);
    extra(env, o);
    return o;
  };
}

// tapOpen(ns, {name, queues, multiQueue, vnetHdr, persist, owner, group, nonBlocking, exclusive})
//   -> {name, index, fds}
// exclusive: create a new tap (`ip tuntap add dev NAME mode tap [multi_queue] [vnet_hdr]
// [user U] [group G]`, which always persists); otherwise attach queues to an existing one.
Napi::Value TapOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NsRef ns = ParseNs(env, info[0]);
  Napi::Object spec = ArgObject(info[1], "spec");
  std::string name = ArgString(spec.Get("name"), "name");
  uint32_t queues = OptU32(spec, "queues").value_or(1);
  bool multi_queue = OptBool(spec, "multiQueue").value_or(queues > 1);
  bool vnet_hdr = OptBool(spec, "vnetHdr").value_or(false);
  bool persist = OptBool(spec, "persist").value_or(false);
  bool non_blocking = OptBool(spec, "nonBlocking").value_or(false);
  bool exclusive = OptBool(spec, "exclusive").value_or(true);
  std::optional<uint32_t> owner = OptU32(spec, "owner"), group = OptU32(spec, "group");
  if (name.empty() || name.size() >= IFNAMSIZ) throw Napi::RangeError::New(env, "invalid interface name");
  if (queues < 1 || queues > kMaxQueues || (queues > 1 && !multi_queue)) {
    throw Napi::RangeError::New(env, "queues must be 1..256, and more than 1 needs multiQueue");
  }
  return Schedule(env, [=]() -> ToJs {
    NsTarget target(ns);
    std::vector<Fd> fds;
    {
      // A tun fd belongs to the namespace of the thread that opened /dev/net/tun: TUNSETIFF
      // creates the device there. Nothing else needs the thread inside.
      NetnsScope scope(target.fd());
      for (uint32_t i = 0; i < queues; ++i) {
        Fd fd(open("/dev/net/tun", O_RDWR | O_CLOEXEC | (non_blocking ? O_NONBLOCK : 0)));
        if (!fd) ThrowSys("open", errno, "/dev/net/tun");
        fds.push_back(std::move(fd));
      }
    }
    Rtnl& rtnl = target.rtnl();
    if (!exclusive) rtnl.IfIndex(name);  // attach only: never create a device by accident
    ifreq ifr{};
    memcpy(ifr.ifr_name, name.data(), name.size());
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | (vnet_hdr ? IFF_VNET_HDR : 0) | (multi_queue ? IFF_MULTI_QUEUE : 0);
    bool persisted = false;
    try {
      for (size_t i = 0; i < fds.size(); ++i) {
        ifreq req = ifr;
        if (i == 0 && exclusive) req.ifr_flags |= IFF_TUN_EXCL;  // EBUSY if the name is taken
        if (ioctl(fds[i].get(), TUNSETIFF, &req) != 0) ThrowSys("TUNSETIFF", errno, name);
      }
      if (exclusive) {
        if (owner && ioctl(fds[0].get(), TUNSETOWNER, static_cast<unsigned long>(*owner)) != 0) ThrowSys("TUNSETOWNER", errno, name);
        if (group && ioctl(fds[0].get(), TUNSETGROUP, static_cast<unsigned long>(*group)) != 0) ThrowSys("TUNSETGROUP", errno, name);
        if (persist) {
          if (ioctl(fds[0].get(), TUNSETPERSIST, 1UL) != 0) ThrowSys("TUNSETPERSIST", errno, name);
          persisted = true;
        }
      }
      int index = rtnl.IfIndex(name);
      return FdArray(std::move(fds), [name, index](Napi::Env, Napi::Object& o) {
        o.Set("name", name);
        o.Set("index", index);
      });
    } catch (...) {
      // Without persistence the device goes away with its last fd.
      if (persisted) ioctl(fds[0].get(), TUNSETPERSIST, 0UL);
      throw;
    }
  });
}

// Reads "MAJOR:MINOR" of the macvtap's character device from sysfs as seen from `nsfd`: a
// detached sysfs mount made inside the namespace (fsopen/fsmount), attached nowhere.
dev_t MacvtapDevice(int nsfd, const std::string& name, int index) {
  Fd context;
  {
    NetnsScope scope(nsfd);  // sysfs shows the network namespace current at fsopen() time
    context = Fd(fsopen("sysfs", FSOPEN_CLOEXEC));
  }
  if (!context) ThrowSys("fsopen", errno, "sysfs");
  if (fsconfig(context.get(), FSCONFIG_CMD_CREATE, nullptr, nullptr, 0) != 0) ThrowSys("fsconfig", errno, "sysfs");
  Fd mnt(fsmount(context.get(), FSMOUNT_CLOEXEC,
                 MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC));
  if (!mnt) ThrowSys("fsmount", errno, "sysfs");
  std::string rel = "class/net/" + name + "/macvtap/tap" + std::to_string(index) + "/dev";
  Fd file(openat(mnt.get(), rel.c_str(), O_RDONLY | O_CLOEXEC));
  if (!file) ThrowSys("open", errno, "/sys/" + rel);
  char text[32] = {};
  ssize_t n = read(file.get(), text, sizeof text - 1);
  unsigned major = 0, minor = 0;
  if (n <= 0 || sscanf(text, "%u:%u", &major, &minor) != 2) ThrowSys("read", EIO, "/sys/" + rel, "no MAJOR:MINOR");
  return makedev(major, minor);
}

// macvtapOpen(ns, {name, queues, vnetHdr, nonBlocking, devDir}) -> fds
// One fd per queue of an existing macvtap, opened inside its namespace through a private device
// node (mknod in devDir, unlinked at once). /dev/tapIFINDEX is never used: ifindexes repeat across
// namespaces, so that node may belong to another namespace's macvtap.
Napi::Value MacvtapOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NsRef ns = ParseNs(env, info[0]);
  Napi::Object spec = ArgObject(info[1], "spec");
  std::string name = ArgString(spec.Get("name"), "name");
  uint32_t queues = OptU32(spec, "queues").value_or(1);
  bool vnet_hdr = OptBool(spec, "vnetHdr").value_or(true);
  bool non_blocking = OptBool(spec, "nonBlocking").value_or(false);
  std::string dev_dir = OptString(spec, "devDir").value_or("/dev");
  if (name.empty() || name.size() >= IFNAMSIZ) throw Napi::RangeError::New(env, "invalid interface name");
  if (queues < 1 || queues > kMaxQueues) throw Napi::RangeError::New(env, "queues must be 1..256");
  return Schedule(env, [=]() -> ToJs {
    static std::atomic<unsigned> counter{0};
    NsTarget target(ns);
    int index = target.rtnl().IfIndex(name);
    dev_t device = MacvtapDevice(target.fd(), name, index);
    std::string node = dev_dir + "/.vmpod-macvtap-" + std::to_string(getpid()) + "-" + std::to_string(counter++);
    if (mknod(node.c_str(), S_IFCHR | 0600, device) != 0) {
      // A node left by a crashed process that had the same pid: ours to replace.
      if (errno != EEXIST || unlink(node.c_str()) != 0 || mknod(node.c_str(), S_IFCHR | 0600, device) != 0) {
        ThrowSys("mknod", errno, node);
      }
    }
    std::vector<Fd> fds;
    int open_errno = 0;
    {
      NetnsScope scope(target.fd());  // queue sockets belong to the opener's namespace
      for (uint32_t i = 0; i < queues && open_errno == 0; ++i) {
        Fd fd(open(node.c_str(), O_RDWR | O_CLOEXEC | (non_blocking ? O_NONBLOCK : 0)));
        if (fd) fds.push_back(std::move(fd));
        else open_errno = errno;
      }
    }
    unlink(node.c_str());
    if (open_errno != 0) ThrowSys("open", open_errno, node);
    for (Fd& fd : fds) {
      ifreq ifr{};
      // The device behind the fd must be the one asked for (guards against a minor reused meanwhile).
      if (ioctl(fd.get(), TUNGETIFF, &ifr) != 0) ThrowSys("TUNGETIFF", errno, name);
      if (strncmp(ifr.ifr_name, name.c_str(), IFNAMSIZ) != 0) ThrowSys("open", ENXIO, name, "device node changed owner");
      ifr.ifr_flags = IFF_TAP | IFF_NO_PI | (vnet_hdr ? IFF_VNET_HDR : 0) | (queues > 1 ? IFF_MULTI_QUEUE : 0);
      if (ioctl(fd.get(), TUNSETIFF, &ifr) != 0) ThrowSys("TUNSETIFF", errno, name);
    }
    return FdArray(std::move(fds));
  });
}

}  // namespace

void InitTap(Napi::Env env, Napi::Object exports) {
  exports.Set("tapOpen", Napi::Function::New<TapOpen>(env, "tapOpen"));
  exports.Set("macvtapOpen", Napi::Function::New<MacvtapOpen>(env, "macvtapOpen"));
}

}  // namespace vmpod
