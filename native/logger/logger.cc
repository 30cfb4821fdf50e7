// vmpod-logger FILE MAX_BYTES: copies its stdin to FILE, keeping at most MAX_BYTES in FILE and
// the MAX_BYTES before them in FILE.1 (when FILE would grow past the cap it becomes FILE.1 and a
// new FILE starts). A guest writes what its hypervisor prints (the serial console), as fast and
// as much as it likes: this keeps the host's copy bounded without ever blocking the writer for
// long. It exits at end of input (the hypervisor is gone) and on SIGTERM.
//
// vmpod-logger --cri DIR MAX_BYTES MAX_FILES STREAM=SOCKET...: the detached writer of a
// container's log (src/container/log-file.ts describes the files). STREAM is stdout or stderr,
// SOCKET the unix socket QEMU binds to the stream port the container writes that output into;
// the stream's marker (src/agent/direct-stream.ts) is in the environment as
// VMPOD_MARKER_STDOUT / VMPOD_MARKER_STDERR (64 hex digits). It takes the exclusive lock
// DIR/writer.lock, connects to every socket, prints "ready" on stdout (then points stdout and
// stderr at /dev/null), and appends to DIR/stdio.log one CRI record per line of output (a line
// longer than 16 KiB, or bytes without a newline yet, as P records), rotating the file at
// MAX_BYTES and keeping MAX_FILES files. Everything from a socket is the guest's: the bytes are
// written as they are, between the start and end markers; at most 1 MiB may come before the
// start marker; nothing is held back but the 31 bytes that could begin the end marker; a
// stream ends at its end marker or when its socket closes. It exits once every stream ended,
// or on SIGTERM; it fails (exit 1, the reason on stdout) when it cannot start.
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cstring>
#include <sys/stat.h>
#include <unistd.h>

#include <poll.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>

#include <algorithm>
#include <string>
#include <vector>

namespace {

int OpenLog(const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    std::fprintf(stderr, "vmpod-logger: open %s: %s\n", path.c_str(), std::strerror(errno));
    std::exit(1);
  }
  return fd;
}

bool WriteAll(int fd, const char* data, size_t size) {
  while (size > 0) {
    ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

}  // namespace

int ConsoleMain(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: vmpod-logger FILE MAX_BYTES\n");
    return 2;
  }
  const std::string path = argv[1];
  char* end = nullptr;
  // Digits only: strtoull would take "-1" (as the largest value: no cap) and leading spaces.
  const bool digits = argv[2][0] >= '0' && argv[2][0] <= '9';
  errno = 0;
  unsigned long long max = std::strtoull(argv[2], &end, 10);
  if (!digits || errno == ERANGE || end == argv[2] || *end != '\0' || max < 4096) {
    std::fprintf(stderr, "vmpod-logger: MAX_BYTES must be an integer of at least 4096\n");
    return 2;
  }
  ::signal(SIGPIPE, SIG_IGN);
  int out = OpenLog(path);
  struct stat st{};
  unsigned long long size = ::fstat(out, &st) == 0 ? static_cast<unsigned long long>(st.st_size) : 0;
  static char buffer[65536];
  for (;;) {
    ssize_t n = ::read(STDIN_FILENO, buffer, sizeof(buffer));
    if (n == 0) return 0;
    if (n < 0) {
      if (errno == EINTR) continue;
      return 1;
    }
    if (size + static_cast<unsigned long long>(n) > max) {
      // Rotate: the current file becomes FILE.1 (replacing the older one).
      ::close(out);
      if (::rename(path.c_str(), (path + ".1").c_str()) != 0 && errno != ENOENT) return 1;
      out = OpenLog(path);
      size = 0;
    }
    // A chunk larger than the cap keeps its end only.
    const char* data = buffer;
    size_t length = static_cast<size_t>(n);
    if (length > max) {
      data += length - max;
      length = static_cast<size_t>(max);
    }
    if (!WriteAll(out, data, length)) return 1;
    size += length;
  }
}

namespace {

constexpr size_t kMarkerSize = 32;
constexpr size_t kMaxBeforeStart = 1024 * 1024;
constexpr size_t kMaxRecordContent = 16 * 1024;

[[noreturn]] void Fail(const std::string& message) {
  std::printf("vmpod-logger: %s\n", message.c_str());
  std::fflush(stdout);
  std::exit(1);
}

bool ParseUnsigned(const char* text, unsigned long long min, unsigned long long max, unsigned long long* out) {
  if (text[0] < '0' || text[0] > '9') return false;
  char* end = nullptr;
  errno = 0;
  unsigned long long value = std::strtoull(text, &end, 10);
  if (errno == ERANGE || *end != '\0' || value < min || value > max) return false;
  *out = value;
  return true;
}

bool DecodeMarker(const char* hex, std::string* out) {
  if (!hex || std::strlen(hex) != 2 * kMarkerSize) return false;
  out->assign(kMarkerSize, '\0');
  for (size_t i = 0; i < 2 * kMarkerSize; i++) {
    char c = hex[i];
    int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (v < 0) return false;
    (*out)[i / 2] = static_cast<char>(((*out)[i / 2] << 4) | v);
  }
  return true;
}

// The rotating CRI log.
class CriLog {
 public:
  CriLog(std::string file, unsigned long long maxBytes, unsigned maxFiles) : file_(std::move(file)), max_(maxBytes), files_(maxFiles) {
    fd_ = Open();
    struct stat st{};
    size_ = ::fstat(fd_, &st) == 0 ? static_cast<unsigned long long>(st.st_size) : 0;
  }

