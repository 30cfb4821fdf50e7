// Path operations by file descriptor, for trees that another party may change (a guest writes the
// directories vmpod shares with it). Every lookup below a directory fd goes through openat2(2)
// with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS (and RESOLVE_NO_XDEV where the
// caller asks), mounts are made with the new mount API (open_tree, mount_setattr, move_mount) on
// fds, and unmounts go through the fd of the mount's root after its mount id was checked. So no
// operation is ever redirected by a symlink, a rename or a mount that appears between two steps.
//
// The calls run on the addon's worker thread (they can block on a slow filesystem).
#include <dirent.h>
#include <fcntl.h>
#include <linux/mount.h>
#include <linux/openat2.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "addon/common.h"

namespace vmpod {
namespace {

constexpr uint64_t kBeneath = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;

int OpenAt2(int dirfd, const std::string& path, uint64_t flags, uint64_t resolve, mode_t mode = 0) {
  open_how how{};
  how.flags = flags | O_CLOEXEC;
  how.mode = (flags & O_CREAT) ? mode : 0;
  how.resolve = resolve;
  for (;;) {
    long fd = ::syscall(SYS_openat2, dirfd, path.c_str(), &how, sizeof(how));
    if (fd >= 0) return static_cast<int>(fd);
    if (errno == EINTR || errno == EAGAIN) continue;  // EAGAIN: a concurrent rename; try again
    return -1;
  }
}

// One path component: no slash, not "." or "..", not empty.
bool IsComponent(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\0') == std::string::npos;
}

struct Stat {
  uint64_t dev = 0;
  uint64_t ino = 0;
  uint32_t mode = 0;
  uint64_t mntId = 0;
  bool mountRoot = false;
  uint64_t size = 0;
};

Stat StatxAt(int dirfd, const std::string& name, const std::string& target) {
  struct statx sx{};
  int flags = AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT | (name.empty() ? AT_EMPTY_PATH : 0);
  if (::statx(dirfd, name.c_str(), flags, STATX_BASIC_STATS | STATX_MNT_ID, &sx) != 0) ThrowSys("statx", errno, target);
  Stat s;
  s.dev = (static_cast<uint64_t>(sx.stx_dev_major) << 32) | sx.stx_dev_minor;
  s.ino = sx.stx_ino;
  s.mode = sx.stx_mode;
  s.mntId = sx.stx_mnt_id;
  s.mountRoot = (sx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) && (sx.stx_attributes & STATX_ATTR_MOUNT_ROOT);
  s.size = sx.stx_size;
  return s;
}

ToJs StatToJs(const Stat& s) {
  return [s](Napi::Env env) -> Napi::Value {
    Napi::Object o = Napi::Object::New(env);
    // dev as major:minor in one number: 2^32 * major + minor stays exact below 2^53 (majors < 2^21).
    o.Set("dev", Napi::Number::New(env, static_cast<double>(s.dev)));
    o.Set("ino", Napi::Number::New(env, static_cast<double>(s.ino)));
    o.Set("mode", Napi::Number::New(env, s.mode));
    o.Set("mntId", Napi::Number::New(env, static_cast<double>(s.mntId)));
    o.Set("mountRoot", Napi::Boolean::New(env, s.mountRoot));
    o.Set("size", Napi::Number::New(env, static_cast<double>(s.size)));
    return o;
  };
}

int ArgFd(const Napi::Value& v, const char* what) {
  if (!v.IsNumber()) throw Napi::TypeError::New(v.Env(), std::string(what) + " must be a file descriptor");
  int fd = v.As<Napi::Number>().Int32Value();
  if (fd < 0 && fd != AT_FDCWD) throw Napi::RangeError::New(v.Env(), std::string(what) + " must be a file descriptor");
  return fd;
}

ToJs FdToJs(Fd fd) {
  auto shared = std::make_shared<Fd>(std::move(fd));
  return [shared](Napi::Env env) -> Napi::Value { return Napi::Number::New(env, shared->Release()); };
}

// openAt(dirFd, path, flags, resolve, mode): Promise<number>
Napi::Value OpenAt(const Napi::CallbackInfo& info) {
  int dirfd = ArgFd(info[0], "dirFd");
  std::string path = ArgString(info[1], "path");
  uint32_t flags = ArgU32(info[2], "flags");
  uint32_t resolve = ArgU32(info[3], "resolve");
  uint32_t mode = info[4].IsNumber() ? ArgU32(info[4], "mode") : 0;
  return Schedule(info.Env(), [=]() -> ToJs {
    int fd = OpenAt2(dirfd, path, flags, resolve, mode);
    if (fd < 0) ThrowSys("openat2", errno, path);
    return FdToJs(Fd(fd));
  });
}

// mkdirAt(dirFd, name, mode): Promise<void> — one component, in the directory of dirFd.
Napi::Value MkdirAt(const Napi::CallbackInfo& info) {
  int dirfd = ArgFd(info[0], "dirFd");
  std::string name = ArgString(info[1], "name");
  uint32_t mode = ArgU32(info[2], "mode");
  if (!IsComponent(name)) throw Napi::TypeError::New(info.Env(), "name must be one path component");
  return Schedule(info.Env(), [=]() -> ToJs {
    if (::mkdirat(dirfd, name.c_str(), mode) != 0) ThrowSys("mkdirat", errno, name);
    return Undefined();
  });
}

// createFileAt(dirFd, name, mode): Promise<void> — an empty regular file that did not exist.
Napi::Value CreateFileAt(const Napi::CallbackInfo& info) {
  int dirfd = ArgFd(info[0], "dirFd");
  std::string name = ArgString(info[1], "name");
  uint32_t mode = ArgU32(info[2], "mode");
  if (!IsComponent(name)) throw Napi::TypeError::New(info.Env(), "name must be one path component");
  return Schedule(info.Env(), [=]() -> ToJs {
    int fd = ::openat(dirfd, name.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd < 0) ThrowSys("openat", errno, name);
    ::close(fd);
    return Undefined();
  });
}

// statAt(dirFd, name): Promise<NativeStat> — statx without following a final symlink or an
// automount; name "" stats dirFd itself.
Napi::Value StatAt(const Napi::CallbackInfo& info) {
  int dirfd = ArgFd(info[0], "dirFd");
  std::string name = ArgString(info[1], "name");
  if (!name.empty() && !IsComponent(name)) throw Napi::TypeError::New(info.Env(), "name must be one path component or empty");
  return Schedule(info.Env(), [=]() -> ToJs { return StatToJs(StatxAt(dirfd, name, name)); });
}

// unlinkAt(dirFd, name, dir, dev, ino): Promise<void> — removes the entry only if it is still the
// recorded object (same dev and inode, and a directory or not as told).
Napi::Value UnlinkAt(const Napi::CallbackInfo& info) {
  int dirfd = ArgFd(info[0], "dirFd");
  std::string name = ArgString(info[1], "name");
  bool dir = info[2].ToBoolean().Value();
  double dev = info[3].As<Napi::Number>().DoubleValue();
  double ino = info[4].As<Napi::Number>().DoubleValue();
  if (!IsComponent(name)) throw Napi::TypeError::New(info.Env(), "name must be one path component");
  return Schedule(info.Env(), [=]() -> ToJs {
    Stat s = StatxAt(dirfd, name, name);
    if (static_cast<double>(s.dev) != dev || static_cast<double>(s.ino) != ino) {
      ThrowSys("unlinkat", ESTALE, name, "not the recorded file (replaced since it was made)");
    }
    if (S_ISDIR(s.mode) != dir) ThrowSys("unlinkat", dir ? ENOTDIR : EISDIR, name);
    if (::unlinkat(dirfd, name.c_str(), dir ? AT_REMOVEDIR : 0) != 0) ThrowSys("unlinkat", errno, name);
    return Undefined();
  });
}

// openTree(dirFd, path, recursive): Promise<number> — a detached copy of the mount tree at path
// (open_tree OPEN_TREE_CLONE [AT_RECURSIVE]). path "" clones dirFd itself.
Napi::Value OpenTree(const Napi::CallbackInfo& info) {
  int dirfd = ArgFd(info[0], "dirFd");
  std::string path = ArgString(info[1], "path");
  bool recursive = info[2].ToBoolean().Value();
  return Schedule(info.Env(), [=]() -> ToJs {
    unsigned flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | (recursive ? AT_RECURSIVE : 0) | (path.empty() ? AT_EMPTY_PATH : 0);
    long fd = ::syscall(SYS_open_tree, dirfd, path.c_str(), flags);
    if (fd < 0) ThrowSys("open_tree", errno, path);
    return FdToJs(Fd(static_cast<int>(fd)));
  });
}

// mountSetattr(fd, recursive, set, clear, usernsFd?): Promise<void> — mount_setattr(2) on the
// mount of fd. With MOUNT_ATTR_IDMAP in `set`, `usernsFd` (an fd of /proc/PID/ns/user) is the user
// namespace whose id maps the mount takes (attr.userns_fd): the mount must be a detached one
// (open_tree OPEN_TREE_CLONE, not yet attached), and its filesystem must support idmapping
// (EINVAL otherwise, e.g. overlayfs). One goes with the other: either alone is a TypeError.
Napi::Value MountSetattr(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info[0], "fd");
  bool recursive = info[1].ToBoolean().Value();
  uint32_t set = ArgU32(info[2], "set");
  uint32_t clear = ArgU32(info[3], "clear");
  bool idmap = (set & MOUNT_ATTR_IDMAP) != 0;
  bool hasUserns = info.Length() > 4 && !info[4].IsUndefined();
  if (idmap != hasUserns) {
    throw Napi::TypeError::New(info.Env(), "usernsFd must be given with MOUNT_ATTR_IDMAP in set, and only then");
  }
  int userns = hasUserns ? ArgFd(info[4], "usernsFd") : -1;
  if (hasUserns && userns < 0) throw Napi::RangeError::New(info.Env(), "usernsFd must be a file descriptor");
  if ((clear & MOUNT_ATTR_IDMAP) != 0) throw Napi::TypeError::New(info.Env(), "an idmapping cannot be cleared");
  return Schedule(info.Env(), [=]() -> ToJs {
    mount_attr attr{};
    attr.attr_set = set;
    attr.attr_clr = clear;
    if (idmap) attr.userns_fd = static_cast<uint64_t>(userns);
    if (::syscall(SYS_mount_setattr, fd, "", AT_EMPTY_PATH | (recursive ? AT_RECURSIVE : 0), &attr, sizeof(attr)) != 0) {
      ThrowSys("mount_setattr", errno);
    }
    return Undefined();
  });
}

// moveMount(fromFd, toFd): Promise<void> — attaches the (detached) mount of fromFd on the
// directory of toFd (move_mount with both paths empty: nothing is looked up by name).
Napi::Value MoveMount(const Napi::CallbackInfo& info) {
  int from = ArgFd(info[0], "fromFd");
  int to = ArgFd(info[1], "toFd");
  return Schedule(info.Env(), [=]() -> ToJs {
    if (::syscall(SYS_move_mount, from, "", to, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) != 0) {
      ThrowSys("move_mount", errno);
    }
    return Undefined();
  });
}

// unmountFd(fd, mntId): Promise<void> — detaches the mount whose root fd is, after checking that
// fd is the root of mount `mntId` (umount2 of /proc/self/fd/N, MNT_DETACH). Fails with ESTALE when
// fd is no longer that mount's root.
Napi::Value UnmountFd(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info[0], "fd");
  double mntId = info[1].As<Napi::Number>().DoubleValue();
  return Schedule(info.Env(), [=]() -> ToJs {
    Stat s = StatxAt(fd, "", "");
    if (static_cast<double>(s.mntId) != mntId || !s.mountRoot) {
      ThrowSys("umount2", ESTALE, "mount " + std::to_string(static_cast<uint64_t>(mntId)), "the fd is not that mount's root");
    }
    std::string self = "/proc/self/fd/" + std::to_string(fd);
    if (::umount2(self.c_str(), MNT_DETACH) != 0) ThrowSys("umount2", errno, "mount " + std::to_string(s.mntId));
    return Undefined();
  });
}

