// Terminals for vmpod-runtime's --console-socket (docs/oci-runtime.md, "Terminals"): a host
// pseudo-terminal pair whose master goes to the caller over the console socket and whose slave
// the container's monitor holds, relaying it to the container's terminal in the guest. None of
// these block (open of /dev/ptmx and of the slave, ioctls on a terminal), so they run on the
// main thread, as fdpass.cc's calls do.
#include <fcntl.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "addon/errno_worker.h"

namespace vmpod {
namespace {

int FdArg(const Napi::CallbackInfo& info, size_t i) {
  if (!info[i].IsNumber() || info[i].As<Napi::Number>().Int32Value() < 0) {
    throw Napi::TypeError::New(info.Env(), "fd must be a non-negative integer");
  }
  return info[i].As<Napi::Number>().Int32Value();
}

// openPty(): { master, slave, name } — posix_openpt + grantpt + unlockpt, the slave opened by
// its name; both close-on-exec, neither made a controlling terminal (O_NOCTTY).
Napi::Value OpenPty(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int master = ::posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (master < 0) throw ErrnoError(env, "posix_openpt", errno, "/dev/ptmx");
  char name[128];
  if (::grantpt(master) != 0 || ::unlockpt(master) != 0 || ::ptsname_r(master, name, sizeof(name)) != 0) {
    int err = errno;
    ::close(master);
    throw ErrnoError(env, "unlockpt", err, "/dev/ptmx");
  }
  int slave = ::open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (slave < 0) {
    int err = errno;
    ::close(master);
    throw ErrnoError(env, "open", err, name);
  }
  Napi::Object result = Napi::Object::New(env);
  result.Set("master", Napi::Number::New(env, master));
  result.Set("slave", Napi::Number::New(env, slave));
  result.Set("name", Napi::String::New(env, name));
  return result;
}

// setControllingTerminal(fd): ioctl(TIOCSCTTY) — the caller (a session leader without one, e.g.
// a process spawned detached) gets `fd` as its controlling terminal, so that the kernel sends it
// SIGWINCH when the other side sets the window size.
Napi::Value SetControllingTerminal(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  if (::ioctl(fd, TIOCSCTTY, 0) != 0) throw ErrnoError(info.Env(), "ioctl", errno, "TIOCSCTTY");
  return info.Env().Undefined();
}

// getWindowSize(fd): { rows, cols } — ioctl(TIOCGWINSZ).
Napi::Value GetWindowSize(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  winsize ws{};
  if (::ioctl(fd, TIOCGWINSZ, &ws) != 0) throw ErrnoError(info.Env(), "ioctl", errno, "TIOCGWINSZ");
  Napi::Object result = Napi::Object::New(info.Env());
  result.Set("rows", Napi::Number::New(info.Env(), ws.ws_row));
  result.Set("cols", Napi::Number::New(info.Env(), ws.ws_col));
  return result;
}

// setWindowSize(fd, rows, cols): ioctl(TIOCSWINSZ) (the foreground process group gets SIGWINCH).
Napi::Value SetWindowSize(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  if (!info[1].IsNumber() || !info[2].IsNumber()) throw Napi::TypeError::New(info.Env(), "rows and cols must be numbers");
  uint32_t rows = info[1].As<Napi::Number>().Uint32Value();
  uint32_t cols = info[2].As<Napi::Number>().Uint32Value();
  if (rows > 0xffff || cols > 0xffff) throw Napi::RangeError::New(info.Env(), "rows and cols must be below 65536");
  winsize ws{};
  ws.ws_row = static_cast<unsigned short>(rows);
  ws.ws_col = static_cast<unsigned short>(cols);
  if (::ioctl(fd, TIOCSWINSZ, &ws) != 0) throw ErrnoError(info.Env(), "ioctl", errno, "TIOCSWINSZ");
  return info.Env().Undefined();
}

// setRawMode(fd): cfmakeraw on the terminal (no echo, no line editing, no output processing).
Napi::Value SetRawMode(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  termios t{};
  if (::tcgetattr(fd, &t) != 0) throw ErrnoError(info.Env(), "tcgetattr", errno, "");
  ::cfmakeraw(&t);
  if (::tcsetattr(fd, TCSANOW, &t) != 0) throw ErrnoError(info.Env(), "tcsetattr", errno, "");
  return info.Env().Undefined();
}

}  // namespace

void InitPty(Napi::Env env, Napi::Object exports) {
  exports.Set("openPty", Napi::Function::New(env, OpenPty, "openPty"));
  exports.Set("setControllingTerminal", Napi::Function::New(env, SetControllingTerminal, "setControllingTerminal"));
  exports.Set("getWindowSize", Napi::Function::New(env, GetWindowSize, "getWindowSize"));
  exports.Set("setWindowSize", Napi::Function::New(env, SetWindowSize, "setWindowSize"));
  exports.Set("setRawMode", Napi::Function::New(env, SetRawMode, "setRawMode"));
}

}  // namespace vmpod
