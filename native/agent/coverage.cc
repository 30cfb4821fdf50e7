// The in-VM side of coverage builds: see coverage.h. Nothing here is compiled into a normal build.
#ifdef VMPOD_COVERAGE
#include "agent/coverage.h"

#include <dirent.h>
#include <fcntl.h>
#include <cerrno>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "agent/util.h"

extern "C" void __gcov_dump(void);

// gcc turns every execve() of an instrumented program into __gcov_execve(), which writes the
// profile first. Here the caller is a container's process, already in the container's root
// (and namespaces): it cannot reach the build folder, and libgcov's complaint would land on the
// container's stderr. So this build execs without writing: the counters of the child, a copy of
// the agent's, are dropped (the agent writes its own at exit), and with them what the child ran
// between its fork and the exec. A raw syscall, since an execve() here would be rewritten too.
extern "C" int __gcov_execve(const char* path, char* const argv[], char* const envp[]) {
  return static_cast<int>(syscall(SYS_execve, path, argv, envp));
}

namespace agent {
namespace {

// On the initramfs root (never unmounted), not under /run or /tmp (detached at power-off).
constexpr const char* kProfileDir = "/vmpod-coverage";
constexpr const char* kPortName = "vmpod.coverage";

bool WriteAll(int fd, const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = write(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

std::string FindPort() {
  DIR* dir = opendir("/sys/class/virtio-ports");
  if (dir == nullptr) return "";
  std::string found;
  while (dirent* e = readdir(dir)) {
    if (e->d_name[0] == '.') continue;
    char name[128] = {};
    std::string file = std::string("/sys/class/virtio-ports/") + e->d_name + "/name";
    int fd = open(file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    ssize_t n = read(fd, name, sizeof name - 1);
    close(fd);
    while (n > 0 && name[n - 1] == '\n') name[--n] = '\0';
    if (n > 0 && strcmp(name, kPortName) == 0) {
      found = std::string("/dev/") + e->d_name;
      break;
    }
  }
  closedir(dir);
  return found;
}

// Stream format, per file: "FILE <size> <path>\n" then <size> bytes; "END\n" last. <path> is the
// .gcda path the agent was built with (scripts/coverage-native.sh unpacks it).
bool SendTree(int port, const std::string& dir, size_t strip, int* count) {
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return true;
  bool ok = true;
  while (dirent* e = readdir(d)) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    std::string full = dir + "/" + e->d_name;
    struct stat st;
    if (lstat(full.c_str(), &st) < 0) continue;
    if (S_ISDIR(st.st_mode)) {
      ok = SendTree(port, full, strip, count) && ok;
      continue;
    }
    if (!S_ISREG(st.st_mode)) continue;
    std::string data;
    try {
      if (!ReadFileIfExists(full, &data, 64 << 20)) continue;
    } catch (const std::exception&) {
      ok = false;
      continue;
    }
    std::string header = "FILE " + std::to_string(data.size()) + " " + full.substr(strip) + "\n";
    ok = WriteAll(port, header.data(), header.size()) && WriteAll(port, data.data(), data.size()) && ok;
    ++*count;
  }
  closedir(d);
  return ok;
}

}  // namespace

void FlushCoverage() {
  // libgcov reads these when it dumps: each .gcda goes to kProfileDir + its build path.
  setenv("GCOV_PREFIX", kProfileDir, 1);
  setenv("GCOV_PREFIX_STRIP", "0", 1);
  __gcov_dump();
  std::string port = FindPort();
  if (port.empty()) {
    Log("coverage: no %s port, the profile stays in the guest", kPortName);
    return;
  }
  int fd = open(port.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) {
    Log("coverage: open %s: %s", port.c_str(), strerror(errno));
    return;
  }
  int count = 0;
  bool ok = SendTree(fd, kProfileDir, strlen(kProfileDir), &count);
  ok = WriteAll(fd, "END\n", 4) && ok;
  fsync(fd);
  close(fd);
  Log("coverage: %d profile files sent on %s%s", count, kPortName, ok ? "" : " (a write failed)");
}

}  // namespace agent
#endif  // VMPOD_COVERAGE
