// A single-threaded epoll loop with one-shot timers. Everything in the agent runs on it.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <unordered_map>

namespace agent {

class Loop {
 public:
  using Handler = std::function<void(uint32_t events)>;
  Loop();
  ~Loop();

  // Registers `fd` (level-triggered); returns a token for Modify/Remove. The handler may
  // remove any registration, including its own.
  uint64_t Add(int fd, uint32_t events, Handler handler);
  void Modify(uint64_t token, uint32_t events);
  void Remove(uint64_t token);  // no-op for 0 or an already removed token

  // Runs `fn` once after `ms` milliseconds; returns an id for CancelTimer.
  uint64_t AddTimer(int64_t ms, std::function<void()> fn);
  void CancelTimer(uint64_t id);

  // Runs until Stop(); `idle` runs after every batch of events (used to collect closed sessions).
  void Run(const std::function<void()>& idle);
  void Stop() { stop_ = true; }

 private:
  struct Entry {
    int fd;
    Handler handler;
  };
  int epfd_;
  uint64_t next_ = 1;
  bool stop_ = false;
  std::unordered_map<uint64_t, std::shared_ptr<Entry>> entries_;
  std::multimap<int64_t, std::pair<uint64_t, std::function<void()>>> timers_;
};

}  // namespace agent