  // Appends the records of `size` bytes of `stream` received now.
  void Write(const char* stream, const char* data, size_t size) {
    if (size == 0) return;
    char time[64];
    Now(time, sizeof(time));
    const std::string full = std::string(time) + " " + stream + " F ";
    const std::string partial = std::string(time) + " " + stream + " P ";
    size_t at = 0;
    while (at < size) {
      const char* nl = static_cast<const char*>(std::memchr(data + at, '\n', size - at));
      size_t lineEnd = nl ? static_cast<size_t>(nl - data) : size;
      while (lineEnd - at > kMaxRecordContent) {
        Record(partial, data + at, kMaxRecordContent);
        at += kMaxRecordContent;
      }
      if (!nl) {
        if (lineEnd > at) Record(partial, data + at, lineEnd - at);
        break;
      }
      Record(full, data + at, lineEnd - at);
      at = lineEnd + 1;
    }
    Flush();
  }

 private:
  int Open() {
    int fd = ::open(file_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) std::exit(1);
    return fd;
  }

  static void Now(char* out, size_t size) {
    struct timespec ts{};
    ::clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm{};
    ::gmtime_r(&ts.tv_sec, &tm);
    size_t n = ::strftime(out, size, "%Y-%m-%dT%H:%M:%S", &tm);
    std::snprintf(out + n, size - n, ".%09ldZ", static_cast<long>(ts.tv_nsec));
  }

  // Appends a record to what Write() writes at its end (one write per chunk and file, not per line).
  void Record(const std::string& header, const char* content, size_t size) {
    unsigned long long length = header.size() + size + 1;
    if (size_ + pending_.size() + length > max_ && size_ + pending_.size() > 0) {
      Flush();
      Rotate();
    }
    pending_.append(header);
    pending_.append(content, size);
    pending_.push_back('\n');
  }

  void Flush() {
    const char* data = pending_.data();
    size_t left = pending_.size();
    while (left > 0) {
      ssize_t n = ::write(fd_, data, left);
      if (n < 0) {
        if (errno == EINTR) continue;
        std::exit(1);  // the disk is full or gone: nothing more can be logged
      }
      data += n;
      left -= static_cast<size_t>(n);
      size_ += static_cast<unsigned long long>(n);
    }
    pending_.clear();
  }

  void Rotate() {
    ::close(fd_);
    if (files_ == 1) {
      ::unlink(file_.c_str());
    } else {
      for (unsigned k = files_ - 2; k >= 1; k--) {
        std::string from = file_ + "." + std::to_string(k), to = file_ + "." + std::to_string(k + 1);
        if (::rename(from.c_str(), to.c_str()) != 0 && errno != ENOENT) std::exit(1);
      }
      if (::rename(file_.c_str(), (file_ + ".1").c_str()) != 0) std::exit(1);
    }
    fd_ = Open();
    size_ = 0;
  }

  std::string file_;
  unsigned long long max_;
  unsigned files_;
  int fd_ = -1;
  unsigned long long size_ = 0;
  std::string pending_;
};

// One output of the container: its socket and what its markers let through.
struct Output {
  std::string name;
  std::string marker;
  int fd = -1;
  enum { kStart, kData, kEnd } phase = kStart;
  std::string held;
  size_t skipped = 0;
  bool done = false;
};

// Length of the longest tail of `buf` that is a proper prefix of `marker`.
size_t PartialTail(const std::string& buf, const std::string& marker) {
  for (size_t k = std::min(marker.size() - 1, buf.size()); k > 0; k--) {
    if (buf.compare(buf.size() - k, k, marker, 0, k) == 0) return k;
  }
  return 0;
}

// Feeds bytes read from an output's socket; writes what is stream data.
void Feed(Output& o, CriLog& log, const char* data, size_t size) {
  if (o.phase == Output::kEnd) return;
  std::string buf = std::move(o.held);
  o.held.clear();
  buf.append(data, size);
  size_t from = 0;
  if (o.phase == Output::kStart) {
    size_t at = buf.find(o.marker);
    if (at == std::string::npos) {
      size_t keep = PartialTail(buf, o.marker);
      o.skipped += buf.size() - keep;
      o.held = buf.substr(buf.size() - keep);
      if (o.skipped > kMaxBeforeStart) o.done = true;  // not a stream: give up on it
      return;
    }
    o.skipped += at;
    if (o.skipped > kMaxBeforeStart) {
      o.done = true;
      return;
    }
    o.phase = Output::kData;
    from = at + kMarkerSize;
  }
  size_t at = buf.find(o.marker, from);
  if (at != std::string::npos) {
    log.Write(o.name.c_str(), buf.data() + from, at - from);
    o.phase = Output::kEnd;
    o.done = true;
    return;
  }
  size_t keep = PartialTail(buf.substr(from), o.marker);
  log.Write(o.name.c_str(), buf.data() + from, buf.size() - from - keep);
  o.held = buf.substr(buf.size() - keep);
}

int Connect(const std::string& path) {
  struct sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) Fail("socket path too long: " + path);
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  for (int attempt = 0;; attempt++) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) Fail(std::string("socket: ") + std::strerror(errno));
    if (::connect(fd, reinterpret_cast<struct sockaddr*>(&addr), sizeof(addr)) == 0) return fd;
    int err = errno;
    ::close(fd);
    if ((err != ECONNREFUSED && err != EAGAIN && err != EINTR) || attempt >= 100) Fail("connect " + path + ": " + std::strerror(err));
    ::usleep(20 * 1000);
  }
}

