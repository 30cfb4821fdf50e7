// Shared helpers of the addon: errno-carrying errors, owned fds, argument readers, and async work
// on a dedicated thread off Node's main thread.
#pragma once
#include <napi.h>

#include <cerrno>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>

namespace vmpod {

// Bumped whenever the native surface declared in src/native.ts changes.
constexpr int kAbiVersion = 4;

// A failed system call or netlink request. Thrown on the worker thread; it reaches JS as an Error
// with `code` (errno name), `errno`, `syscall`, and, where known, `target` (the object the call was
// about: an interface name, a path) and `detail` (e.g. the kernel's extended-ack message).
struct SysError {
  std::string syscall;
  int err = 0;
  std::string target;
  std::string detail;
};

[[noreturn]] void ThrowSys(std::string syscall, int err = errno, std::string target = {},
                           std::string detail = {});

// The JS Error for a SysError (main thread only).
Napi::Error ToJsError(Napi::Env env, const SysError& e);

// An owned file descriptor: closed on destruction unless released.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(o.Release()) {}
  Fd& operator=(Fd&& o) noexcept;
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd();
  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  int Release() { return std::exchange(fd_, -1); }

 private:
  int fd_ = -1;
};

// A callable that may own move-only state (fds), unlike std::function.
template <class Sig>
class UniqueFunction;
template <class R, class... A>
class UniqueFunction<R(A...)> {
 public:
  UniqueFunction() = default;
  template <class F>
  UniqueFunction(F f) : impl_(std::make_unique<Impl<F>>(std::move(f))) {}  // NOLINT: implicit
  R operator()(A... a) { return impl_->Call(std::forward<A>(a)...); }
  explicit operator bool() const { return impl_ != nullptr; }

 private:
  struct Base {
    virtual ~Base() = default;
    virtual R Call(A... a) = 0;
  };
  template <class F>
  struct Impl : Base {
    explicit Impl(F&& fn) : f(std::move(fn)) {}
    R Call(A... a) override { return f(std::forward<A>(a)...); }
    F f;
  };
  std::unique_ptr<Base> impl_;
};

// Converts a job's result to JS on the main thread. It owns what it converts (e.g. fds, closed if
// the conversion never happens because the environment is shutting down).
using ToJs = UniqueFunction<Napi::Value(Napi::Env)>;
// A job for the worker thread: does the blocking work and returns its result converter.
using Work = UniqueFunction<ToJs()>;

// Queues `work` on this environment's worker thread and returns a promise settled with its result,
// or rejected with the SysError it threw. Jobs run one at a time, in submission order: callers may
// queue dependent steps without awaiting each one.
Napi::Promise Schedule(Napi::Env env, Work work);

// Resolves a job's promise with `undefined`.
inline ToJs Undefined() {
  return [](Napi::Env env) -> Napi::Value { return env.Undefined(); };
}

// Enters the network namespace `nsfd` on the calling worker thread for the lifetime of the scope,
// then always returns to the namespace the thread was in before. A thread that cannot return is
// retired and replaced: no later job ever runs in a namespace it did not ask for.
class NetnsScope {
 public:
  explicit NetnsScope(int nsfd);
  // Enters a brand-new network namespace (unshare(CLONE_NEWNET)).
  struct New {};
  explicit NetnsScope(New);
  NetnsScope(const NetnsScope&) = delete;
  NetnsScope& operator=(const NetnsScope&) = delete;
  ~NetnsScope();

 private:
  int previous_;
};

// The fd of the network namespace the worker thread started in (the process's namespace).
int HomeNetns();

// --- Argument readers for the main thread. Inputs were validated in TypeScript; these only guard
// --- the native boundary against type confusion and throw TypeError.
std::string ArgString(const Napi::Value& v, const char* what);
Napi::Object ArgObject(const Napi::Value& v, const char* what);
uint32_t ArgU32(const Napi::Value& v, const char* what);
std::optional<std::string> OptString(const Napi::Object& o, const char* key);
std::optional<uint32_t> OptU32(const Napi::Object& o, const char* key);
std::optional<bool> OptBool(const Napi::Object& o, const char* key);
bool Has(const Napi::Object& o, const char* key);

// Per-environment state of the addon, created on first use and freed with the environment. It is
// the addon's instance data: add a field to it (worker.cc) rather than calling SetInstanceData.
struct AddonState;
AddonState& State(Napi::Env env);
// Constructors of ObjectWrap classes, by name, kept for instanceof checks and creation.
Napi::FunctionReference& ClassRef(Napi::Env env, const std::string& name);

}  // namespace vmpod
