// Applying an OCI image layer to a directory (src/image/unpack.ts): the *at calls the unpacker
// needs, each resolved inside the root it is given. Every path below the root fd is looked up with
// openat2(2) RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS, so `..` and absolute symlinks met on the way
// resolve as if the root were `/` (what umoci and containerd do when they unpack), and the final
// component is always operated on with an *at call that does not follow a symlink (O_NOFOLLOW,
// AT_SYMLINK_NOFOLLOW, or an O_PATH fd of the object itself).
//
// One call does all of one entry (parent lookup, replacement of what is there, creation, owner,
// mode, xattrs, times), so a layer costs one hop to the worker thread per entry; the worker runs
// jobs in submission order, so the unpacker queues entries without waiting for each.
//
// xattrs on symlinks: set through /proc/self/fd/N of an O_PATH fd of the link (there is no
// lsetxattr by fd). Linux allows only trusted.* and security.* there (as root); user.* on a
// symlink fails with EPERM, which the unpacker reports.
#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cerrno>
#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "addon/common.h"

namespace vmpod {
namespace {

constexpr uint64_t kInRoot = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;

enum EntryType : uint32_t { kFile = 0, kDir = 1, kSymlink = 2, kHardlink = 3, kChar = 4, kBlock = 5, kFifo = 6 };

int OpenAt2(int dirfd, const std::string& path, uint64_t flags, uint64_t resolve) {
  open_how how{};
  how.flags = flags | O_CLOEXEC;
  how.resolve = resolve;
  for (;;) {
    long fd = ::syscall(SYS_openat2, dirfd, path.empty() ? "." : path.c_str(), &how, sizeof(how));
    if (fd >= 0) return static_cast<int>(fd);
    if (errno == EINTR || errno == EAGAIN) continue;
    return -1;
  }
}

std::string Join(const std::string& parent, const std::string& name) {
  return parent.empty() ? name : parent + "/" + name;
}

std::vector<std::string> Split(const std::string& path) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (start <= path.size()) {
    size_t slash = path.find('/', start);
    if (slash == std::string::npos) slash = path.size();
    std::string comp = path.substr(start, slash - start);
    if (!comp.empty() && comp != ".") parts.push_back(comp);
    start = slash + 1;
  }
  return parts;
}

// The directory `path` (normalised, relative to the root, "" for the root itself), resolved inside
// the root. When it does not exist yet, it is made (0755, owned by the caller) as umoci's unpack
// does: the path is walked one component at a time with openat O_NOFOLLOW from the directory
// reached so far; a symlink met on the way is read and its target walked instead (an absolute
// target from the root, `..` never above the root, at most 40 of them), and a missing component
// is made. So a layer's `d -> /elsewhere` then `d/file` makes /elsewhere inside the root.
Fd OpenDir(int root, const std::string& path, bool create) {
  int fd = OpenAt2(root, path, O_PATH | O_DIRECTORY, kInRoot);
  if (fd >= 0) return Fd(fd);
  if (errno != ENOENT || !create) ThrowSys("openat2", errno, path);
  std::vector<std::string> todo = Split(path);
  std::reverse(todo.begin(), todo.end());  // a stack: the next component at the back
  std::vector<std::string> done;
  Fd cur(OpenAt2(root, "", O_PATH | O_DIRECTORY, kInRoot));
  if (!cur) ThrowSys("openat2", errno, ".");
  int links = 0;
  auto reopen = [&]() {
    std::string at;
    for (const std::string& c : done) at = Join(at, c);
    cur = Fd(OpenAt2(root, at, O_PATH | O_DIRECTORY, kInRoot));
    if (!cur) ThrowSys("openat2", errno, at);
  };
  while (!todo.empty()) {
    std::string comp = todo.back();
    todo.pop_back();
    if (comp == "..") {
      if (!done.empty()) done.pop_back();
      reopen();
      continue;
    }
    int next = ::openat(cur.get(), comp.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (next >= 0) {
      done.push_back(comp);
      cur = Fd(next);
      continue;
    }
    int err = errno;
    if (err == ENOENT) {
      if (::mkdirat(cur.get(), comp.c_str(), 0755) != 0 && errno != EEXIST) ThrowSys("mkdirat", errno, path);
      todo.push_back(comp);  // open what is there now
      continue;
    }
    struct stat st{};
    if (::fstatat(cur.get(), comp.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) ThrowSys("fstatat", errno, path);
    if (!S_ISLNK(st.st_mode)) ThrowSys("openat", ENOTDIR, path, comp + " is not a directory");
    if (++links > 40) ThrowSys("openat", ELOOP, path);
    std::string target(static_cast<size_t>(PATH_MAX), '\0');
    ssize_t len = ::readlinkat(cur.get(), comp.c_str(), target.data(), target.size());
    if (len < 0) ThrowSys("readlinkat", errno, path);
    target.resize(static_cast<size_t>(len));
    if (!target.empty() && target[0] == '/') {
      done.clear();
      reopen();
    }
    std::vector<std::string> parts = Split(target);
    for (auto it = parts.rbegin(); it != parts.rend(); ++it) todo.push_back(*it);
  }
  return cur;
}

std::vector<std::string> ListDir(int dirfd, const std::string& where) {
  int dup = ::openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dup < 0) ThrowSys("openat", errno, where);
  DIR* d = ::fdopendir(dup);
  if (d == nullptr) {
    int err = errno;
    ::close(dup);
    ThrowSys("fdopendir", err, where);
  }
  std::vector<std::string> names;
  errno = 0;
  while (dirent* e = ::readdir(d)) {
    if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) names.emplace_back(e->d_name);
  }
  int err = errno;
  ::closedir(d);
  if (err != 0) ThrowSys("readdir", err, where);
  return names;
}

// rm -r of dirfd/name, never following a symlink (a directory is opened O_NOFOLLOW).
void RemoveTree(int dirfd, const std::string& name, const std::string& where) {
  struct stat st{};
  if (::fstatat(dirfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) return;
    ThrowSys("fstatat", errno, where);
  }
  if (S_ISDIR(st.st_mode)) {
    Fd sub(::openat(dirfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!sub) ThrowSys("openat", errno, where);
    for (const std::string& child : ListDir(sub.get(), where)) RemoveTree(sub.get(), child, where + "/" + child);
    if (::unlinkat(dirfd, name.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT) ThrowSys("unlinkat", errno, where);
  } else if (::unlinkat(dirfd, name.c_str(), 0) != 0 && errno != ENOENT) {
    ThrowSys("unlinkat", errno, where);
  }
}

// Removes what is below dirfd except the paths in `keep` (relative to dirfd) and the directories
// on the way to them; inside a kept directory the same rule applies again.
void Prune(int dirfd, const std::string& prefix, const std::set<std::string>& keep, const std::set<std::string>& ancestors,
           const std::string& where) {
  for (const std::string& child : ListDir(dirfd, where)) {
    std::string rel = Join(prefix, child);
    std::string path = where.empty() ? child : where + "/" + child;
    if (keep.count(rel) == 0 && ancestors.count(rel) == 0) {
      RemoveTree(dirfd, child, path);
      continue;
    }
    struct stat st{};
    if (::fstatat(dirfd, child.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) ThrowSys("fstatat", errno, path);
    if (!S_ISDIR(st.st_mode)) continue;
    Fd sub(::openat(dirfd, child.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!sub) ThrowSys("openat", errno, path);
    Prune(sub.get(), rel, keep, ancestors, path);
  }
}

struct Entry {
  std::string parent;  // normalised, "" for the root
  std::string name;    // one component; "" for the root itself
  uint32_t type = kFile;
  uint32_t mode = 0;
  uint32_t uid = 0;
  uint32_t gid = 0;
  bool chown = true;
  timespec times[2]{};  // atime, mtime
  std::string link;     // symlink target (verbatim) or hardlink target (normalised, in the root)
  uint32_t major = 0;
  uint32_t minor = 0;
  std::vector<std::pair<std::string, std::string>> xattrs;
  std::string data;
  bool open = false;  // a regular file: hand its fd back for the caller to write
  bool dirTimes = false;
};

std::string Where(const Entry& e) { return Join(e.parent, e.name); }

void WriteAll(int fd, const std::string& data, const std::string& where) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      ThrowSys("write", errno, where);
    }
    done += static_cast<size_t>(n);
  }
}

// Owner, then mode (chown clears setuid/setgid), then xattrs (chown clears security.capability
// too), then times, on an open fd of the object.
void SetAttrsFd(int fd, const Entry& e, bool times) {
  std::string where = Where(e);
  if (e.chown && ::fchown(fd, e.uid, e.gid) != 0) ThrowSys("fchown", errno, where);
  if (::fchmod(fd, e.mode & 07777) != 0) ThrowSys("fchmod", errno, where);
  for (const auto& [name, value] : e.xattrs) {
    if (::fsetxattr(fd, name.c_str(), value.data(), value.size(), 0) != 0) ThrowSys("fsetxattr", errno, where, name);
  }
  if (times && ::futimens(fd, e.times) != 0) ThrowSys("futimens", errno, where);
}

// The same for an object that cannot be opened for I/O (a symlink, a device, a fifo): owner by
// AT_EMPTY_PATH on an O_PATH fd of the object itself, mode and xattrs through /proc/self/fd/N of
// that fd (a magic link to the object, never a lookup by name), times by utimensat NOFOLLOW.
void SetAttrsPath(int parent, const Entry& e, bool chmod) {
  std::string where = Where(e);
  Fd obj(::openat(parent, e.name.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
  if (!obj) ThrowSys("openat", errno, where);
  if (e.chown && ::fchownat(obj.get(), "", e.uid, e.gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0) ThrowSys("fchownat", errno, where);
  std::string self = "/proc/self/fd/" + std::to_string(obj.get());
  if (chmod && ::fchmodat(AT_FDCWD, self.c_str(), e.mode & 07777, 0) != 0) ThrowSys("chmod", errno, where);
  for (const auto& [name, value] : e.xattrs) {
    if (::setxattr(self.c_str(), name.c_str(), value.data(), value.size(), 0) != 0) ThrowSys("setxattr", errno, where, name);
  }
  if (::utimensat(parent, e.name.c_str(), e.times, AT_SYMLINK_NOFOLLOW) != 0) ThrowSys("utimensat", errno, where);
}

// What is at parent/name now is replaced: a directory goes with everything in it.
void RemoveExisting(int parent, const Entry& e, const struct stat& st) {
  if (S_ISDIR(st.st_mode)) {
    RemoveTree(parent, e.name, Where(e));
  } else if (::unlinkat(parent, e.name.c_str(), 0) != 0) {
    ThrowSys("unlinkat", errno, Where(e));
  }
}

// Applies one entry; returns an fd for an `open` regular file, else -1.
int Apply(int root, const Entry& e) {
  std::string where = Where(e);
  if (e.name.empty()) {  // the root itself: only a directory, only its attributes
    if (e.type != kDir) ThrowSys("layer-entry", EINVAL, ".", "the root can only be a directory");
    Fd d(OpenAt2(root, "", O_RDONLY | O_DIRECTORY, kInRoot));
    if (!d) ThrowSys("openat2", errno, ".");
    SetAttrsFd(d.get(), e, false);
    return -1;
  }
  Fd parent = OpenDir(root, e.parent, true);
  struct stat st{};
  bool exists = ::fstatat(parent.get(), e.name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0;
  if (!exists && errno != ENOENT) ThrowSys("fstatat", errno, where);
  switch (e.type) {
    case kDir: {
      if (exists && !S_ISDIR(st.st_mode)) RemoveExisting(parent.get(), e, st);
      if ((!exists || !S_ISDIR(st.st_mode)) && ::mkdirat(parent.get(), e.name.c_str(), 0700) != 0) ThrowSys("mkdirat", errno, where);
      Fd d(::openat(parent.get(), e.name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!d) ThrowSys("openat", errno, where);
      SetAttrsFd(d.get(), e, !e.dirTimes);
      return -1;
    }
    case kFile: {
      if (exists) RemoveExisting(parent.get(), e, st);
      Fd f(::openat(parent.get(), e.name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
      if (!f) ThrowSys("openat", errno, where);
      if (e.open) return f.Release();
      WriteAll(f.get(), e.data, where);
      SetAttrsFd(f.get(), e, true);
      return -1;
    }
    case kHardlink: {
      Fd target(OpenAt2(root, e.link, O_PATH | O_NOFOLLOW, kInRoot));
      if (!target) ThrowSys("openat2", errno, e.link, "the hardlink's target");
      struct stat ts{};
      if (::fstat(target.get(), &ts) != 0) ThrowSys("fstat", errno, e.link);
      if (!S_ISREG(ts.st_mode)) {
        ThrowSys("hardlink", EPERM, e.link, S_ISDIR(ts.st_mode) ? "a hardlink to a directory" : S_ISLNK(ts.st_mode) ? "a hardlink to a symlink" : "a hardlink to a special file");
      }
      if (exists && st.st_dev == ts.st_dev && st.st_ino == ts.st_ino) return -1;  // already that file
      if (exists) RemoveExisting(parent.get(), e, st);
      // The very inode checked above, by fd (AT_EMPTY_PATH: needs CAP_DAC_READ_SEARCH).
      if (::linkat(target.get(), "", parent.get(), e.name.c_str(), AT_EMPTY_PATH) != 0) ThrowSys("linkat", errno, where);
      return -1;
    }
    case kSymlink: {
      if (exists) RemoveExisting(parent.get(), e, st);
      if (::symlinkat(e.link.c_str(), parent.get(), e.name.c_str()) != 0) ThrowSys("symlinkat", errno, where);
      SetAttrsPath(parent.get(), e, false);
      return -1;
    }
    case kChar:
    case kBlock:
    case kFifo: {
      if (exists) RemoveExisting(parent.get(), e, st);
      mode_t kind = e.type == kChar ? S_IFCHR : e.type == kBlock ? S_IFBLK : S_IFIFO;
      dev_t dev = e.type == kFifo ? 0 : makedev(e.major, e.minor);
      if (::mknodat(parent.get(), e.name.c_str(), kind | 0600, dev) != 0) ThrowSys("mknodat", errno, where);
      SetAttrsPath(parent.get(), e, true);
      return -1;
    }
    default:
      ThrowSys("layer-entry", EINVAL, where, "unknown entry type");
  }
}

int ArgFd(const Napi::Value& v, const char* what) {
  if (!v.IsNumber()) throw Napi::TypeError::New(v.Env(), std::string(what) + " must be a file descriptor");
  int fd = v.As<Napi::Number>().Int32Value();
  if (fd < 0) throw Napi::RangeError::New(v.Env(), std::string(what) + " must be a file descriptor");
  return fd;
}

timespec ArgTime(const Napi::Object& o, const char* sec, const char* nsec) {
  timespec t{};
  Napi::Value s = o.Get(sec);
  Napi::Value ns = o.Get(nsec);
  if (!s.IsNumber() || !ns.IsNumber()) {
    t.tv_nsec = UTIME_OMIT;
    return t;
  }
  t.tv_sec = static_cast<time_t>(s.As<Napi::Number>().Int64Value());
  t.tv_nsec = static_cast<long>(ns.As<Napi::Number>().Int64Value());
  if (t.tv_nsec < 0 || t.tv_nsec > 999999999) throw Napi::RangeError::New(o.Env(), std::string(nsec) + " must be 0..999999999");
  return t;
}

std::string BufferBytes(const Napi::Value& v, const char* what) {
  if (!v.IsBuffer()) throw Napi::TypeError::New(v.Env(), std::string(what) + " must be a Buffer");
  auto b = v.As<Napi::Buffer<char>>();
  return std::string(b.Data(), b.Length());
}

Entry ArgEntry(const Napi::Value& v) {
  Napi::Object o = ArgObject(v, "entry");
  Entry e;
  e.parent = ArgString(o.Get("parent"), "parent");
  e.name = ArgString(o.Get("name"), "name");
  e.type = ArgU32(o.Get("type"), "type");
  e.mode = ArgU32(o.Get("mode"), "mode");
  e.uid = ArgU32(o.Get("uid"), "uid");
  e.gid = ArgU32(o.Get("gid"), "gid");
  e.chown = o.Get("chown").ToBoolean().Value();
  e.open = o.Get("open").ToBoolean().Value();
  e.dirTimes = o.Get("deferTimes").ToBoolean().Value();
  e.times[0] = ArgTime(o, "atimeSec", "atimeNsec");
  e.times[1] = ArgTime(o, "mtimeSec", "mtimeNsec");
  if (o.Has("link") && !o.Get("link").IsUndefined()) e.link = ArgString(o.Get("link"), "link");
  if (o.Has("major") && !o.Get("major").IsUndefined()) e.major = ArgU32(o.Get("major"), "major");
  if (o.Has("minor") && !o.Get("minor").IsUndefined()) e.minor = ArgU32(o.Get("minor"), "minor");
  if (e.name.find('/') != std::string::npos || e.name == "." || e.name == ".." || e.name.find('\0') != std::string::npos) {
    throw Napi::TypeError::New(v.Env(), "name must be one path component");
  }
  Napi::Value x = o.Get("xattrs");
  if (x.IsArray()) {
    Napi::Array list = x.As<Napi::Array>();
    for (uint32_t i = 0; i < list.Length(); i++) {
      Napi::Array pair = list.Get(i).As<Napi::Array>();
      e.xattrs.emplace_back(ArgString(pair.Get(0u), "xattr name"), BufferBytes(pair.Get(1u), "xattr value"));
    }
  }
  Napi::Value data = o.Get("data");
  if (data.IsBuffer()) {
    e.data = BufferBytes(data, "data");
  } else if (data.IsArray()) {
    Napi::Array chunks = data.As<Napi::Array>();
    for (uint32_t i = 0; i < chunks.Length(); i++) {
      if (!chunks.Get(i).IsBuffer()) throw Napi::TypeError::New(v.Env(), "data must be Buffers");
      auto b = chunks.Get(i).As<Napi::Buffer<char>>();
      e.data.append(b.Data(), b.Length());
    }
  }
  return e;
}

// layerEntry(rootFd, entry): Promise<number | undefined> — see Apply.
Napi::Value LayerEntry(const Napi::CallbackInfo& info) {
  int root = ArgFd(info[0], "rootFd");
  auto entry = std::make_shared<Entry>(ArgEntry(info[1]));
  return Schedule(info.Env(), [root, entry]() -> ToJs {
    int fd = Apply(root, *entry);
    if (fd < 0) return Undefined();
    auto owned = std::make_shared<Fd>(fd);
    return [owned](Napi::Env env) -> Napi::Value { return Napi::Number::New(env, owned->Release()); };
  });
}

// layerFinishFile(fd, entry): Promise<void> — owner, mode, xattrs and times of a file written
// through the fd layerEntry handed back; closes the fd (also on failure).
Napi::Value LayerFinishFile(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info[0], "fd");
  auto entry = std::make_shared<Entry>(ArgEntry(info[1]));
  return Schedule(info.Env(), [fd, entry]() -> ToJs {
    Fd owned(fd);
    SetAttrsFd(owned.get(), *entry, true);
    return Undefined();
  });
}

// layerRemove(rootFd, parent, name): Promise<void> — rm -r of parent/name inside the root (a
// whiteout); nothing there is fine, and so is a parent that does not exist.
Napi::Value LayerRemove(const Napi::CallbackInfo& info) {
  int root = ArgFd(info[0], "rootFd");
  std::string parent = ArgString(info[1], "parent");
  std::string name = ArgString(info[2], "name");
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos) {
    throw Napi::TypeError::New(info.Env(), "name must be one path component");
  }
  return Schedule(info.Env(), [root, parent, name]() -> ToJs {
    int fd = OpenAt2(root, parent, O_PATH | O_DIRECTORY, kInRoot);
    if (fd < 0) {
      if (errno == ENOENT || errno == ENOTDIR) return Undefined();
      ThrowSys("openat2", errno, parent);
    }
    Fd dir(fd);
    RemoveTree(dir.get(), name, Join(parent, name));
    return Undefined();
  });
}

// layerPrune(rootFd, dir, keep): Promise<void> — empties `dir` (inside the root) but for the
// paths in keep (relative to dir) and the directories leading to them (an opaque whiteout in
// flatten mode: what the lower layers put there goes, what this layer wrote stays).
Napi::Value LayerPrune(const Napi::CallbackInfo& info) {
  int root = ArgFd(info[0], "rootFd");
  std::string dir = ArgString(info[1], "dir");
  if (!info[2].IsArray()) throw Napi::TypeError::New(info.Env(), "keep must be an array");
  Napi::Array list = info[2].As<Napi::Array>();
  std::set<std::string> keep;
  std::set<std::string> ancestors;
  for (uint32_t i = 0; i < list.Length(); i++) {
    std::string p = ArgString(list.Get(i), "keep");
    keep.insert(p);
    for (size_t slash = p.find('/'); slash != std::string::npos; slash = p.find('/', slash + 1)) ancestors.insert(p.substr(0, slash));
  }
  return Schedule(info.Env(), [root, dir, keep = std::move(keep), ancestors = std::move(ancestors)]() -> ToJs {
    int fd = OpenAt2(root, dir, O_RDONLY | O_DIRECTORY, kInRoot);
    if (fd < 0) {
      if (errno == ENOENT) return Undefined();
      ThrowSys("openat2", errno, dir);
    }
    Fd d(fd);
    Prune(d.get(), "", keep, ancestors, dir);
    return Undefined();
  });
}

// layerSetXattr(rootFd, path, name, value): Promise<void> — on the directory `path` (inside the
// root; made if missing, like an entry's parents). For overlay mode's trusted.overlay.opaque.
Napi::Value LayerSetXattr(const Napi::CallbackInfo& info) {
  int root = ArgFd(info[0], "rootFd");
  std::string path = ArgString(info[1], "path");
  std::string name = ArgString(info[2], "name");
  std::string value = BufferBytes(info[3], "value");
  return Schedule(info.Env(), [root, path, name, value]() -> ToJs {
    Fd dir = OpenDir(root, path, true);
    Fd d(::openat(dir.get(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!d) ThrowSys("openat", errno, path);
    if (::fsetxattr(d.get(), name.c_str(), value.data(), value.size(), 0) != 0) ThrowSys("fsetxattr", errno, path, name);
    return Undefined();
  });
}

// layerDirTimes(rootFd, paths, times): Promise<void> — atime/mtime of directories once their
// contents are written: times holds 4 numbers per path (atime s, ns, mtime s, ns). A path that is
// no longer a directory (a later entry replaced it) is skipped.
Napi::Value LayerDirTimes(const Napi::CallbackInfo& info) {
  int root = ArgFd(info[0], "rootFd");
  if (!info[1].IsArray() || !info[2].IsArray()) throw Napi::TypeError::New(info.Env(), "paths and times must be arrays");
  Napi::Array paths = info[1].As<Napi::Array>();
  Napi::Array times = info[2].As<Napi::Array>();
  if (times.Length() != paths.Length() * 4) throw Napi::RangeError::New(info.Env(), "times must hold 4 numbers per path");
  std::vector<std::pair<std::string, std::array<timespec, 2>>> list;
  for (uint32_t i = 0; i < paths.Length(); i++) {
    std::array<timespec, 2> t{};
    for (int k = 0; k < 2; k++) {
      t[k].tv_sec = static_cast<time_t>(times.Get(i * 4 + k * 2).As<Napi::Number>().Int64Value());
      t[k].tv_nsec = static_cast<long>(times.Get(i * 4 + k * 2 + 1).As<Napi::Number>().Int64Value());
      if (t[k].tv_nsec < 0 || t[k].tv_nsec > 999999999) throw Napi::RangeError::New(info.Env(), "nanoseconds must be 0..999999999");
    }
    list.emplace_back(ArgString(paths.Get(i), "path"), t);
  }
  return Schedule(info.Env(), [root, list = std::move(list)]() -> ToJs {
    for (const auto& [path, t] : list) {
      int fd = OpenAt2(root, path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, kInRoot);
      if (fd < 0) {
        if (errno == ENOENT || errno == ENOTDIR || errno == ELOOP) continue;
        ThrowSys("openat2", errno, path);
      }
      Fd d(fd);
      if (::futimens(d.get(), t.data()) != 0) ThrowSys("futimens", errno, path);
    }
    return Undefined();
  });
}

}  // namespace

// Called after InitPathfd: adds the constants the unpacker and readFileInRoot need to
// pathConstants (the object pathfd.cc made).
void InitLayer(Napi::Env env, Napi::Object exports) {
  Napi::Object c = exports.Get("pathConstants").As<Napi::Object>();
  c.Set("RESOLVE_IN_ROOT", Napi::Number::New(env, RESOLVE_IN_ROOT));
  c.Set("O_NONBLOCK", Napi::Number::New(env, O_NONBLOCK));
  exports.Set("layerEntry", Napi::Function::New(env, LayerEntry, "layerEntry"));
  exports.Set("layerFinishFile", Napi::Function::New(env, LayerFinishFile, "layerFinishFile"));
  exports.Set("layerRemove", Napi::Function::New(env, LayerRemove, "layerRemove"));
  exports.Set("layerPrune", Napi::Function::New(env, LayerPrune, "layerPrune"));
  exports.Set("layerSetXattr", Napi::Function::New(env, LayerSetXattr, "layerSetXattr"));
  exports.Set("layerDirTimes", Napi::Function::New(env, LayerDirTimes, "layerDirTimes"));
}

}  // namespace vmpod