int CriMain(int argc, char** argv) {
  if (argc < 6) {
    std::printf("usage: vmpod-logger --cri DIR MAX_BYTES MAX_FILES STREAM=SOCKET...\n");
    return 2;
  }
  const std::string dir = argv[2];
  unsigned long long maxBytes = 0, maxFiles = 0;
  if (!ParseUnsigned(argv[3], 65536, 1ULL << 40, &maxBytes)) Fail("MAX_BYTES must be an integer of at least 65536");
  if (!ParseUnsigned(argv[4], 1, 16, &maxFiles)) Fail("MAX_FILES must be an integer from 1 to 16");
  std::vector<Output> outputs;
  std::vector<std::string> sockets;
  for (int i = 5; i < argc; i++) {
    std::string arg = argv[i];
    size_t eq = arg.find('=');
    std::string name = eq == std::string::npos ? "" : arg.substr(0, eq);
    if (name != "stdout" && name != "stderr") Fail("give STREAM=SOCKET with STREAM stdout or stderr, not " + arg);
    for (const auto& o : outputs) {
      if (o.name == name) Fail(name + " is given twice");
    }
    Output o;
    o.name = name;
    if (!DecodeMarker(std::getenv(name == "stdout" ? "VMPOD_MARKER_STDOUT" : "VMPOD_MARKER_STDERR"), &o.marker)) {
      Fail("the marker of " + name + " must be 64 lowercase hex digits in the environment");
    }
    outputs.push_back(std::move(o));
    sockets.push_back(arg.substr(eq + 1));
  }
  ::signal(SIGPIPE, SIG_IGN);
  const std::string lockPath = dir + "/writer.lock";
  int lock = ::open(lockPath.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (lock < 0) Fail("open " + lockPath + ": " + std::strerror(errno));
  // A reader takes the lock shared for a moment: wait for it, not for another writer (10 s).
  for (int attempt = 0; ::flock(lock, LOCK_EX | LOCK_NB) != 0; attempt++) {
    if (errno != EWOULDBLOCK && errno != EINTR) Fail("flock " + lockPath + ": " + std::strerror(errno));
    if (attempt >= 500) Fail("another process writes the log (" + lockPath + " is locked)");
    ::usleep(20 * 1000);
  }
  CriLog log(dir + "/stdio.log", maxBytes, static_cast<unsigned>(maxFiles));
  for (size_t i = 0; i < outputs.size(); i++) outputs[i].fd = Connect(sockets[i]);
  std::printf("ready\n");
  std::fflush(stdout);
  int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null >= 0) {
    ::dup2(null, STDOUT_FILENO);
    ::dup2(null, STDERR_FILENO);
    ::close(null);
  }
  static char buffer[65536];
  for (;;) {
    std::vector<struct pollfd> fds;
    std::vector<Output*> which;
    for (auto& o : outputs) {
      if (o.done) continue;
      fds.push_back({o.fd, POLLIN, 0});
      which.push_back(&o);
    }
    if (fds.empty()) return 0;
    if (::poll(fds.data(), fds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      return 1;
    }
    for (size_t i = 0; i < fds.size(); i++) {
      if (fds[i].revents == 0) continue;
      Output& o = *which[i];
      ssize_t n = ::read(o.fd, buffer, sizeof(buffer));
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n > 0) {
        Feed(o, log, buffer, static_cast<size_t>(n));
      } else {
        // The socket closed (the VM is gone) before the end marker: what was held back is data.
        if (o.phase == Output::kData) log.Write(o.name.c_str(), o.held.data(), o.held.size());
        o.held.clear();
        o.done = true;
      }
      if (o.done) {
        ::close(o.fd);
        o.fd = -1;
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && std::strcmp(argv[1], "--cri") == 0) return CriMain(argc, argv);
  return ConsoleMain(argc, argv);
}
