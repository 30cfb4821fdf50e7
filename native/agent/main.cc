// vmpod-agent: the guest agent. As PID 1 of the VM it serves the vmpod.agent.* virtio-serial
// ports; on the host (tests) it serves --listen sockets. See docs/agent-protocol.md.
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <linux/magic.h>

#include <cstdio>
#include <cstring>

#include "agent/agent.h"
#include "agent/coverage.h"

namespace agent {

int Agent::Run() {
  // The agent's memory holds what containers must not see (the stream markers, for one), and
  // its children inherit this until they execve (see Spawn).
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0) ThrowErrno("prctl(PR_SET_DUMPABLE)");
  sigset_t mask;
  sigemptyset(&mask);
  for (int sig : {SIGCHLD, SIGTERM, SIGINT, SIGPWR, SIGHUP}) sigaddset(&mask, sig);
  sigprocmask(SIG_BLOCK, &mask, nullptr);
  signal(SIGPIPE, SIG_IGN);
  signalFd_.reset(signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC));
  if (!signalFd_.valid()) ThrowErrno("signalfd");
  selfPidNs_.reset(open("/proc/self/ns/pid", O_RDONLY | O_CLOEXEC));
  if (!selfPidNs_.valid()) ThrowErrno("open /proc/self/ns/pid");

  if (opts_.pid1) {
    reboot(RB_DISABLE_CAD);  // Ctrl-Alt-Del (and ACPI power button via the kernel) -> SIGINT
  } else {
    // Not init: adopt orphans anyway, and keep our mounts to ourselves so that they vanish with us.
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    if (unshare(CLONE_NEWNS) < 0) ThrowErrno("unshare(CLONE_NEWNS)");
    if (mount(nullptr, "/", nullptr, MS_REC | MS_SLAVE, nullptr) < 0) ThrowErrno("make / a slave mount");
  }
  MkdirAll(opts_.stateDir, 0755);

  if (opts_.cgroup == "auto") {
    struct statfs fs;
    if (statfs("/sys/fs/cgroup", &fs) == 0 && fs.f_type == CGROUP2_SUPER_MAGIC) {
      try {
        cgroups_.Init("/sys/fs/cgroup/vmpod", /*enableInParent=*/true);
      } catch (const Error& e) {
        Log("running without cgroups: %s", e.what());
      }
    } else {
      Log("running without cgroups: /sys/fs/cgroup is not a cgroup2 mount (use --cgroup PATH)");
    }
  } else if (opts_.cgroup != "none") {
    cgroups_.Init(opts_.cgroup, /*enableInParent=*/false);
  }

  loop_.Add(signalFd_.get(), EPOLLIN, [this](uint32_t) {
    signalfd_siginfo info;
    bool child = false, stop = false;
    while (read(signalFd_.get(), &info, sizeof info) == sizeof info) {
      if (info.ssi_signo == SIGCHLD) child = true;
      else if (info.ssi_signo != SIGHUP) stop = true;
    }
    if (child) OnSigchld();
    if (stop) StartShutdown(Pending{});
  });
  StartTransports();
  Log("vmpod-agent %s ready (protocol %d, pid %d%s)", kAgentVersion, kProtocolVersion, getpid(), opts_.pid1 ? ", init" : "");
  loop_.Run([this] {
    for (auto it = sessions_.begin(); it != sessions_.end();) {
      it = it->second->closed() ? sessions_.erase(it) : std::next(it);
    }
  });
  if (opts_.pid1) {
    // Power off: flush the page cache, detach what we can, and let QEMU exit.
    FlushCoverage();  // coverage builds only: needs /sys and /dev, so before the detach
    sync();
    std::string mounts;
    if (ReadFileIfExists("/proc/mounts", &mounts, 1 << 20)) {
      auto lines = Split(mounts, '\n');
      for (auto it = lines.rbegin(); it != lines.rend(); ++it) {
        auto fields = Split(*it, ' ');
        if (fields.size() < 2 || fields[1] == "/" || fields[1] == "/proc" || fields[1] == "/dev") continue;
        umount2(fields[1].c_str(), MNT_DETACH);
      }
    }
    sync();
    Log("powering off");
    reboot(RB_POWER_OFF);
    for (;;) pause();
  }
  return exitCode_;
}

}  // namespace agent

