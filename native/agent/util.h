// Small helpers shared by the agent: errors that carry a protocol code, logging, fds, files.
#pragma once
#include <cerrno>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace agent {

// Error codes carried in error responses (docs/agent-protocol.md, "Errors").
enum class Code {
  kInvalidArgument,     // the request is malformed or a field is out of range
  kNotFound,            // no such container, process or device
  kAlreadyExists,       // the id is taken
  kFailedPrecondition,  // the object is in the wrong state (e.g. start twice)
  kBusy,                // another session holds this stdio stream
  kUnimplemented,       // unknown method
  kPermissionDenied,    // refused by policy (e.g. a mount target outside the state dir)
  kInternal,            // a system call failed
};
const char* CodeName(Code code);

// The one exception type of the agent: a request fails with it and its text goes to the client.
class Error : public std::runtime_error {
 public:
  Error(Code code, const std::string& message, int err = 0)
      : std::runtime_error(message), code_(code), errno_(err) {}
  Code code() const { return code_; }
  int err() const { return errno_; }

 private:
  Code code_;
  int errno_;
};

// Throws kInternal with "what: strerror(errno)" and the errno attached.
[[noreturn]] void ThrowErrno(const std::string& what, int err = errno);

// Logging to stderr (the guest console). Debug lines only with --debug / vmpod.debug=1.
extern bool g_debug;
void Log(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void Debug(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// An owned file descriptor, closed on destruction.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  Fd(Fd&& o) noexcept : fd_(o.release()) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) reset(o.release());
    return *this;
  }
  ~Fd() { reset(); }
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

void SetNonBlocking(int fd, bool on = true);
void SetCloexec(int fd, bool on = true);

// Whole-file helpers; ReadFile throws Error(kInternal) with errno on failure.
std::string ReadFile(const std::string& path, size_t max = 1 << 20);
bool ReadFileIfExists(const std::string& path, std::string* out, size_t max = 1 << 20);
void WriteFile(const std::string& path, std::string_view data);  // O_WRONLY|O_TRUNC, no create
void WriteFileAtomic(const std::string& path, std::string_view data);
void MkdirAll(const std::string& path, unsigned mode = 0755);
void RemoveTree(const std::string& path);  // rm -rf that never crosses a mount point
bool PathExists(const std::string& path);
bool IsDirectory(const std::string& path);

std::vector<std::string> Split(std::string_view s, char sep);
bool StartsWith(std::string_view s, std::string_view prefix);
// Lexically normalises an absolute path ("/a/./b/../c" -> "/a/c"); empty if not absolute.
std::string NormalizePath(std::string_view path);
// True if `path` (normalised, absolute) equals `root` or lies below it.
bool IsUnder(const std::string& path, const std::string& root);

int64_t MonotonicMs();
std::string ErrnoName(int err);

}  // namespace agent
