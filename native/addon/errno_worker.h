// Runs one blocking system call on the libuv pool and settles a Promise: resolved with undefined,
// or rejected with an Error carrying Node-style `code` (errno name), `errno` and `syscall`.
// Used by mount.cc and sriov.cc.
#pragma once
#include <napi.h>

#include <cstring>
#include <functional>
#include <string>
#include <utility>

namespace vmpod {

// An Error like Node's system errors: message "SYSCALL DETAIL: strerror", code "EBUSY", errno 16.
inline Napi::Error ErrnoError(Napi::Env env, const std::string& syscall, int err, const std::string& detail) {
  const char* name = strerrorname_np(err);
  std::string message = syscall + (detail.empty() ? "" : " " + detail) + ": " + std::strerror(err);
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, name != nullptr ? name : "EUNKNOWN"));
  error.Set("errno", Napi::Number::New(env, err));
  error.Set("syscall", Napi::String::New(env, syscall));
  return error;
}

// `work` runs off the main thread and returns 0 or an errno value.
class ErrnoWorker : public Napi::AsyncWorker {
 public:
  ErrnoWorker(Napi::Env env, std::string syscall, std::string detail, std::function<int()> work)
      : Napi::AsyncWorker(env),
        deferred_(Napi::Promise::Deferred::New(env)),
        syscall_(std::move(syscall)),
        detail_(std::move(detail)),
        work_(std::move(work)) {}

  // Queues the work and returns its promise (the worker deletes itself when done).
  static Napi::Promise Run(Napi::Env env, std::string syscall, std::string detail, std::function<int()> work) {
    auto* worker = new ErrnoWorker(env, std::move(syscall), std::move(detail), std::move(work));
    Napi::Promise promise = worker->deferred_.Promise();
    worker->Queue();
    return promise;
  }

 protected:
  void Execute() override { err_ = work_(); }
  void OnOK() override {
    if (err_ == 0) {
      deferred_.Resolve(Env().Undefined());
    } else {
      deferred_.Reject(ErrnoError(Env(), syscall_, err_, detail_).Value());
    }
  }
  void OnError(const Napi::Error& error) override { deferred_.Reject(error.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::string syscall_;
  std::string detail_;
  std::function<int()> work_;
  int err_ = 0;
};

// Argument helpers: a string, or nullopt for null/undefined.
inline std::string StringArg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (!info[i].IsString()) throw Napi::TypeError::New(info.Env(), std::string(what) + " must be a string");
  return info[i].As<Napi::String>().Utf8Value();
}

}  // namespace vmpod