namespace {

void Usage(FILE* out) {
  fprintf(out,
          "usage: vmpod-agent [options]\n"
          "  --listen ADDR          serve unix:PATH or vsock:PORT (repeatable); disables the\n"
          "                         virtio-serial ports unless --virtio-serial is given too\n"
          "  --virtio-serial        serve the vmpod.agent.* virtio-serial ports (default as PID 1\n"
          "                         or without --listen)\n"
          "  --state-dir DIR        where containers and Mount targets live (default /run/vmpod)\n"
          "  --builtin-rootfs DIR   lower layer of the \"builtin\" rootfs (default /usr/share/vmpod/rootfs)\n"
          "  --cgroup auto|none|DIR cgroup2 directory the agent owns (auto: /sys/fs/cgroup/vmpod when\n"
          "                         /sys/fs/cgroup is cgroup2, else none)\n"
          "  --set-time / --no-set-time\n"
          "                         apply SetTime requests to the clock (default: only as PID 1)\n"
          "  --manage-network       accept the network methods when not PID 1 (tests: run the agent\n"
          "                         in a network namespace of its own)\n"
          "  --sys-root DIR         look devices up under DIR instead of /sys (tests)\n"
          "  --share TAG=DIR        on a host (tests): a virtiofs Mount of TAG binds DIR (recursively)\n"
          "                         instead of mounting a virtio-fs device (repeatable)\n"
          "  --debug                log every request to stderr\n"
          "  --version, --help\n"
          "kernel command line (read as PID 1): vmpod.debug=1, vmpod.cgroup=auto|none\n");
}

}  // namespace

int main(int argc, char** argv) {
  using agent::Options;
  Options o;
  o.pid1 = getpid() == 1;
  bool virtio = false, setTimeGiven = false;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        fprintf(stderr, "vmpod-agent: %s needs a value\n", a.c_str());
        exit(2);
      }
      return argv[++i];
    };
    if (a == "--listen") o.listen.push_back(value());
    else if (a == "--virtio-serial") virtio = true;
    else if (a == "--state-dir") o.stateDir = agent::NormalizePath(value());
    else if (a == "--builtin-rootfs") o.builtinRootfs = agent::NormalizePath(value());
    else if (a == "--cgroup") o.cgroup = value();
    else if (a == "--set-time") o.allowSetTime = setTimeGiven = true;
    else if (a == "--no-set-time") setTimeGiven = true, o.allowSetTime = false;
    else if (a == "--manage-network") o.manageNetwork = true;
    else if (a == "--sys-root") o.sysRoot = agent::NormalizePath(value());
    else if (a == "--share") {
      std::string share = value();
      auto eq = share.find('=');
      std::string tag = share.substr(0, eq == std::string::npos ? 0 : eq);
      std::string dir = eq == std::string::npos ? "" : share.substr(eq + 1);
      bool tagOk = !tag.empty() && tag.size() <= 36 &&
                   tag.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-") == std::string::npos;
      if (!tagOk || dir.empty() || agent::NormalizePath(dir) != dir) {
        fprintf(stderr, "vmpod-agent: --share needs TAG=DIR: a tag of 1-36 of [A-Za-z0-9_.-], a normalised absolute path\n");
        return 2;
      }
      if (!o.shares.emplace(tag, dir).second) {
        fprintf(stderr, "vmpod-agent: --share %s given twice\n", tag.c_str());
        return 2;
      }
    }
    else if (a == "--debug") agent::g_debug = true;
    else if (a == "--version") {
      printf("vmpod-agent %s (protocol %d)\n", agent::kAgentVersion, agent::kProtocolVersion);
      return 0;
    } else if (a == "--help" || a == "-h") {
      Usage(stdout);
      return 0;
    } else {
      fprintf(stderr, "vmpod-agent: unknown option %s\n", a.c_str());
      Usage(stderr);
      return 2;
    }
  }
  if (o.pid1) {
    std::string cmdline;
    try {
      agent::ReadFileIfExists("/proc/cmdline", &cmdline, 65536);
    } catch (const agent::Error&) {
    }
    for (auto token : agent::Split(cmdline, ' ')) {
      while (!token.empty() && token.back() == '\n') token.pop_back();
      if (token == "vmpod.debug=1") agent::g_debug = true;
      if (agent::StartsWith(token, "vmpod.cgroup=")) o.cgroup = token.substr(13);
    }
    umask(022);
  }
  if (o.stateDir.empty() || o.builtinRootfs.empty() || o.sysRoot.empty() ||
      (o.cgroup != "auto" && o.cgroup != "none" && agent::NormalizePath(o.cgroup) != o.cgroup)) {
    fprintf(stderr, "vmpod-agent: --state-dir, --builtin-rootfs and --cgroup DIR must be absolute paths\n");
    return 2;
  }
  o.virtioSerial = virtio || o.listen.empty();
  if (!setTimeGiven) o.allowSetTime = o.pid1;
  try {
    agent::Agent a(o);
    return a.Run();
  } catch (const std::exception& e) {
    agent::Log("fatal: %s", e.what());
    if (o.pid1) {
      // Init must not exit (the kernel would panic): power off instead.
      agent::FlushCoverage();
      sync();
      reboot(RB_POWER_OFF);
    }
    return 1;
  }
}
