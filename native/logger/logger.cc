// vmpod-logger FILE MAX_BYTES: copies its stdin to FILE, keeping at most MAX_BYTES in FILE and
// the MAX_BYTES before them in FILE.1 (when FILE would grow past the cap it becomes FILE.1 and a
// new FILE starts). A guest writes what its hypervisor prints (the serial console), as fast and
// as much as it likes: this keeps the host's copy bounded without ever blocking the writer for
// long. It exits at end of input (the hypervisor is gone) and on SIGTERM.
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cstring>
#include <sys/stat.h>
#include <unistd.h>

#include <string>

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

int main(int argc, char** argv) {
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
