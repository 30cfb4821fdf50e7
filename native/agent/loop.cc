#include "agent/loop.h"

#include <sys/epoll.h>
#include <unistd.h>

#include <exception>

#include "agent/util.h"

namespace agent {

Loop::Loop() : epfd_(epoll_create1(EPOLL_CLOEXEC)) {
  if (epfd_ < 0) ThrowErrno("epoll_create1");
}

Loop::~Loop() { close(epfd_); }

uint64_t Loop::Add(int fd, uint32_t events, Handler handler) {
  uint64_t token = next_++;
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = token;
  if (epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) < 0) ThrowErrno("epoll_ctl(ADD)");
  entries_[token] = std::make_shared<Entry>(Entry{fd, std::move(handler)});
  return token;
}

void Loop::Modify(uint64_t token, uint32_t events) {
  auto it = entries_.find(token);
  if (it == entries_.end()) return;
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = token;
  if (epoll_ctl(epfd_, EPOLL_CTL_MOD, it->second->fd, &ev) < 0) ThrowErrno("epoll_ctl(MOD)");
}

void Loop::Remove(uint64_t token) {
  auto it = entries_.find(token);
  if (it == entries_.end()) return;
  epoll_ctl(epfd_, EPOLL_CTL_DEL, it->second->fd, nullptr);
  entries_.erase(it);
}

uint64_t Loop::AddTimer(int64_t ms, std::function<void()> fn) {
  uint64_t id = next_++;
  timers_.emplace(MonotonicMs() + ms, std::make_pair(id, std::move(fn)));
  return id;
}

void Loop::CancelTimer(uint64_t id) {
  for (auto it = timers_.begin(); it != timers_.end(); ++it) {
    if (it->second.first == id) {
      timers_.erase(it);
      return;
    }
  }
}

void Loop::Run(const std::function<void()>& idle) {
  epoll_event events[64];
  while (!stop_) {
    int timeout = -1;
    if (!timers_.empty()) {
      int64_t wait = timers_.begin()->first - MonotonicMs();
      timeout = wait < 0 ? 0 : static_cast<int>(wait);
    }
    int n = epoll_wait(epfd_, events, 64, timeout);
    if (n < 0 && errno != EINTR) ThrowErrno("epoll_wait");
    for (int i = 0; i < n; i++) {
      // epoll_event is packed on x86-64: its u64 sits at offset 4. Copy it out; a reference to
      // it (map::find takes one) would be a misaligned reference (UB, seen by UBSan).
      uint64_t token = events[i].data.u64;
      auto it = entries_.find(token);
      if (it == entries_.end()) continue;  // removed by an earlier handler of this batch
      std::shared_ptr<Entry> entry = it->second;  // keeps the handler alive while it runs
      try {
        entry->handler(events[i].events);
      } catch (const std::exception& e) {
        Log("unexpected error in an event handler: %s", e.what());  // PID 1 must not die
      }
    }
    int64_t now = MonotonicMs();
    while (!timers_.empty() && timers_.begin()->first <= now) {
      auto fn = std::move(timers_.begin()->second.second);
      timers_.erase(timers_.begin());
      try {
        fn();
      } catch (const std::exception& e) {
        Log("unexpected error in a timer: %s", e.what());
      }
    }
    idle();
  }
}

}  // namespace agent
