// The worker thread: runs every job that blocks or changes its namespace, off Node's main thread.
//
// One dedicated thread per Node environment serves a FIFO queue, so jobs never overlap (netlink
// requests are serialised by the kernel's RTNL lock anyway) and callers can pipeline dependent
// steps. Results return through a thread-safe function whose handle keeps the event loop alive
// only while jobs are pending.
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include "addon/common.h"

namespace vmpod {
namespace {

thread_local int t_home = -1;      // netns the worker thread started in
thread_local int t_current = -1;   // netns it is in now; -2 for an anonymous new one
thread_local bool t_retired = false;

class Worker {
 public:
  explicit Worker(Napi::Env env)
      : tsfn_(Tsfn::New(env, "vmpod-worker", 0, 1, this)) {
    tsfn_.Unref(env);
    // Registered after the thread-safe function, so it runs before the function's own cleanup.
    napi_add_env_cleanup_hook(env, [](void* self) { static_cast<Worker*>(self)->Shutdown(); }, this);
  }
  ~Worker() { Shutdown(); }

  Napi::Promise Submit(Napi::Env env, Work work) {
    auto job = std::make_unique<Job>(env, std::move(work));
    Napi::Promise promise = job->deferred->Promise();
    {
      std::lock_guard lock(mu_);
      queue_.push_back(std::move(job));
      StartLocked();
    }
    cv_.notify_one();
    if (pending_++ == 0) tsfn_.Ref(env);
    return promise;
  }

 private:
  struct Job {
    Job() = default;
    Job(Napi::Env env, Work w) : work(std::move(w)), deferred(Napi::Promise::Deferred::New(env)) {}
    Work work;
    ToJs result;
    std::optional<SysError> error;
    std::string fatal;
    std::optional<Napi::Promise::Deferred> deferred;  // empty for a "thread retired" notice
  };

  static void CallJs(Napi::Env env, Napi::Function, Worker* self, Job* raw) {
    std::unique_ptr<Job> job(raw);
    if (env == nullptr) return;  // environment shutting down: drop (fds close with the job)
    if (!job->deferred) {        // a thread retired: serve what is left with a fresh one
      std::lock_guard lock(self->mu_);
      if (!self->queue_.empty()) self->StartLocked();
      return;
    }
    if (job->error) {
      job->deferred->Reject(ToJsError(env, *job->error).Value());
    } else if (!job->fatal.empty()) {
      job->deferred->Reject(Napi::Error::New(env, "vmpod native: " + job->fatal).Value());
    } else {
      try {
        job->deferred->Resolve(job->result ? job->result(env) : env.Undefined());
      } catch (const Napi::Error& e) {
        job->deferred->Reject(e.Value());
      }
    }
    if (--self->pending_ == 0) self->tsfn_.Unref(env);
  }

  // Starts a thread if none serves the queue. Called with mu_ held, on the main thread, so the new
  // thread inherits the main thread's namespaces.
  void StartLocked() {
    if (running_ || stopping_) return;
    if (thread_.joinable()) thread_.join();  // a retired thread, already past its last lock
    running_ = true;
    thread_ = std::thread([this] { Run(); });
  }

  void Run() {
    t_home = t_current = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    for (;;) {
      std::unique_ptr<Job> job;
      {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
        if (stopping_) break;
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      try {
        job->result = job->work();
      } catch (const SysError& e) {
        job->error = e;
      } catch (const std::exception& e) {
        job->fatal = e.what();
      }
      job->work = {};  // release captured state (namespace handles) here, not on the main thread
      if (tsfn_.BlockingCall(job.get()) == napi_ok) job.release();
      if (t_retired) {
        fprintf(stderr, "vmpod: worker thread could not return to its network namespace; retired\n");
        std::lock_guard lock(mu_);
        running_ = false;
        auto notice = std::make_unique<Job>();
        if (tsfn_.BlockingCall(notice.get()) == napi_ok) notice.release();
        break;
      }
    }
    if (t_home >= 0) close(t_home);
  }

  void Shutdown() {
    {
      std::lock_guard lock(mu_);
      if (stopping_) return;
      stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
    queue_.clear();
    tsfn_.Release();
  }

  using Tsfn = Napi::TypedThreadSafeFunction<Worker, Job, &Worker::CallJs>;
  Tsfn tsfn_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Job>> queue_;
  std::thread thread_;
  bool running_ = false;
  bool stopping_ = false;
  size_t pending_ = 0;  // main thread only
};

}  // namespace

struct AddonState {
  std::unique_ptr<Worker> worker;
  std::map<std::string, Napi::FunctionReference> classes;
};

AddonState& State(Napi::Env env) {
  auto* state = env.GetInstanceData<AddonState>();
  if (state == nullptr) {
    state = new AddonState();
    env.SetInstanceData(state);
  }
  return *state;
}

Napi::FunctionReference& ClassRef(Napi::Env env, const std::string& name) {
  return State(env).classes[name];
}

Napi::Promise Schedule(Napi::Env env, Work work) {
  AddonState& state = State(env);
  if (!state.worker) state.worker = std::make_unique<Worker>(env);
  return state.worker->Submit(env, std::move(work));
}

int HomeNetns() { return t_home; }

NetnsScope::NetnsScope(int nsfd) : previous_(t_current) {
  if (t_home < 0) ThrowSys("open", EBADF, "/proc/thread-self/ns/net", "not on the worker thread");
  if (setns(nsfd, CLONE_NEWNET) != 0) ThrowSys("setns");
  t_current = nsfd;
}

NetnsScope::NetnsScope(New) : previous_(t_current) {
  if (t_home < 0) ThrowSys("open", EBADF, "/proc/thread-self/ns/net", "not on the worker thread");
  if (unshare(CLONE_NEWNET) != 0) ThrowSys("unshare");
  t_current = -2;
}

NetnsScope::~NetnsScope() {
  // previous_ is the home fd or an fd owned by an enclosing scope's caller: still open here.
  int target = previous_ >= 0 ? previous_ : t_home;
  if (setns(target, CLONE_NEWNET) != 0) {
    t_retired = true;
    return;
  }
  t_current = target;
}

}  // namespace vmpod