// Removes everything below the directory dirfd (which stays), never following a symlink and never
// entering another mount: a subdirectory on another mount is left and reported.
void EmptyDirectory(int dirfd, uint64_t mntId, const std::string& where, std::vector<std::string>& crossings) {
  int dup = ::fcntl(dirfd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) ThrowSys("fcntl", errno, where);
  DIR* d = ::fdopendir(dup);
  if (d == nullptr) {
    int err = errno;
    ::close(dup);
    ThrowSys("fdopendir", err, where);
  }
  std::vector<std::string> names;
  errno = 0;
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(n);
  }
  int err = errno;
  ::closedir(d);
  if (err != 0) ThrowSys("readdir", err, where);
  for (const std::string& n : names) {
    std::string path = where + "/" + n;
    Stat s = StatxAt(dirfd, n, path);
    if (S_ISDIR(s.mode)) {
      if (s.mntId != mntId) {
        crossings.push_back(path);
        continue;
      }
      int sub = OpenAt2(dirfd, n, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, kBeneath | RESOLVE_NO_XDEV);
      if (sub < 0) {
        if (errno == EXDEV) {  // a mount appeared there since the statx
          crossings.push_back(path);
          continue;
        }
        ThrowSys("openat2", errno, path);
      }
      Fd guard(sub);
      EmptyDirectory(sub, mntId, path, crossings);
      if (!crossings.empty()) continue;
      if (::unlinkat(dirfd, n.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT) ThrowSys("unlinkat", errno, path);
    } else if (::unlinkat(dirfd, n.c_str(), 0) != 0 && errno != ENOENT) {
      ThrowSys("unlinkat", errno, path);
    }
  }
}

