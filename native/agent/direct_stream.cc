#include "agent/direct_stream.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <cstring>
#include <regex>

#include "agent/spec.h"

namespace agent {

namespace {

const char* const kOutputs[2] = {"stdout", "stderr"};
// While no host is connected a port reports POLLHUP (epoll would spin): look again this often.
constexpr int64_t kRetryMs = 50;

// /dev/vportNpM of the virtio-serial port named `name` (sysfs: there is no udev in the guest).
std::string FindPort(const std::string& name) {
  const char* dir = "/sys/class/virtio-ports";
  std::string found;
  if (DIR* d = opendir(dir)) {
    while (struct dirent* e = readdir(d)) {
      if (e->d_name[0] == '.') continue;
      std::string value;
      try {
        if (!ReadFileIfExists(std::string(dir) + "/" + e->d_name + "/name", &value, 256)) continue;
      } catch (const Error&) {
        continue;
      }
      while (!value.empty() && value.back() == '\n') value.pop_back();
      if (value == name) {
        found = std::string("/dev/") + e->d_name;
        break;
      }
    }
    closedir(d);
  }
  return found;
}

std::string DecodeHex(const std::string& hex) {
  auto digit = [](char c) { return c <= '9' ? c - '0' : c - 'a' + 10; };
  std::string out(hex.size() / 2, '\0');
  for (size_t i = 0; i < out.size(); i++) out[i] = static_cast<char>(digit(hex[2 * i]) << 4 | digit(hex[2 * i + 1]));
  return out;
}

}  // namespace

std::array<std::optional<DirectRequest>, 2> ParseDirect(const json* direct, const json* stdio, const Spec& spec) {
  std::array<std::optional<DirectRequest>, 2> out;
  if (!direct) return out;
  CheckKeys(*direct, "direct", {"stdout", "stderr"});
  static const std::regex kPort("vmpod\\.stream\\.[0-9]{1,2}");
  static const std::regex kCookie("[0-9a-f]{64}");
  for (int i = 0; i < 2; i++) {
    const json* o = OptObject(*direct, kOutputs[i], "direct");
    if (!o) continue;
    std::string path = std::string("direct.") + kOutputs[i];
    CheckKeys(*o, path, {"port", "cookie"});
    DirectRequest r;
    r.port = GetString(*o, "port", path);
    if (!std::regex_match(r.port, kPort)) BadField(path + ".port", "must be a stream port name, vmpod.stream.N");
    std::string cookie = GetString(*o, "cookie", path);
    if (!std::regex_match(cookie, kCookie)) BadField(path + ".cookie", "must be 64 lowercase hex digits (32 bytes)");
    r.marker = DecodeHex(cookie);
    if (stdio && !OptBool(*stdio, kOutputs[i], "stdio", true)) {
      BadField(path, std::string("stdio.") + kOutputs[i] + " is false: there is no output to send");
    }
    out[i] = std::move(r);
  }
  if (!out[0] && !out[1]) return out;
  if (out[0] && out[1] && out[0]->port == out[1]->port) BadField("direct.stderr.port", "must differ from direct.stdout.port");
  if (spec.process.terminal) BadField("direct", "a terminal process has one pty, not separate output streams");
  for (const auto& ns : spec.namespaces) {
    if (ns.type == "pid" && !ns.path.empty()) {
      // Only the init of a new pid namespace takes every writer with it when it exits.
      BadField("direct", "the container joins an existing pid namespace: its processes may outlive its init");
    }
  }
  return out;
}

Fd DirectStreams::Claim(const std::string& id, int which, const DirectRequest& request) {
  auto it = byPort_.find(request.port);
  if (it != byPort_.end()) {
    if (!it->second->owner.empty()) {
      throw Error(Code::kBusy, "stream port " + request.port + " is in use by container \"" + it->second->owner + "\"");
    }
    // An orphan still trying to write its end marker: the host gave the port to someone else,
    // so its reader is gone. The new reader skips anything before its own start marker.
    Drop(request.port);
  }
  std::string dev = FindPort(request.port);
  if (dev.empty()) throw Error(Code::kNotFound, "no virtio-serial port is named " + request.port, ENOENT);
  // O_APPEND makes splice(2) and sendfile(2) into the port fail with EINVAL (writers fall back
  // to write(2)): the 6.1 guest's virtio_console splice path loses data and has queued
  // zero-sized buffers, which makes QEMU mark the whole device broken.
  Fd fd(open(dev.c_str(), O_WRONLY | O_APPEND | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
  if (!fd.valid()) {
    int err = errno;
    if (err == EBUSY) throw Error(Code::kBusy, "stream port " + request.port + " is held open by another process", err);
    ThrowErrno("open " + dev + " (" + request.port + ")", err);
  }
  Fd child(fcntl(fd.get(), F_DUPFD_CLOEXEC, 0));
  if (!child.valid()) ThrowErrno("dup");
  auto s = std::make_unique<Stream>();
  s->port = request.port;
  s->owner = id;
  s->which = which;
  s->marker = request.marker;
  s->pending = request.marker;
  s->fd = std::move(fd);
  Stream& ref = *s;
  byPort_[request.port] = std::move(s);
  Debug("container %s: %s goes to %s (%s)", id.c_str(), kOutputs[which], request.port.c_str(), dev.c_str());
  Pump(ref);
  return child;
}

void DirectStreams::Abandon(const std::string& id) {
  std::vector<std::string> ports;
  for (const auto& [port, s] : byPort_) {
    if (s->owner == id) ports.push_back(port);
  }
  for (const auto& port : ports) Drop(port);
  auto w = waiters_.find(id);
  if (w != waiters_.end()) {
    for (const auto& waiter : w->second) loop_.CancelTimer(waiter->timer);
    waiters_.erase(w);
  }
}

void DirectStreams::Drop(const std::string& port) {
  auto it = byPort_.find(port);
  if (it == byPort_.end()) return;
  loop_.Remove(it->second->token);
  if (it->second->timer) loop_.CancelTimer(it->second->timer);
  byPort_.erase(it);  // closes the agent's fd; the port is free once no container holds it either
}

void DirectStreams::Pump(Stream& s) {
  while (!s.pending.empty()) {
    ssize_t n = write(s.fd.get(), s.pending.data(), s.pending.size());
    if (n > 0) {
      s.pending.erase(0, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      Wait(s);
      return;
    }
    // ENODEV, EIO: the port is unusable. Nobody will read this stream.
    Log("stream port %s: writing a marker failed: %s", s.port.c_str(), n < 0 ? strerror(errno) : "short write");
    s.pending.clear();
    // A start marker that cannot be written leaves the stream starting: StartContainer fails
    // after its timeout.
    if (s.state != Stream::kStarting) Drop(s.port);
    return;
  }
  if (s.state == Stream::kStarting) {
    // The container gets a blocking stdout, as with any pipe or file.
    SetNonBlocking(s.fd.get(), false);
    s.state = Stream::kActive;
    Debug("stream port %s: start marker written", s.port.c_str());
    if (!s.owner.empty()) Started(s.owner);
  } else if (s.state == Stream::kEnding) {
    Debug("stream port %s: end marker written", s.port.c_str());
    if (s.owner.empty()) {
      Drop(s.port);
      return;
    }
    s.state = Stream::kEnded;
    WatchHost(s);
  }
}

// An ended stream's marker may have been lost with a host that hung up before reading it
// (QEMU discards what is in flight when the socket closes): write it again for the next host,
// which is a reader taking the stream over. Edge-triggered: woken when the host hangs up or
// connects, without spinning on the POLLHUP that a port without a host reports.
void DirectStreams::WatchHost(Stream& s) {
  Stream* self = &s;
  s.token = loop_.Add(s.fd.get(), EPOLLOUT | EPOLLET, [self](uint32_t) {
    pollfd pfd{self->fd.get(), POLLOUT, 0};
    poll(&pfd, 1, 0);
    if ((pfd.revents & POLLHUP) && !(pfd.revents & POLLOUT)) {
      self->hostGone = true;
    } else if ((pfd.revents & POLLOUT) && self->hostGone) {
      self->hostGone = false;
      ssize_t n = write(self->fd.get(), self->marker.data(), self->marker.size());
      Debug("stream port %s: a new host; end marker written again (%zd)", self->port.c_str(), n);
    }
  });
}

void DirectStreams::Wait(Stream& s) {
  if (s.token || s.timer) return;
  Stream* self = &s;
  std::string port = s.port;
  auto again = [this, self, port] {
    auto it = byPort_.find(port);
    if (it == byPort_.end() || it->second.get() != self) return;
    Pump(*self);
  };
  pollfd pfd{s.fd.get(), POLLOUT, 0};
  poll(&pfd, 1, 0);
  if ((pfd.revents & POLLHUP) && !(pfd.revents & POLLOUT)) {
    // No host connected (yet, or any more): writes would block; look again later.
    s.timer = loop_.AddTimer(kRetryMs, [self, again] {
      self->timer = 0;
      again();
    });
    return;
  }
  // Connected but full (the host reads slowly): wait until the port takes more.
  s.token = loop_.Add(s.fd.get(), EPOLLOUT, [this, self, again](uint32_t) {
    loop_.Remove(self->token);
    self->token = 0;
    again();
  });
}

bool DirectStreams::AllStarted(const std::string& id) const {
  for (const auto& [port, s] : byPort_) {
    if (s->owner == id && s->state == Stream::kStarting) return false;
  }
  return true;
}

void DirectStreams::Started(const std::string& id) {
  if (!AllStarted(id)) return;
  auto w = waiters_.find(id);
  if (w == waiters_.end()) return;
  auto list = std::move(w->second);
  waiters_.erase(w);
  for (const auto& waiter : list) {
    loop_.CancelTimer(waiter->timer);
    waiter->ready();
  }
}

void DirectStreams::WhenStarted(const std::string& id, std::function<void()> ready,
                                std::function<void(const Error&)> failed, int64_t timeoutMs) {
  if (AllStarted(id)) {
    ready();
    return;
  }
  std::string port;
  for (const auto& [name, s] : byPort_) {
    if (s->owner == id && s->state == Stream::kStarting) port = name;
  }
  auto waiter = std::make_shared<Waiter>();
  waiter->ready = std::move(ready);
  waiter->failed = std::move(failed);
  std::weak_ptr<Waiter> weak = waiter;
  waiter->timer = loop_.AddTimer(timeoutMs, [this, id, weak, port, timeoutMs] {
    auto waiter = weak.lock();
    if (!waiter) return;
    auto& list = waiters_[id];
    std::erase(list, waiter);
    if (list.empty()) waiters_.erase(id);
    waiter->failed(Error(Code::kFailedPrecondition, "the host end of stream port " + port + " did not take the start marker within " +
                                                        std::to_string(timeoutMs) + " ms (is it connected?)"));
  });
  waiters_[id].push_back(std::move(waiter));
}

void DirectStreams::End(const std::string& id) {
  auto w = waiters_.find(id);
  if (w != waiters_.end()) {
    for (const auto& waiter : w->second) loop_.CancelTimer(waiter->timer);
    waiters_.erase(w);  // a StartContainer still waiting is answered by the init's exit
  }
  std::vector<std::string> ports;
  for (const auto& [port, s] : byPort_) {
    if (s->owner == id && (s->state == Stream::kStarting || s->state == Stream::kActive)) ports.push_back(port);
  }
  for (const auto& port : ports) {
    Stream& s = *byPort_[port];
    s.state = Stream::kEnding;
    s.pending += s.marker;  // after the start marker, if that is still pending
    try {
      SetNonBlocking(s.fd.get(), true);
    } catch (const Error& e) {
      Log("stream port %s: %s", port.c_str(), e.what());
    }
    if (!s.token && !s.timer) Pump(s);
  }
}

void DirectStreams::Forget(const std::string& id) {
  std::vector<std::string> ports;
  for (auto& [port, s] : byPort_) {
    if (s->owner != id) continue;
    if (s->state == Stream::kEnding) {
      s->owner.clear();
    } else {
      // Ended (the record frees the port: nobody can take the stream over any more), or its
      // init was never reaped (shutdown gave up): no end marker then.
      ports.push_back(port);
    }
  }
  for (const auto& port : ports) Drop(port);
}

std::optional<std::string> DirectStreams::PortOf(const std::string& id, int which) const {
  for (const auto& [port, s] : byPort_) {
    if (s->owner == id && s->which == which) return port;
  }
  return std::nullopt;
}

void DirectStreams::Shutdown() {
  for (auto& [port, s] : byPort_) {
    loop_.Remove(s->token);
    s->token = 0;
    if (s->timer) loop_.CancelTimer(s->timer);
    s->timer = 0;
    while (!s->pending.empty()) {
      ssize_t n = write(s->fd.get(), s->pending.data(), s->pending.size());
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      s->pending.erase(0, static_cast<size_t>(n));
    }
  }
  byPort_.clear();
  for (auto& [id, list] : waiters_) {
    for (const auto& waiter : list) loop_.CancelTimer(waiter->timer);
  }
  waiters_.clear();
}

}  // namespace agent
