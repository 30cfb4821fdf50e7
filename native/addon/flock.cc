// flock(2) for the state directory's lock files. Only the non-blocking form is exposed: it never
// waits, so it runs on the main thread; TypeScript retries with a backoff and an AbortSignal.
#include <sys/file.h>

#include <cerrno>

#include "addon/errno_worker.h"

namespace vmpod {
namespace {

// tryLock(fd, exclusive): boolean — true when taken, false when another holder has it.
Napi::Value TryLock(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber() || !info[1].IsBoolean()) throw Napi::TypeError::New(env, "tryLock(fd, exclusive)");
  int fd = info[0].As<Napi::Number>().Int32Value();
  int op = (info[1].As<Napi::Boolean>().Value() ? LOCK_EX : LOCK_SH) | LOCK_NB;
  for (;;) {
    if (::flock(fd, op) == 0) return Napi::Boolean::New(env, true);
    if (errno == EINTR) continue;
    if (errno == EWOULDBLOCK) return Napi::Boolean::New(env, false);
    throw ErrnoError(env, "flock", errno, "");
  }
}

// unlock(fd): void
Napi::Value Unlock(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber()) throw Napi::TypeError::New(env, "unlock(fd)");
  if (::flock(info[0].As<Napi::Number>().Int32Value(), LOCK_UN) != 0) throw ErrnoError(env, "flock", errno, "");
  return env.Undefined();
}

}  // namespace

void InitFlock(Napi::Env env, Napi::Object exports) {
  exports.Set("tryLock", Napi::Function::New(env, TryLock, "tryLock"));
  exports.Set("unlock", Napi::Function::New(env, Unlock, "unlock"));
}

}  // namespace vmpod