// removeTreeAt(dirFd, name): Promise<void> — `rm -r` of dirFd/name that never follows a symlink
// and never crosses into another mount (EBUSY naming what is mounted). A missing entry is fine.
Napi::Value RemoveTreeAt(const Napi::CallbackInfo& info) {
  int dirfd = ArgFd(info[0], "dirFd");
  std::string name = ArgString(info[1], "name");
  if (!IsComponent(name)) throw Napi::TypeError::New(info.Env(), "name must be one path component");
  return Schedule(info.Env(), [=]() -> ToJs {
    struct statx sx{};
    if (::statx(dirfd, name.c_str(), AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT, STATX_TYPE, &sx) != 0) {
      if (errno == ENOENT) return Undefined();
      ThrowSys("statx", errno, name);
    }
    if (!S_ISDIR(sx.stx_mode)) {
      if (::unlinkat(dirfd, name.c_str(), 0) != 0 && errno != ENOENT) ThrowSys("unlinkat", errno, name);
      return Undefined();
    }
    Stat parent = StatxAt(dirfd, "", name);
    int sub = OpenAt2(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, kBeneath | RESOLVE_NO_XDEV);
    if (sub < 0) ThrowSys("openat2", errno, name, errno == EXDEV ? "a mount point: not removing it" : "");
    Fd guard(sub);
    std::vector<std::string> crossings;
    EmptyDirectory(sub, parent.mntId, name, crossings);
    if (!crossings.empty()) {
      std::string list;
      for (const auto& c : crossings) list += (list.empty() ? "" : ", ") + c;
      ThrowSys("rmdir", EBUSY, name, "still has mounts inside: " + list);
    }
    if (::unlinkat(dirfd, name.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT) ThrowSys("unlinkat", errno, name);
    return Undefined();
  });
}

// closeFd(fd): void — closes a descriptor this addon returned.
Napi::Value CloseFd(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info[0], "fd");
  if (fd >= 0) ::close(fd);
  return info.Env().Undefined();
}

