// Unix sockets for the control channels of QEMU and virtiofsd: connect and listen natively (so
// TypeScript knows the fd of the socket it talks on), and sendmsg(2) with SCM_RIGHTS to pass file
// descriptors to QEMU's monitor (QMP `getfd` / `add-fd`). None of these block: a unix connect
// completes or fails at once, and sendmsg runs with MSG_DONTWAIT, so they run on the main thread.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "addon/errno_worker.h"

namespace vmpod {
namespace {

// At most this many fds in one message (the kernel's SCM_MAX_FD is 253).
constexpr size_t kMaxFds = 64;

sockaddr_un UnixAddress(Napi::Env env, const std::string& path, const char* syscall) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path) || path.find('\0') != std::string::npos) {
    throw ErrnoError(env, syscall, ENAMETOOLONG, path);
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

// unixConnect(path): number — a connected, non-blocking, close-on-exec stream socket.
Napi::Value UnixConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = StringArg(info, 0, "path");
  sockaddr_un addr = UnixAddress(env, path, "connect");
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) throw ErrnoError(env, "socket", errno, path);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    int err = errno;
    ::close(fd);
    throw ErrnoError(env, "connect", err, path);
  }
  return Napi::Number::New(env, fd);
}

// unixListen(path, backlog): number — a bound, listening, close-on-exec stream socket (blocking
// mode: it is meant to be inherited by a server process such as virtiofsd --fd=N).
Napi::Value UnixListen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = StringArg(info, 0, "path");
  if (!info[1].IsNumber()) throw Napi::TypeError::New(env, "backlog must be a number");
  int backlog = info[1].As<Napi::Number>().Int32Value();
  sockaddr_un addr = UnixAddress(env, path, "bind");
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw ErrnoError(env, "socket", errno, path);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    int err = errno;
    ::close(fd);
    throw ErrnoError(env, "bind", err, path);
  }
  if (::listen(fd, backlog) != 0) {
    int err = errno;
    ::close(fd);
    ::unlink(path.c_str());
    throw ErrnoError(env, "listen", err, path);
  }
  return Napi::Number::New(env, fd);
}

// sendFds(socketFd, data, fds): number — one sendmsg(2) of `data` carrying `fds` as SCM_RIGHTS.
// Returns the bytes written (the fds travel with the first byte, the caller writes any rest).
// Throws with code EAGAIN when the socket buffer is full.
Napi::Value SendFds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber()) throw Napi::TypeError::New(env, "socketFd must be a number");
  if (!info[1].IsBuffer()) throw Napi::TypeError::New(env, "data must be a Buffer");
  if (!info[2].IsArray()) throw Napi::TypeError::New(env, "fds must be an array");
  int sock = info[0].As<Napi::Number>().Int32Value();
  auto data = info[1].As<Napi::Buffer<char>>();
  auto list = info[2].As<Napi::Array>();
  if (data.Length() == 0) throw Napi::RangeError::New(env, "data must not be empty");
  if (list.Length() == 0 || list.Length() > kMaxFds) throw Napi::RangeError::New(env, "fds must hold 1 to 64 fds");
  std::vector<int> fds;
  for (uint32_t i = 0; i < list.Length(); i++) {
    Napi::Value v = list.Get(i);
    if (!v.IsNumber() || v.As<Napi::Number>().Int32Value() < 0) {
      throw Napi::TypeError::New(env, "fds must hold non-negative integers");
    }
    fds.push_back(v.As<Napi::Number>().Int32Value());
  }

  iovec iov{data.Data(), data.Length()};
  std::vector<char> control(CMSG_SPACE(sizeof(int) * fds.size()), 0);
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
  std::memcpy(CMSG_DATA(cmsg), fds.data(), sizeof(int) * fds.size());

  ssize_t n;
  do {
    n = ::sendmsg(sock, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0) throw ErrnoError(env, "sendmsg", errno, "SCM_RIGHTS");
  return Napi::Number::New(env, static_cast<double>(n));
}

}  // namespace

void InitFdpass(Napi::Env env, Napi::Object exports) {
  exports.Set("unixConnect", Napi::Function::New(env, UnixConnect, "unixConnect"));
  exports.Set("unixListen", Napi::Function::New(env, UnixListen, "unixListen"));
  exports.Set("sendFds", Napi::Function::New(env, SendFds, "sendFds"));
}

}  // namespace vmpod
