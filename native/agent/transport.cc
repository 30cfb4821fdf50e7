// Host channels: virtio-serial ports named vmpod.agent.* (the default in the guest), and
// listening sockets (unix:PATH for tests on the host, vsock:PORT where vhost-vsock exists).
#include <dirent.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <csignal>
#include <cstring>

#include "agent/agent.h"

namespace agent {

void Agent::StartTransports() {
  for (const auto& address : opts_.listen) {
    Fd fd;
    if (StartsWith(address, "unix:")) {
      std::string path = address.substr(5);
      sockaddr_un sa{};
      sa.sun_family = AF_UNIX;
      if (path.empty() || path.size() >= sizeof sa.sun_path) throw Error(Code::kInvalidArgument, "bad socket path " + path);
      memcpy(sa.sun_path, path.c_str(), path.size());
      fd.reset(socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
      if (!fd.valid()) ThrowErrno("socket(AF_UNIX)");
      unlink(path.c_str());
      if (bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0) ThrowErrno("bind " + path);
      chmod(path.c_str(), 0600);
      socketPaths_.push_back(path);
    } else if (StartsWith(address, "vsock:")) {
      sockaddr_vm sa{};
      sa.svm_family = AF_VSOCK;
      sa.svm_cid = VMADDR_CID_ANY;
      sa.svm_port = static_cast<unsigned>(std::stoul(address.substr(6)));
      fd.reset(socket(AF_VSOCK, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
      if (!fd.valid()) ThrowErrno("socket(AF_VSOCK)");
      if (bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0) ThrowErrno("bind " + address);
    } else {
      throw Error(Code::kInvalidArgument, "unknown listen address " + address + " (use unix:PATH or vsock:PORT)");
    }
    if (listen(fd.get(), 16) < 0) ThrowErrno("listen " + address);
    int lfd = fd.get();
    loop_.Add(lfd, EPOLLIN, [this, lfd, address](uint32_t) {
      for (;;) {
        int conn = accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (conn < 0) break;
        AddSession(conn, true, address + "#" + std::to_string(nextSession_));
      }
    });
    listeners_.push_back(std::move(fd));
    Log("listening on %s", address.c_str());
  }
  if (opts_.virtioSerial) {
    portScanStart_ = MonotonicMs();
    ScanPorts();
  }
}

// Finds the ports by name in sysfs (there is no udev in the guest) and opens /dev/vportNpM.
void Agent::ScanPorts() {
  const char* dir = "/sys/class/virtio-ports";
  if (DIR* d = opendir(dir)) {
    while (struct dirent* e = readdir(d)) {
      if (e->d_name[0] == '.') continue;
      std::string name;
      try {
        if (!ReadFileIfExists(std::string(dir) + "/" + e->d_name + "/name", &name, 256)) continue;
      } catch (const Error&) {
        continue;
      }
      while (!name.empty() && name.back() == '\n') name.pop_back();
      if (!StartsWith(name, opts_.portPrefix)) continue;
      std::string dev = std::string("/dev/") + e->d_name;
      Fd fd(open(dev.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY));
      if (!fd.valid()) {
        Log("cannot open %s (%s): %s", dev.c_str(), name.c_str(), strerror(errno));
        continue;
      }
      Log("serving virtio-serial port %s (%s)", name.c_str(), dev.c_str());
      ports_.push_back(Port{dev, std::move(fd), 0, false});
    }
    closedir(d);
  }
  if (ports_.empty()) {
    // Drivers may still be probing; look again, and say so once in a while.
    int64_t waited = MonotonicMs() - portScanStart_;
    if (waited > 0 && waited % 5000 < 100) Log("no %s* virtio-serial port yet", opts_.portPrefix.c_str());
    loop_.AddTimer(100, [this] { ScanPorts(); });
    return;
  }
  for (size_t i = 0; i < ports_.size(); i++) WatchPort(i);
}

// A port with no host connected reports POLLHUP (and epoll would spin on it), so a port without
// a session is polled every 20 ms until the host connects; then it gets a fresh session.
void Agent::WatchPortLater(size_t i) {
  loop_.AddTimer(20, [this, i] { WatchPort(i); });
}

// A port with no host connected reports POLLHUP (and epoll would spin on it), so while no host
// is connected the port is polled every 20 ms; once one is, its session (re)starts reading.
void Agent::WatchPort(size_t i) {
  Port& port = ports_[i];
  if (shuttingDown_) return;
  auto hungUp = [&] {
    pollfd pfd{port.fd.get(), POLLIN, 0};
    poll(&pfd, 1, 0);
    return (pfd.revents & POLLHUP) != 0;
  };
  if (Session* s = port.session ? FindSession(port.session) : nullptr) {
    if (!s->paused()) return;
    if (hungUp()) {
      WatchPortLater(i);
    } else {
      s->Resume();
    }
    return;
  }
  // No session: at start, or after a protocol error (ignore input until the host hangs up).
  bool hup = hungUp();
  if (hup || port.poisoned) {
    bool poisoned = port.poisoned;
    char buf[4096];
    for (ssize_t n; (n = read(port.fd.get(), buf, sizeof buf)) > 0;) {
      // Bytes on a port without a session come from a host that connected since: the guest
      // learns that a host opened the port (a control message) after the host's first bytes may
      // already be readable, so POLLHUP can still be set while a new host's Hello waits. They are
      // kept for its session (dropping them left that host waiting forever for an answer); only
      // a poisoned port's input is ignored, until the host hangs up.
      if (!poisoned && port.early.size() + n <= kMaxEarlyBytes) port.early.append(buf, n);
    }
    if (hup) port.poisoned = false;
    if (!hup || hungUp() || port.poisoned) {
      WatchPortLater(i);
      return;
    }
  }
  std::string early = std::move(port.early);
  port.early.clear();
  port.session = AddSession(port.fd.get(), false, port.path);
  Session& s = *sessions_[port.session];
  s.setPort();
  // virtio_console moves at most 32 KiB per write(): a frame that fits in one write costs one
  // virtqueue kick, which is what is expensive under emulation.
  s.setDataChunk(kVirtioMaxWrite - kHeaderSize);
  // No splice(2) to virtio-serial: with pipe pages it cannot steal (e.g. a container writing
  // with sendfile), the 6.1 guest kernel queues zero-sized buffers and QEMU marks the device
  // broken ("virtio: zero sized buffers are not allowed"). Seen with `cat` of a file.
  s.disableSplice();
  if (!early.empty()) s.Receive(early.data(), early.size());
}

void Agent::StartShutdown(Pending pending) {
  if (pending) Reply(pending, json::object());
  if (shuttingDown_) return;
  shuttingDown_ = true;
  Log("shutting down: killing %zu container(s)", containers_.size());
  for (auto& [id, c] : containers_) {
    if (!c->cgroup.empty()) cgroups_.Signal(c->cgroup, SIGKILL);
  }
  for (auto& [pid, p] : byPid_) kill(pid, SIGKILL);
  int64_t deadline = MonotonicMs() + 5000;
  // Held weakly by itself, strongly by the pending timer (see FinishDelete).
  auto check = std::make_shared<std::function<void()>>();
  std::weak_ptr<std::function<void()>> self = check;
  *check = [this, deadline, self] {
    if (byPid_.empty() || MonotonicMs() > deadline) {
      FinishShutdown();
      return;
    }
    loop_.AddTimer(20, [next = self.lock()] { (*next)(); });
  };
  (*check)();
}

void Agent::FinishShutdown() {
  std::vector<std::string> ids;
  for (auto& [id, c] : containers_) ids.push_back(id);
  for (const auto& id : ids) {
    Container& c = *containers_[id];
    c.deleteWaiters.clear();
    // Zombies of a killed pid namespace keep its cgroup busy for a moment.
    for (int i = 0; i < 100 && !c.cgroup.empty() && !cgroups_.Remove(c.cgroup); i++) usleep(10000);
    FinishDelete(c);
  }
  direct_.Shutdown();
  for (auto it = mounts_.rbegin(); it != mounts_.rend(); ++it) {
    if (umount2(it->c_str(), MNT_DETACH) < 0) Log("umount %s: %s", it->c_str(), strerror(errno));
  }
  mounts_.clear();
  shareBinds_.clear();
  rmdir((opts_.stateDir + "/containers").c_str());
  for (auto& [id, s] : sessions_) s->Flush();
  for (const auto& path : socketPaths_) unlink(path.c_str());
  cgroups_.Shutdown();
  Log("shutdown complete");
  loop_.Stop();
}

}  // namespace agent