// pidfdOpen(pid): number — a pidfd (close-on-exec) for the process pid.
Napi::Value PidfdOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t pid = ArgU32(info[0], "pid");
  long fd = ::syscall(SYS_pidfd_open, static_cast<pid_t>(pid), 0);
  if (fd < 0) {
    SysError e{"pidfd_open", errno, "pid " + std::to_string(pid), ""};
    throw ToJsError(env, e);
  }
  ::fcntl(static_cast<int>(fd), F_SETFD, FD_CLOEXEC);
  return Napi::Number::New(env, static_cast<double>(fd));
}

// pidfdSendSignal(pidfd, signal): void
Napi::Value PidfdSendSignal(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info[0], "pidfd");
  uint32_t sig = ArgU32(info[1], "signal");
  if (::syscall(SYS_pidfd_send_signal, fd, static_cast<int>(sig), nullptr, 0) != 0) {
    SysError e{"pidfd_send_signal", errno, "", ""};
    throw ToJsError(env, e);
  }
  return env.Undefined();
}

// pipe(): [readFd, writeFd] — close-on-exec; for a child's stdin and another's stdout.
Napi::Value Pipe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    SysError e{"pipe2", errno, "", ""};
    throw ToJsError(env, e);
  }
  Napi::Array result = Napi::Array::New(env, 2);
  result.Set(0u, Napi::Number::New(env, fds[0]));
  result.Set(1u, Napi::Number::New(env, fds[1]));
  return result;
}

}  // namespace

