// Mounts: the agent's Mount request (ParseGuestMount: type, tag, device, target bounded to the
// state dir, options) and the path helpers its checks stand on. The raw input is also a path:
// NormalizePath is idempotent and absolute, and SecureJoin never leaves its root, resolved
// against a tree of hostile symlinks (made once next to the fuzzer binary).
#include <sys/stat.h>
#include <unistd.h>

#include <climits>
#include <cstdint>
#include <string>

#include "agent/mounts.h"
#include "common.h"

namespace {

const std::string kStateDir = "/run/vmpod";
std::string g_root;

// root/ holds links that point out of it every way a container's rootfs could.
void MakeTree() {
  char exe[PATH_MAX] = {};
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  std::string dir = n > 0 ? std::string(exe, n) : "/tmp/x";
  dir = dir.substr(0, dir.rfind('/')) + "/securejoin-root";
  mkdir(dir.c_str(), 0755);
  mkdir((dir + "/a").c_str(), 0755);
  mkdir((dir + "/a/b").c_str(), 0755);
  auto link = [&](const char* target, const char* name) { symlink(target, (dir + "/" + name).c_str()); };
  link("../../../..", "up");
  link("/etc", "abs");
  link("/", "slash");
  link("loop", "loop");
  link("up/abs/../..", "chain");
  link("../a/b/../../up", "a/b/rel");
  link("a/b/rel", "deep");
  g_root = dir;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  MakeTree();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text = fuzz::AsText(data, size);
  agent::json j;
  if (fuzz::Try("ParseObject", [&] { j = agent::ParseObject(text); })) {
    fuzz::Try("ParseGuestMount", [&] {
      agent::GuestMount m = agent::ParseGuestMount(j, kStateDir);
      FUZZ_CHECK(agent::NormalizePath(m.target) == m.target, "target not normalised");
      FUZZ_CHECK(agent::IsUnder(m.target, kStateDir) && m.target != kStateDir, "target outside the state dir");
      FUZZ_CHECK(!agent::IsUnder(m.target, kStateDir + "/containers"), "target among the containers");
      for (const auto& o : m.options) FUZZ_CHECK(o != "bind" && o != "rbind" && o != "remount", "forbidden option");
      if (!m.devicePath.empty()) FUZZ_CHECK(m.devicePath.rfind("/dev/", 0) == 0, "device outside /dev");
      if (m.type == "ext4") FUZZ_CHECK(!m.devicePci.empty() || !m.deviceSerial.empty() || !m.devicePath.empty(), "ext4 without a device");
    });
    return 0;
  }
  if (size > 4096 || text.find('\0') != std::string_view::npos) return 0;
  std::string path(text);
  std::string norm = agent::NormalizePath(path);
  if (!path.empty() && path[0] == '/') {
    FUZZ_CHECK(!norm.empty() && norm[0] == '/', "absolute path normalised to nothing");
    FUZZ_CHECK(agent::NormalizePath(norm) == norm, "NormalizePath not idempotent");
    FUZZ_CHECK(norm == "/" || norm.back() != '/', "trailing slash");
    FUZZ_CHECK(norm.find("//") == std::string::npos && norm.find("/./") == std::string::npos &&
                   norm.find("/../") == std::string::npos,
               "not normal: " + norm);
  } else {
    FUZZ_CHECK(norm.empty(), "relative path normalised");
  }
  std::string joined;
  if (fuzz::Try("SecureJoin", [&] { joined = agent::SecureJoin(g_root, path); })) {
    FUZZ_CHECK(agent::IsUnder(joined, g_root), "SecureJoin(\"" + path + "\") = \"" + joined + "\" escapes the root");
  }
  return 0;
}
