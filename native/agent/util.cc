#include "agent/util.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <cstring>

namespace agent {

bool g_debug = false;

const char* CodeName(Code code) {
  switch (code) {
    case Code::kInvalidArgument: return "INVALID_ARGUMENT";
    case Code::kNotFound: return "NOT_FOUND";
    case Code::kAlreadyExists: return "ALREADY_EXISTS";
    case Code::kFailedPrecondition: return "FAILED_PRECONDITION";
    case Code::kBusy: return "BUSY";
    case Code::kUnimplemented: return "UNIMPLEMENTED";
    case Code::kPermissionDenied: return "PERMISSION_DENIED";
    case Code::kInternal: return "INTERNAL";
  }
  return "INTERNAL";
}

void ThrowErrno(const std::string& what, int err) {
  throw Error(err == ENOENT ? Code::kNotFound : Code::kInternal, what + ": " + strerror(err), err);
}

static void VLog(const char* prefix, const char* fmt, va_list ap) {
  char line[2048];
  int n = snprintf(line, sizeof line, "vmpod-agent[%d]: %s", getpid(), prefix);
  if (n < 0) return;
  vsnprintf(line + n, sizeof line - n, fmt, ap);
  size_t len = strnlen(line, sizeof line - 2);
  line[len] = '\n';
  ssize_t ignored = write(STDERR_FILENO, line, len + 1);
  (void)ignored;
}

void Log(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  VLog("", fmt, ap);
  va_end(ap);
}

void Debug(const char* fmt, ...) {
  if (!g_debug) return;
  va_list ap;
  va_start(ap, fmt);
  VLog("debug: ", fmt, ap);
  va_end(ap);
}

void Fd::reset(int fd) {
  if (fd_ >= 0) close(fd_);
  fd_ = fd;
}

void SetNonBlocking(int fd, bool on) {
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0) ThrowErrno("fcntl(F_GETFL)");
  flags = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
  if (fcntl(fd, F_SETFL, flags) < 0) ThrowErrno("fcntl(F_SETFL)");
}

void SetCloexec(int fd, bool on) {
  if (fcntl(fd, F_SETFD, on ? FD_CLOEXEC : 0) < 0) ThrowErrno("fcntl(F_SETFD)");
}

bool ReadFileIfExists(const std::string& path, std::string* out, size_t max) {
  Fd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    if (errno == ENOENT) return false;
    ThrowErrno("open " + path);
  }
  out->clear();
  char buf[8192];
  for (;;) {
    ssize_t n = read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      ThrowErrno("read " + path);
    }
    if (n == 0) break;
    if (out->size() + n > max) throw Error(Code::kInvalidArgument, path + " is larger than " + std::to_string(max) + " bytes");
    out->append(buf, n);
  }
  return true;
}

std::string ReadFile(const std::string& path, size_t max) {
  std::string out;
  if (!ReadFileIfExists(path, &out, max)) ThrowErrno("open " + path, ENOENT);
  return out;
}

void WriteFile(const std::string& path, std::string_view data) {
  Fd fd(open(path.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC));
  if (!fd.valid()) ThrowErrno("open " + path);
  ssize_t n = write(fd.get(), data.data(), data.size());
  if (n < 0) ThrowErrno("write " + path);
  if (static_cast<size_t>(n) != data.size()) throw Error(Code::kInternal, "short write to " + path);
}

void WriteFileAtomic(const std::string& path, std::string_view data) {
  std::string tmp = path + ".tmp";
  Fd fd(open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd.valid()) ThrowErrno("open " + tmp);
  if (write(fd.get(), data.data(), data.size()) != static_cast<ssize_t>(data.size())) ThrowErrno("write " + tmp);
  if (fsync(fd.get()) < 0) ThrowErrno("fsync " + tmp);
  fd.reset();
  if (rename(tmp.c_str(), path.c_str()) < 0) ThrowErrno("rename " + tmp);
}

void MkdirAll(const std::string& path, unsigned mode) {
  std::string cur;
  for (const auto& part : Split(path, '/')) {
    if (part.empty()) continue;
    cur += "/" + part;
    if (mkdir(cur.c_str(), mode) < 0 && errno != EEXIST) ThrowErrno("mkdir " + cur);
  }
}

static void RemoveAt(int dirfd, const char* name, dev_t dev) {
  struct stat st;
  if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) return;
  if (S_ISDIR(st.st_mode)) {
    if (st.st_dev != dev) return;  // never descend into another mount
    int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return;
    DIR* dir = fdopendir(fd);
    if (!dir) {
      close(fd);
      return;
    }
    while (struct dirent* e = readdir(dir)) {
      if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
      RemoveAt(fd, e->d_name, dev);
    }
    closedir(dir);
    unlinkat(dirfd, name, AT_REMOVEDIR);
  } else {
    unlinkat(dirfd, name, 0);
  }
}

void RemoveTree(const std::string& path) {
  struct stat st;
  if (lstat(path.c_str(), &st) < 0) return;
  RemoveAt(AT_FDCWD, path.c_str(), st.st_dev);
}

bool PathExists(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0;
}

bool IsDirectory(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::vector<std::string> Split(std::string_view s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  for (;;) {
    size_t pos = s.find(sep, start);
    out.emplace_back(s.substr(start, pos == std::string_view::npos ? std::string_view::npos : pos - start));
    if (pos == std::string_view::npos) break;
    start = pos + 1;
  }
  return out;
}

bool StartsWith(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

std::string NormalizePath(std::string_view path) {
  if (path.empty() || path[0] != '/') return "";
  std::vector<std::string> parts;
  for (auto& p : Split(path, '/')) {
    if (p.empty() || p == ".") continue;
    if (p == "..") {
      if (!parts.empty()) parts.pop_back();
      continue;
    }
    parts.push_back(p);
  }
  std::string out;
  for (auto& p : parts) out += "/" + p;
  return out.empty() ? "/" : out;
}

bool IsUnder(const std::string& path, const std::string& root) {
  if (root == "/") return true;
  return path == root || (StartsWith(path, root) && path.size() > root.size() && path[root.size()] == '/');
}

int64_t MonotonicMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

std::string ErrnoName(int err) {
  const char* name = strerrorname_np(err);
  return name ? name : "E" + std::to_string(err);
}

}  // namespace agent