void InitPathfd(Napi::Env env, Napi::Object exports) {
  exports.Set("openAt", Napi::Function::New(env, OpenAt, "openAt"));
  exports.Set("mkdirAt", Napi::Function::New(env, MkdirAt, "mkdirAt"));
  exports.Set("createFileAt", Napi::Function::New(env, CreateFileAt, "createFileAt"));
  exports.Set("statAt", Napi::Function::New(env, StatAt, "statAt"));
  exports.Set("unlinkAt", Napi::Function::New(env, UnlinkAt, "unlinkAt"));
  exports.Set("openTree", Napi::Function::New(env, OpenTree, "openTree"));
  exports.Set("mountSetattr", Napi::Function::New(env, MountSetattr, "mountSetattr"));
  exports.Set("moveMount", Napi::Function::New(env, MoveMount, "moveMount"));
  exports.Set("unmountFd", Napi::Function::New(env, UnmountFd, "unmountFd"));
  exports.Set("removeTreeAt", Napi::Function::New(env, RemoveTreeAt, "removeTreeAt"));
  exports.Set("closeFd", Napi::Function::New(env, CloseFd, "closeFd"));
  exports.Set("pipe", Napi::Function::New(env, Pipe, "pipe"));
  exports.Set("pidfdOpen", Napi::Function::New(env, PidfdOpen, "pidfdOpen"));
  exports.Set("pidfdSendSignal", Napi::Function::New(env, PidfdSendSignal, "pidfdSendSignal"));
  Napi::Object c = Napi::Object::New(env);
  c.Set("AT_FDCWD", Napi::Number::New(env, AT_FDCWD));
  c.Set("O_RDONLY", Napi::Number::New(env, O_RDONLY));
  c.Set("O_PATH", Napi::Number::New(env, O_PATH));
  c.Set("O_DIRECTORY", Napi::Number::New(env, O_DIRECTORY));
  c.Set("O_NOFOLLOW", Napi::Number::New(env, O_NOFOLLOW));
  c.Set("RESOLVE_BENEATH", Napi::Number::New(env, RESOLVE_BENEATH));
  c.Set("RESOLVE_NO_SYMLINKS", Napi::Number::New(env, RESOLVE_NO_SYMLINKS));
  c.Set("RESOLVE_NO_MAGICLINKS", Napi::Number::New(env, RESOLVE_NO_MAGICLINKS));
  c.Set("RESOLVE_NO_XDEV", Napi::Number::New(env, RESOLVE_NO_XDEV));
  c.Set("MOUNT_ATTR_RDONLY", Napi::Number::New(env, MOUNT_ATTR_RDONLY));
  c.Set("MOUNT_ATTR_NOSUID", Napi::Number::New(env, MOUNT_ATTR_NOSUID));
  c.Set("MOUNT_ATTR_NODEV", Napi::Number::New(env, MOUNT_ATTR_NODEV));
  c.Set("MOUNT_ATTR_NOEXEC", Napi::Number::New(env, MOUNT_ATTR_NOEXEC));
  c.Set("MOUNT_ATTR_IDMAP", Napi::Number::New(env, MOUNT_ATTR_IDMAP));
  exports.Set("pathConstants", c);
}

}  // namespace vmpod
