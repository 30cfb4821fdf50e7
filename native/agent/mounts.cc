#include "agent/mounts.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/mount.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <regex>
#include <set>

namespace agent {

namespace {

void MountOrThrow(const std::string& source, const std::string& target, const char* type, unsigned long flags,
                  const std::string& data) {
  if (mount(source.empty() ? nullptr : source.c_str(), target.c_str(), type, flags,
            data.empty() ? nullptr : data.c_str()) < 0) {
    int err = errno;
    throw Error(Code::kInternal,
                "mount " + (source.empty() ? std::string("none") : source) + " on " + target + " (type " +
                    (type ? type : "none") + (data.empty() ? "" : ", options " + data) + "): " + strerror(err),
                err);
  }
}

// One line of /proc/self/mountinfo: the mount's id and where it is mounted (as this process sees it).
struct MountEntry {
  int id;
  std::string point;
};

// mountinfo escapes space, tab, newline and backslash in paths as \ooo.
std::string UnescapeMountPath(const std::string& s) {
  auto octal = [&](size_t i) { return i < s.size() && s[i] >= '0' && s[i] <= '7'; };
  std::string out;
  for (size_t i = 0; i < s.size(); i++) {
    if (s[i] == '\\' && octal(i + 1) && octal(i + 2) && octal(i + 3)) {
      out += static_cast<char>((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0'));
      i += 3;
    } else {
      out += s[i];
    }
  }
  return out;
}

std::vector<MountEntry> ReadMountInfo() {
  std::vector<MountEntry> out;
  for (const auto& line : Split(ReadFile("/proc/self/mountinfo", 16 << 20), '\n')) {
    auto fields = Split(line, ' ');
    if (fields.size() < 5) continue;
    out.push_back({std::atoi(fields[0].c_str()), UnescapeMountPath(fields[4])});
  }
  return out;
}

int MountSetattr(int dirfd, const char* path, unsigned int flags, uint64_t set) {
  mount_attr attr{};
  attr.attr_set = set;
  return static_cast<int>(syscall(SYS_mount_setattr, dirfd, path, flags, &attr, sizeof attr));
}

// A bind remount sets every per-mount flag: keep the ones the mount has (the kernel keeps the
// atime flags by itself).
void RemountReadOnly(const std::string& path) {
  struct statvfs st;
  if (statvfs(path.c_str(), &st) < 0) ThrowErrno("statvfs " + path);
  unsigned long keep = (st.f_flag & ST_NOSUID ? MS_NOSUID : 0) | (st.f_flag & ST_NODEV ? MS_NODEV : 0) |
                       (st.f_flag & ST_NOEXEC ? MS_NOEXEC : 0);
  MountOrThrow("", path, nullptr, MS_REMOUNT | MS_BIND | MS_RDONLY | keep, "");
}

// Makes the mount at `path` read-only and, with `recursive`, every mount below it as well (a
// bind remount changes one mount only, and the submounts an rbind or a virtio-fs share brings
// would stay writable). Other mount flags are left as they are. Kernels without mount_setattr(2)
// (before 5.12) get a remount of each mount found in /proc/self/mountinfo.
void MakeReadOnly(const std::string& path, bool recursive) {
  if (MountSetattr(AT_FDCWD, path.c_str(), recursive ? AT_RECURSIVE : 0, MOUNT_ATTR_RDONLY) == 0) return;
  if (errno != ENOSYS) ThrowErrno("make " + path + " read-only (mount_setattr)");
  RemountReadOnly(path);
  if (!recursive) return;
  std::string top = NormalizePath(path);
  for (const auto& m : ReadMountInfo()) {
    if (m.point == top || !IsUnder(m.point, top)) continue;
    try {
      RemountReadOnly(m.point);
    } catch (const Error& e) {
      // Covered by a later mount (gone from sight, or not a mount root at that path any more).
      if (e.err() != ENOENT && e.err() != EINVAL) throw;
      Debug("%s: not remounted read-only: %s", m.point.c_str(), e.what());
    }
  }
}

// Makes read-only the mounts of this namespace whose ids are in `ids` (the rootfs and the
// mounts that came with it), each by itself: the mounts set up on top of them keep their own
// flags. A mount since covered by another one is out of reach, and left alone.
void MakeMountsReadOnly(const std::set<int>& ids) {
  for (const auto& m : ReadMountInfo()) {
    if (!ids.count(m.id)) continue;
    Fd fd(open(m.point.c_str(), O_PATH | O_CLOEXEC));
    std::string fdinfo;
    if (!fd.valid() || !ReadFileIfExists("/proc/self/fdinfo/" + std::to_string(fd.get()), &fdinfo, 65536) ||
        fdinfo.find("\nmnt_id:\t" + std::to_string(m.id) + "\n") == std::string::npos) {
      Debug("%s: covered, not made read-only", m.point.c_str());
      continue;
    }
    if (MountSetattr(fd.get(), "", AT_EMPTY_PATH, MOUNT_ATTR_RDONLY) == 0) continue;
    if (errno != ENOSYS) ThrowErrno("make " + m.point + " read-only (mount_setattr)");
    RemountReadOnly("/proc/self/fd/" + std::to_string(fd.get()));
  }
}

std::set<int> MountIds() {
  std::set<int> ids;
  for (const auto& m : ReadMountInfo()) ids.insert(m.id);
  return ids;
}

void MkdirParents(const std::string& path) {
  auto slash = path.rfind('/');
  if (slash > 0) MkdirAll(path.substr(0, slash));
}

// Creates the mount point: a directory, or an empty file when binding a non-directory.
void EnsureMountPoint(const std::string& path, bool file) {
  struct stat st;
  if (stat(path.c_str(), &st) == 0) return;
  if (!file) {
    MkdirAll(path);
    return;
  }
  MkdirParents(path);
  Fd fd(open(path.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644));
  if (!fd.valid()) ThrowErrno("create mount point " + path);
}

void MountOne(const std::string& rootfs, const MountSpec& m, bool cgroup2) {
  std::string dest = SecureJoin(rootfs, m.destination);
  MountOptions o = ParseMountOptions(m.options);
  if (m.type == "bind" || o.bind) {
    struct stat st;
    if (stat(m.source.c_str(), &st) < 0) ThrowErrno("bind mount source " + m.source);
    EnsureMountPoint(dest, !S_ISDIR(st.st_mode));
    MountOrThrow(m.source, dest, nullptr, MS_BIND | (o.flags & MS_REC), "");
    unsigned long extra = o.flags & ~(MS_BIND | MS_REC | MS_REMOUNT);
    if (extra) MountOrThrow("", dest, nullptr, MS_REMOUNT | MS_BIND | extra, "");
    if (extra & MS_RDONLY) MakeReadOnly(dest, true);
  } else if (m.type == "cgroup" || m.type == "cgroup2") {
    if (!cgroup2) {
      Debug("skipping the cgroup mount on %s: cgroups are disabled", m.destination.c_str());
      return;
    }
    EnsureMountPoint(dest, false);
    MountOrThrow("cgroup2", dest, "cgroup2", o.flags, "");
  } else {
    EnsureMountPoint(dest, false);
    MountOrThrow(m.source.empty() ? m.type : m.source, dest, m.type.c_str(), o.flags, o.data);
  }
  if (o.propagation) MountOrThrow("", dest, nullptr, o.propagation, "");
}

void MakeDevice(const std::string& dev, const DeviceSpec& d) {
  std::string path = SecureJoin(dev.substr(0, dev.size() - 4), d.path);  // dev is <rootfs>/dev
  MkdirParents(path);
  mode_t type = d.type == 'b' ? S_IFBLK : d.type == 'p' ? S_IFIFO : S_IFCHR;
  unlink(path.c_str());
  if (mknod(path.c_str(), type | (d.fileMode & 07777), makedev(d.major, d.minor)) == 0) {
    if (chown(path.c_str(), d.uid, d.gid) < 0) ThrowErrno("chown " + path);
    if (chmod(path.c_str(), d.fileMode & 07777) < 0) ThrowErrno("chmod " + path);
    return;
  }
  if (errno != EPERM) ThrowErrno("mknod " + path);
  // Without CAP_MKNOD: bind the agent's own node (same device) over an empty file.
  EnsureMountPoint(path, true);
  MountOrThrow(d.path, path, nullptr, MS_BIND, "");
}

void DefaultDevices(const std::string& rootfs, const Spec& spec) {
  std::string dev = rootfs + "/dev";
  static const struct {
    const char* name;
    int major, minor;
  } kDefaults[] = {{"/dev/null", 1, 3},    {"/dev/zero", 1, 5}, {"/dev/full", 1, 7},
                   {"/dev/random", 1, 8}, {"/dev/urandom", 1, 9}, {"/dev/tty", 5, 0}};
  for (const auto& d : kDefaults) {
    DeviceSpec ds;
    ds.path = d.name;
    ds.type = 'c';
    ds.major = d.major;
    ds.minor = d.minor;
    ds.fileMode = 0666;
    MakeDevice(dev, ds);
  }
  for (const auto& d : spec.devices) MakeDevice(dev, d);
  static const char* const kLinks[][2] = {{"/proc/self/fd", "fd"},    {"/proc/self/fd/0", "stdin"},
                                          {"/proc/self/fd/1", "stdout"}, {"/proc/self/fd/2", "stderr"},
                                          {"pts/ptmx", "ptmx"},          {"/proc/kcore", "core"}};
  for (const auto& l : kLinks) {
    std::string path = dev + "/" + l[1];
    if (symlink(l[0], path.c_str()) < 0 && errno != EEXIST) ThrowErrno("symlink " + path);
  }
  MkdirAll(dev + "/shm");
  MkdirAll(dev + "/pts");
}

void PivotRoot(const std::string& rootfs, const std::string& reroot) {
  if (chdir(rootfs.c_str()) < 0) ThrowErrno("chdir " + rootfs);
  if (syscall(SYS_pivot_root, ".", ".") < 0) {
    if (errno != EINVAL || reroot.empty()) ThrowErrno("pivot_root " + rootfs);
    // The current root is the initramfs rootfs, which pivot_root cannot move. Stack a recursive
    // bind of it over "/" (so the root gets a parent mount), then pivot from there.
    MountOrThrow("/", reroot, nullptr, MS_BIND | MS_REC, "");
    if (chdir(reroot.c_str()) < 0) ThrowErrno("chdir " + reroot);
    MountOrThrow(reroot, "/", nullptr, MS_MOVE, "");
    if (chroot(".") < 0) ThrowErrno("chroot");
    if (chdir(rootfs.c_str()) < 0) ThrowErrno("chdir " + rootfs);
    if (syscall(SYS_pivot_root, ".", ".") < 0) ThrowErrno("pivot_root " + rootfs);
  }
  // The old root is now stacked under the new one at "."; detach it.
  if (mount(nullptr, ".", nullptr, MS_SLAVE | MS_REC, nullptr) < 0) ThrowErrno("make the old root a slave");
  if (umount2(".", MNT_DETACH) < 0) ThrowErrno("detach the old root");
  if (chdir("/") < 0) ThrowErrno("chdir /");
}

void MaskPaths(const Spec& spec) {
  for (const auto& p : spec.maskedPaths) {
    struct stat st;
    if (stat(p.c_str(), &st) < 0) continue;
    if (S_ISDIR(st.st_mode)) {
      MountOrThrow("tmpfs", p, "tmpfs", MS_RDONLY, "");
    } else {
      MountOrThrow("/dev/null", p, nullptr, MS_BIND, "");
    }
  }
  for (const auto& p : spec.readonlyPaths) {
    if (!PathExists(p)) continue;
    MountOrThrow(p, p, nullptr, MS_BIND | MS_REC, "");
    MountOrThrow("", p, nullptr, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "");
    MakeReadOnly(p, true);
  }
}

// 9p options the Mount request may carry: the transport is always virtio (no fd/tcp/rdma
// channel is opened from a request), the protocol version is one of the three.
void Check9pOption(const std::string& option, const std::string& field) {
  if (StartsWith(option, "trans=") && option != "trans=virtio") BadField(field, "9p goes over virtio only (trans=virtio)");
  if (StartsWith(option, "version=") && option != "version=9p2000.L" && option != "version=9p2000.u" && option != "version=9p2000") {
    BadField(field, "must be version=9p2000.L, 9p2000.u or 9p2000");
  }
  if (StartsWith(option, "msize=")) {
    std::string value = option.substr(6);
    if (!std::regex_match(value, std::regex("[0-9]{4,7}")) || std::stol(value) < 4096 || std::stol(value) > 4194304) {
      BadField(field, "msize must be 4096-4194304 bytes");
    }
  }
}

// The kernel's default msize (128 KiB) stated explicitly; QEMU warns below 8 KiB, and 6.1's
// virtio transport caps it at 500 KiB.
constexpr int k9pDefaultMsize = 131072;

// The options of a 9p Mount: trans=virtio always, version=9p2000.L and the msize unless given.
std::vector<std::string> NinePOptions(const std::vector<std::string>& given) {
  auto has = [&](const char* key) {
    return std::any_of(given.begin(), given.end(), [&](const std::string& o) { return StartsWith(o, key); });
  };
  std::vector<std::string> out = {"trans=virtio"};
  if (!has("version=")) out.push_back("version=9p2000.L");
  if (!has("msize=")) out.push_back("msize=" + std::to_string(k9pDefaultMsize));
  for (const auto& o : given) {
    if (!StartsWith(o, "trans=")) out.push_back(o);
  }
  return out;
}

unsigned long RootPropagation(const std::string& name) {
  if (name.empty() || name == "rslave") return MS_SLAVE | MS_REC;
  if (name == "slave") return MS_SLAVE;
  if (name == "rprivate") return MS_PRIVATE | MS_REC;
  if (name == "private") return MS_PRIVATE;
  if (name == "rshared") return MS_SHARED | MS_REC;
  if (name == "shared") return MS_SHARED;
  throw Error(Code::kInvalidArgument, "linux.rootfsPropagation: unknown value \"" + name + "\"");
}

}  // namespace

std::string SecureJoin(const std::string& root, const std::string& path) {
  std::vector<std::string> todo;  // components still to resolve, the next one last
  auto push = [&](const std::string& p) {
    auto parts = Split(p, '/');
    for (auto it = parts.rbegin(); it != parts.rend(); ++it) todo.push_back(*it);
  };
  push(path);
  std::vector<std::string> done;
  int links = 0;
  auto joined = [&]() {
    std::string out = root;
    for (const auto& d : done) out += "/" + d;
    return out;
  };
  while (!todo.empty()) {
    std::string comp = todo.back();
    todo.pop_back();
    if (comp.empty() || comp == ".") continue;
    if (comp == "..") {
      if (!done.empty()) done.pop_back();
      continue;
    }
    std::string cur = joined() + "/" + comp;
    struct stat st;
    if (lstat(cur.c_str(), &st) == 0 && S_ISLNK(st.st_mode)) {
      if (++links > 40) throw Error(Code::kInvalidArgument, "too many symlinks resolving " + path, ELOOP);
      char buf[PATH_MAX];
      ssize_t n = readlink(cur.c_str(), buf, sizeof buf);
      if (n < 0) ThrowErrno("readlink " + cur);
      std::string target(buf, n);
      if (!target.empty() && target[0] == '/') done.clear();
      push(target);
      continue;
    }
    done.push_back(comp);
  }
  return joined();
}

void SetupRootfs(const Spec& spec, const RootfsPlan& plan) {
  MountOrThrow("", "/", nullptr, RootPropagation(spec.rootfsPropagation), "");
  const std::string& rootfs = plan.rootfs;
  // With root.readonly, the mounts that make up the rootfs (those the rbind below brings along
  // too) become read-only; the OCI mounts set up on top of it keep their own options.
  std::set<int> before = spec.rootReadonly ? MountIds() : std::set<int>{};
  if (!plan.overlayLower.empty()) {
    MountOrThrow("overlay", rootfs, "overlay", 0,
                 "lowerdir=" + plan.overlayLower + ",upperdir=" + plan.overlayUpper + ",workdir=" + plan.overlayWork);
  } else {
    MountOrThrow(rootfs, rootfs, nullptr, MS_BIND | MS_REC, "");
  }
  std::set<int> rootMounts;
  if (spec.rootReadonly) {
    for (int id : MountIds()) {
      if (!before.count(id)) rootMounts.insert(id);
    }
  }
  bool devMounted = false, devIsBind = false;
  for (const auto& m : spec.mounts) {
    if (NormalizePath(m.destination) == "/dev") {
      devMounted = true;
      devIsBind = m.type == "bind" || ParseMountOptions(m.options).bind;
    }
  }
  if (!devMounted) {
    std::string dev = rootfs + "/dev";
    EnsureMountPoint(dev, false);
    MountOrThrow("tmpfs", dev, "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=755,size=65536k");
  }
  for (size_t i = 0; i < spec.mounts.size(); i++) {
    try {
      MountOne(rootfs, spec.mounts[i], plan.cgroup2);
    } catch (const Error& e) {
      throw Error(e.code(), "mounts[" + std::to_string(i) + "]: " + e.what(), e.err());
    }
    if (NormalizePath(spec.mounts[i].destination) == "/dev" && !devIsBind) DefaultDevices(rootfs, spec);
  }
  if (!devMounted) DefaultDevices(rootfs, spec);
  if (!spec.hostname.empty() && sethostname(spec.hostname.data(), spec.hostname.size()) < 0) ThrowErrno("sethostname");
  // Before pivot_root: from the initramfs it works on a copy of the mounts, with other ids.
  if (spec.rootReadonly) MakeMountsReadOnly(rootMounts);
  PivotRoot(rootfs, plan.reroot);
  MaskPaths(spec);
  for (const auto& [key, value] : spec.sysctl) {
    std::string path = "/proc/sys/" + key;
    for (size_t i = 10; i < path.size(); i++) {
      if (path[i] == '.') path[i] = '/';
    }
    WriteFile(path, value);
  }
}

GuestMount ParseGuestMount(const json& p, const std::string& stateDir) {
  CheckKeys(p, "", {"type", "source", "device", "target", "readOnly", "options", "timeoutMs"});
  GuestMount m;
  m.type = GetString(p, "type", "");
  if (m.type != "virtiofs" && m.type != "9p" && m.type != "ext4" && m.type != "tmpfs" && m.type != "hugetlbfs") {
    BadField("type", "must be virtiofs, 9p, ext4, tmpfs or hugetlbfs");
  }
  m.source = OptString(p, "source", "").value_or("");
  if (m.type == "virtiofs" && !std::regex_match(m.source, std::regex("[A-Za-z0-9_.-]{1,36}"))) {
    BadField("source", "a virtio-fs tag of 1-36 characters of [A-Za-z0-9_.-] is required");
  }
  // QEMU's virtio-9p mount_tag: vmpod's hypervisor config allows 1-31 of the same characters.
  if (m.type == "9p" && !std::regex_match(m.source, std::regex("[A-Za-z0-9_.-]{1,31}"))) {
    BadField("source", "a 9p mount tag of 1-31 characters of [A-Za-z0-9_.-] is required");
  }
  if (const json* dev = OptObject(p, "device", "")) {
    CheckKeys(*dev, "device", {"pciAddress", "serial", "path"});
    m.devicePci = OptString(*dev, "pciAddress", "device").value_or("");
    m.deviceSerial = OptString(*dev, "serial", "device").value_or("");
    m.devicePath = OptString(*dev, "path", "device").value_or("");
    int given = !m.devicePci.empty() + !m.deviceSerial.empty() + !m.devicePath.empty();
    if (given != 1) BadField("device", "give exactly one of pciAddress, serial or path");
    if (!m.devicePci.empty() && !std::regex_match(m.devicePci, std::regex("[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\\.[0-7]"))) {
      BadField("device.pciAddress", "must be DDDD:BB:DD.F in lower case");
    }
    if (!m.deviceSerial.empty() && !std::regex_match(m.deviceSerial, std::regex("[A-Za-z0-9_.-]{1,20}"))) {
      BadField("device.serial", "must be 1-20 characters of [A-Za-z0-9_.-]");
    }
    if (!m.devicePath.empty() && (!StartsWith(NormalizePath(m.devicePath), "/dev/") || NormalizePath(m.devicePath) != m.devicePath)) {
      BadField("device.path", "must be a normalised path under /dev");
    }
  }
  if (m.type == "ext4" && m.devicePci.empty() && m.deviceSerial.empty() && m.devicePath.empty()) {
    BadField("device", "is required for an ext4 mount");
  }
  std::string target = GetString(p, "target", "");
  m.target = NormalizePath(target);
  if (m.target != target || !IsUnder(m.target, stateDir) || m.target == stateDir ||
      IsUnder(m.target, stateDir + "/containers")) {
    throw Error(Code::kPermissionDenied, "target: \"" + target + "\" must be a normalised path under " + stateDir +
                                             " (and not under " + stateDir + "/containers)");
  }
  m.readOnly = OptBool(p, "readOnly", "", false);
  m.options = OptStrings(p, "options", "", 32);
  static const std::regex kOption("[A-Za-z0-9_]{1,32}(=[A-Za-z0-9_.:/+-]{0,64})?");
  for (size_t i = 0; i < m.options.size(); i++) {
    if (!std::regex_match(m.options[i], kOption)) BadField("options[" + std::to_string(i) + "]", "is not a mount option");
    if (m.options[i] == "bind" || m.options[i] == "rbind" || m.options[i] == "remount") {
      BadField("options[" + std::to_string(i) + "]", "is not allowed here");
    }
    if (m.type == "9p") Check9pOption(m.options[i], "options[" + std::to_string(i) + "]");
  }
  m.timeoutMs = OptInt(p, "timeoutMs", "", 0, 600000).value_or(10000);
  return m;
}

std::string FindBlockDevice(const GuestMount& m, const std::string& sysRoot) {
  if (!m.devicePath.empty()) return PathExists(m.devicePath) ? m.devicePath : "";
  std::string dir = sysRoot + "/block";
  DIR* d = opendir(dir.c_str());
  if (!d) return "";
  std::string found;
  while (struct dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::string name = e->d_name;
    if (!m.devicePci.empty()) {
      char real[PATH_MAX];
      if (realpath((dir + "/" + name).c_str(), real) && std::string(real).find("/" + m.devicePci + "/") != std::string::npos) {
        found = name;
      }
    } else {
      std::string serial;
      try {
        if (ReadFileIfExists(dir + "/" + name + "/serial", &serial, 4096)) {
          while (!serial.empty() && (serial.back() == '\n' || serial.back() == ' ')) serial.pop_back();
          if (serial == m.deviceSerial) found = name;
        }
      } catch (const Error&) {
      }
    }
    if (!found.empty()) break;
  }
  closedir(d);
  return found.empty() ? "" : "/dev/" + found;
}

// A virtio-fs share on a host (--share TAG=DIR): a recursive bind of DIR, with the per-mount
// flags asked for on its top mount and read-only all the way down when asked. The agent's mount
// namespace is a slave of the host's, so what the host mounts inside DIR later shows up here as
// it would through virtiofsd's announced submounts. Filesystem options (o.data) mean nothing to
// a bind: they are left out, and said so.
void BindShare(const GuestMount& m, const MountOptions& o) {
  struct stat st;
  if (stat(m.shareDir.c_str(), &st) < 0) ThrowErrno("share " + m.source + " (" + m.shareDir + ")");
  if (!S_ISDIR(st.st_mode)) throw Error(Code::kFailedPrecondition, "share " + m.source + ": " + m.shareDir + " is not a directory");
  if (!o.data.empty()) Log("share %s: options \"%s\" do not apply to a bind, ignored", m.source.c_str(), o.data.c_str());
  MountOrThrow(m.shareDir, m.target, nullptr, MS_BIND | MS_REC, "");
  try {
    unsigned long extra = o.flags & ~(MS_BIND | MS_REC | MS_REMOUNT | MS_RDONLY);
    if (extra) MountOrThrow("", m.target, nullptr, MS_REMOUNT | MS_BIND | extra, "");
    if (o.flags & MS_RDONLY) MakeReadOnly(m.target, true);
  } catch (const Error&) {
    umount2(m.target.c_str(), MNT_DETACH);
    throw;
  }
}

void DoGuestMount(const GuestMount& m, const std::string& device) {
  MountOptions o = ParseMountOptions(m.type == "9p" ? NinePOptions(m.options) : m.options);
  if (m.readOnly) o.flags |= MS_RDONLY;
  MkdirAll(m.target);
  if (!m.shareDir.empty()) {
    BindShare(m, o);
    return;
  }
  std::string source = m.type == "virtiofs" || m.type == "9p" ? m.source : m.type == "ext4" ? device : m.type;
  try {
    MountOrThrow(source, m.target, m.type.c_str(), o.flags, o.data);
    if (m.readOnly) {
      // A virtio-fs share can hold submounts (announced by the host): read-only too.
      try {
        MakeReadOnly(m.target, true);
      } catch (const Error&) {
        umount2(m.target.c_str(), MNT_DETACH);
        throw;
      }
    }
  } catch (const Error& e) {
    // Say what the two usual 9p failures mean: no 9p in this kernel, no device with that tag.
    if (m.type == "9p" && e.err() == ENODEV) {
      throw Error(Code::kFailedPrecondition, std::string(e.what()) + ": this kernel has no 9p filesystem (modules 9p, 9pnet_virtio)", e.err());
    }
    if (m.type == "9p" && e.err() == ENOENT) {
      throw Error(Code::kNotFound, std::string(e.what()) + ": no virtio-9p device has the mount tag " + m.source, e.err());
    }
    throw;
  }
}

}  // namespace agent
