// Network namespaces: create (exactly as `ip netns add`), open, delete, and the handle class.
#include "addon/netns.h"

#include <fcntl.h>
#include <linux/nsfs.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

namespace vmpod {
namespace {

constexpr const char* kHandleClass = "NetnsHandle";

// JS face of a NetnsState: `fd`, `path`, `inode`, `close()`.
class NetnsHandle : public Napi::ObjectWrap<NetnsHandle> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, kHandleClass,
                       {InstanceAccessor<&NetnsHandle::GetFd>("fd"), InstanceAccessor<&NetnsHandle::GetPath>("path"),
                        InstanceAccessor<&NetnsHandle::GetInode>("inode"), InstanceMethod<&NetnsHandle::Close>("close")});
  }

  static Napi::Value New(Napi::Env env, std::shared_ptr<NetnsState> state) {
    return ClassRef(env, kHandleClass).New({Napi::External<std::shared_ptr<NetnsState>>::New(env, &state)});
  }

  explicit NetnsHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NetnsHandle>(info) {
    if (info.Length() != 1 || !info[0].IsExternal()) {
      throw Napi::TypeError::New(info.Env(), "NetnsHandle is created by netnsCreate() or netnsOpen()");
    }
    state_ = *info[0].As<Napi::External<std::shared_ptr<NetnsState>>>().Data();
    struct stat st {};
    if (fstat(state_->ns.get(), &st) == 0) inode_ = static_cast<double>(st.st_ino);
  }

  std::shared_ptr<NetnsState> state() const { return state_; }

 private:
  Napi::Value GetFd(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), state_ ? state_->ns.get() : -1);
  }
  Napi::Value GetPath(const Napi::CallbackInfo& info) {
    return Napi::String::New(info.Env(), path_.empty() && state_ ? state_->path : path_);
  }
  Napi::Value GetInode(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), inode_); }
  // Drops this handle's share; the fds close once no queued job uses them any more.
  void Close(const Napi::CallbackInfo&) {
    if (state_) path_ = state_->path;
    state_.reset();
  }

  std::shared_ptr<NetnsState> state_;
  std::string path_;
  double inode_ = 0;
};

std::string JoinPath(const std::string& dir, const std::string& name) { return dir + "/" + name; }

// netnsCreate(dir, name): like `ip netns add NAME` with dir=/run/netns.
Napi::Value Create(const Napi::CallbackInfo& info) {
  std::string dir = ArgString(info[0], "dir");
  std::string name = ArgString(info[1], "name");
  return Schedule(info.Env(), [dir, name]() -> ToJs {
    // As iproute2 does: make the directory a shared mount point (bind-mounting it onto itself the
    // first time), so that deleting a namespace in one mount namespace deletes it in all of them.
    if (mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) ThrowSys("mkdir", errno, dir);
    bool made_mount_point = false;
    while (mount("", dir.c_str(), "none", MS_SHARED | MS_REC, nullptr) != 0) {
      if (errno != EINVAL || made_mount_point) ThrowSys("mount", errno, dir, "--make-shared");
      if (mount(dir.c_str(), dir.c_str(), "none", MS_BIND | MS_REC, nullptr) != 0) ThrowSys("mount", errno, dir, "--bind");
      made_mount_point = true;
    }
    std::string path = JoinPath(dir, name);
    {
      vmpod::Fd file(open(path.c_str(), O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0));
      if (!file) ThrowSys("open", errno, path);
    }
    auto state = std::make_shared<NetnsState>();
    state->path = path;
    try {
      NetnsScope scope{NetnsScope::New{}};
      // /proc/thread-self: this thread's namespace, not the main thread's.
      if (mount("/proc/thread-self/ns/net", path.c_str(), "none", MS_BIND, nullptr) != 0) ThrowSys("mount", errno, path);
      state->ns = vmpod::Fd(open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
      if (!state->ns) ThrowSys("open", errno, "/proc/thread-self/ns/net");
      state->rtnl = Rtnl::Open();  // bound to the new namespace for good
    } catch (...) {
      umount2(path.c_str(), MNT_DETACH);
      unlink(path.c_str());
      throw;
    }
    return [state](Napi::Env env) { return NetnsHandle::New(env, state); };
  });
}

// netnsOpen(path): a handle on an existing namespace.
Napi::Value Open(const Napi::CallbackInfo& info) {
  std::string path = ArgString(info[0], "path");
  return Schedule(info.Env(), [path]() -> ToJs {
    auto state = std::make_shared<NetnsState>();
    state->path = path;
    state->ns = OpenNetnsFd(path);
    {
      NetnsScope scope(state->ns.get());
      state->rtnl = Rtnl::Open();
    }
    return [state](Napi::Env env) { return NetnsHandle::New(env, state); };
  });
}

// netnsDelete(dir, name): like `ip netns delete NAME`. The kernel frees the namespace once no
// process, fd or socket holds it any more.
Napi::Value Delete(const Napi::CallbackInfo& info) {
  std::string path = JoinPath(ArgString(info[0], "dir"), ArgString(info[1], "name"));
  return Schedule(info.Env(), [path]() -> ToJs {
    umount2(path.c_str(), MNT_DETACH);  // as iproute2: a stale file is removed all the same
    if (unlink(path.c_str()) != 0) ThrowSys("unlink", errno, path);
    return Undefined();
  });
}

}  // namespace

Fd OpenNetnsFd(const std::string& path) {
  vmpod::Fd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) ThrowSys("open", errno, path);
  if (ioctl(fd.get(), NS_GET_NSTYPE) != CLONE_NEWNET) ThrowSys("open", EINVAL, path, "not a network namespace");
  return fd;
}

NsRef ParseNs(Napi::Env env, const Napi::Value& v) {
  if (v.IsUndefined() || v.IsNull()) return {};
  if (v.IsString()) return {nullptr, v.As<Napi::String>().Utf8Value()};
  if (v.IsObject() && v.As<Napi::Object>().InstanceOf(ClassRef(env, kHandleClass).Value())) {
    auto state = NetnsHandle::Unwrap(v.As<Napi::Object>())->state();
    if (!state) throw ToJsError(env, SysError{"netns", EBADF, "", "the namespace handle is closed"});
    return {state, {}};
  }
  throw Napi::TypeError::New(env, "ns must be null, a path or a NetnsHandle");
}

NsTarget::NsTarget(const NsRef& ref) {
  if (ref.handle) {
    fd_ = ref.handle->ns.get();
    rtnl_ = ref.handle->rtnl.get();
  } else if (!ref.path.empty()) {
    owned_fd_ = OpenNetnsFd(ref.path);
    fd_ = owned_fd_.get();
  } else {
    rtnl_ = &HostRtnl();
    fd_ = HomeNetns();
  }
}

Rtnl& NsTarget::rtnl() {
  if (rtnl_ == nullptr) {
    NetnsScope scope(fd_);
    owned_rtnl_ = Rtnl::Open();
    rtnl_ = owned_rtnl_.get();
  }
  return *rtnl_;
}

void InitNetns(Napi::Env env, Napi::Object exports) {
  Napi::Function handle = NetnsHandle::Define(env);
  ClassRef(env, kHandleClass) = Napi::Persistent(handle);
  exports.Set("NetnsHandle", handle);
  exports.Set("netnsCreate", Napi::Function::New<Create>(env, "netnsCreate"));
  exports.Set("netnsOpen", Napi::Function::New<Open>(env, "netnsOpen"));
  exports.Set("netnsDelete", Napi::Function::New<Delete>(env, "netnsDelete"));
}

}  // namespace vmpod
