// mount(2) and umount2(2), for hugetlbfs and the other mounts of the host side (volumes). They can
// block (a slow filesystem, a busy unmount), so they run on the libuv pool, never on the main thread.
#include <sys/mount.h>

#include <cerrno>
#include <optional>
#include <string>

#include "addon/errno_worker.h"

namespace vmpod {
namespace {

std::optional<std::string> OptionalString(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info[i].IsNull() || info[i].IsUndefined()) return std::nullopt;
  return StringArg(info, i, what);
}

const char* Ptr(const std::optional<std::string>& s) { return s ? s->c_str() : nullptr; }

// mount(source|null, target, fstype|null, flags, data|null): Promise<void>
Napi::Value Mount(const Napi::CallbackInfo& info) {
  auto source = OptionalString(info, 0, "source");
  std::string target = StringArg(info, 1, "target");
  auto fstype = OptionalString(info, 2, "fstype");
  if (!info[3].IsNumber()) throw Napi::TypeError::New(info.Env(), "flags must be a number");
  auto flags = static_cast<unsigned long>(info[3].As<Napi::Number>().Int64Value());
  auto data = OptionalString(info, 4, "data");
  return ErrnoWorker::Run(info.Env(), "mount", target, [=]() {
    return ::mount(Ptr(source), target.c_str(), Ptr(fstype), flags, Ptr(data)) == 0 ? 0 : errno;
  });
}

// umount(target, flags): Promise<void>
Napi::Value Umount(const Napi::CallbackInfo& info) {
  std::string target = StringArg(info, 0, "target");
  if (!info[1].IsNumber()) throw Napi::TypeError::New(info.Env(), "flags must be a number");
  int flags = info[1].As<Napi::Number>().Int32Value();
  return ErrnoWorker::Run(info.Env(), "umount2", target, [=]() {
    return ::umount2(target.c_str(), flags) == 0 ? 0 : errno;
  });
}

}  // namespace

void InitMount(Napi::Env env, Napi::Object exports) {
  exports.Set("mount", Napi::Function::New(env, Mount, "mount"));
  exports.Set("umount", Napi::Function::New(env, Umount, "umount"));
  Napi::Object c = Napi::Object::New(env);
  c.Set("MS_RDONLY", Napi::Number::New(env, MS_RDONLY));
  c.Set("MS_NOSUID", Napi::Number::New(env, MS_NOSUID));
  c.Set("MS_NODEV", Napi::Number::New(env, MS_NODEV));
  c.Set("MS_NOEXEC", Napi::Number::New(env, MS_NOEXEC));
  c.Set("MS_NOATIME", Napi::Number::New(env, MS_NOATIME));
  c.Set("MS_REMOUNT", Napi::Number::New(env, MS_REMOUNT));
  c.Set("MS_BIND", Napi::Number::New(env, MS_BIND));
  c.Set("MS_REC", Napi::Number::New(env, MS_REC));
  c.Set("MS_PRIVATE", Napi::Number::New(env, MS_PRIVATE));
  c.Set("MS_SLAVE", Napi::Number::New(env, MS_SLAVE));
  c.Set("MS_SHARED", Napi::Number::New(env, MS_SHARED));
  c.Set("MS_UNBINDABLE", Napi::Number::New(env, MS_UNBINDABLE));
  c.Set("MNT_FORCE", Napi::Number::New(env, MNT_FORCE));
  c.Set("MNT_DETACH", Napi::Number::New(env, MNT_DETACH));
  c.Set("UMOUNT_NOFOLLOW", Napi::Number::New(env, UMOUNT_NOFOLLOW));
  exports.Set("mountConstants", c);
}

}  // namespace vmpod
