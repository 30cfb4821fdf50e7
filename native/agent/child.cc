#include "agent/child.h"

#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>

#include "agent/cgroup.h"

namespace agent {

namespace {

int g_sync = -1;

[[noreturn]] void Report(const std::string& message, int err) {
  std::string m = "E" + std::to_string(err) + " " + message;
  if (g_sync >= 0) send(g_sync, m.data(), std::min<size_t>(m.size(), 4000), MSG_NOSIGNAL);
  _exit(127);
}

void ResetSignals() {
  sigset_t all;
  sigemptyset(&all);
  sigprocmask(SIG_SETMASK, &all, nullptr);
  for (int sig = 1; sig < NSIG; sig++) signal(sig, SIG_DFL);
}

// Moves the stdio fds to 0, 1, 2 and the sync socket to 3 (close-on-exec), closes everything else.
void SetupIo(ChildIo& io) {
  int null = -1;
  if (io.in < 0 || io.out < 0 || io.err < 0) {
    null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null < 0) ThrowErrno("open /dev/null");
  }
  int fds[4] = {io.in < 0 ? null : io.in, io.out < 0 ? null : io.out, io.err < 0 ? null : io.err, io.sync};
  int high[4];
  for (int i = 0; i < 4; i++) {
    high[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 64);
    if (high[i] < 0) ThrowErrno("dup");
  }
  for (int i = 0; i < 4; i++) {
    if (dup2(high[i], i) < 0) ThrowErrno("dup2");
  }
  if (fcntl(3, F_SETFD, FD_CLOEXEC) < 0) ThrowErrno("fcntl");
  g_sync = 3;
  io.sync = 3;
  if (close_range(4, ~0U, 0) < 0) ThrowErrno("close_range");
}

// Sends a message with an fd attached (SCM_RIGHTS) on the setup channel.
void SendWithFd(const char* msg, int fd) {
  iovec iov{const_cast<char*>(msg), strlen(msg)};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))]{};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = control;
  mh.msg_controllen = sizeof control;
  cmsghdr* c = CMSG_FIRSTHDR(&mh);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(c), &fd, sizeof(int));
  if (sendmsg(g_sync, &mh, MSG_NOSIGNAL) < 0) ThrowErrno("send the pty to the agent");
}

// Opens a pty in the container's own devpts (so ttyname() works inside), makes its slave our
// stdio and returns the master, which goes to the agent.
int OpenContainerPty(const ProcessSpec& p) {
  int master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (master < 0) {
    ThrowErrno("process.terminal needs a devpts mount on /dev/pts (with newinstance,ptmxmode=0666): open /dev/ptmx");
  }
  if (unlockpt(master) < 0) ThrowErrno("unlockpt");
  char name[64];
  if (ptsname_r(master, name, sizeof name) != 0) ThrowErrno("ptsname");
  int slave = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (slave < 0) ThrowErrno(std::string("open ") + name);
  if (p.rows && p.cols) {
    winsize ws{p.rows, p.cols, 0, 0};
    ioctl(slave, TIOCSWINSZ, &ws);
  }
  for (int i = 0; i < 3; i++) {
    if (dup2(slave, i) < 0) ThrowErrno("dup2 pty");
  }
  close(slave);
  return master;
}

void JoinAll(const std::vector<JoinNamespace>& join) {
  // The mount namespace last: the others are named by fds that stay valid across it.
  for (int pass = 0; pass < 2; pass++) {
    for (const auto& j : join) {
      if ((j.nstype == CLONE_NEWNS) != (pass == 1)) continue;
      if (setns(j.fd, j.nstype) < 0) ThrowErrno("setns");
    }
  }
}

std::string FindExecutable(const ProcessSpec& p) {
  const std::string& name = p.args[0];
  if (name.find('/') != std::string::npos) return name;
  std::string path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
  for (const auto& e : p.env) {
    if (StartsWith(e, "PATH=")) path = e.substr(5);
  }
  for (const auto& dir : Split(path, ':')) {
    std::string candidate = (dir.empty() ? "." : dir) + "/" + name;
    struct stat st;
    if (stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) && access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
  }
  throw Error(Code::kNotFound, "executable \"" + name + "\" not found in $PATH (" + path + ")", ENOENT);
}

void ApplyCapabilities(const Capabilities& c) {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2]{};
  for (int i = 0; i < 2; i++) {
    data[i].effective = static_cast<uint32_t>(c.effective >> (32 * i));
    data[i].permitted = static_cast<uint32_t>(c.permitted >> (32 * i));
    data[i].inheritable = static_cast<uint32_t>(c.inheritable >> (32 * i));
  }
  if (syscall(SYS_capset, &header, data) < 0) ThrowErrno("capset");
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL) ThrowErrno("clear ambient capabilities");
  for (int cap = 0; cap < 64; cap++) {
    if ((c.ambient >> cap) & 1) {
      // Like runc: a capability missing from the inheritable set cannot be ambient; skip it.
      prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0);
    }
  }
}

[[noreturn]] void ExecProcess(const ProcessSpec& p) {
  if (p.terminal) {
    if (setsid() < 0) ThrowErrno("setsid");
    if (ioctl(0, TIOCSCTTY, 0) < 0) ThrowErrno("ioctl(TIOCSCTTY)");
  }
  for (const auto& r : p.rlimits) {
    rlimit lim{r.soft, r.hard};
    if (setrlimit(r.resource, &lim) < 0) ThrowErrno("setrlimit(" + std::to_string(r.resource) + ")");
  }
  if (p.oomScoreAdj) WriteFile("/proc/self/oom_score_adj", std::to_string(*p.oomScoreAdj));
  if (p.umask) umask(*p.umask);
  if (chdir(p.cwd.c_str()) < 0) ThrowErrno("chdir to process.cwd " + p.cwd);
  if (p.capabilities) {
    for (int cap = 0; cap < 64; cap++) {
      if ((p.capabilities->bounding >> cap) & 1) continue;
      if (prctl(PR_CAPBSET_READ, cap, 0, 0, 0) < 0) break;  // beyond the kernel's last capability
      if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) ThrowErrno("drop capability " + std::to_string(cap) + " from the bounding set");
    }
    if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0) ThrowErrno("prctl(PR_SET_KEEPCAPS)");
  }
  if (setgroups(p.additionalGids.size(), p.additionalGids.data()) < 0) ThrowErrno("setgroups");
  if (setresgid(p.gid, p.gid, p.gid) < 0) ThrowErrno("setresgid(" + std::to_string(p.gid) + ")");
  if (setresuid(p.uid, p.uid, p.uid) < 0) ThrowErrno("setresuid(" + std::to_string(p.uid) + ")");
  if (p.capabilities) {
    if (prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) < 0) ThrowErrno("prctl(PR_SET_KEEPCAPS)");
    ApplyCapabilities(*p.capabilities);
  }
  if (p.noNewPrivileges && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) ThrowErrno("prctl(PR_SET_NO_NEW_PRIVS)");
  std::string file = FindExecutable(p);
  std::vector<char*> argv, envp;
  for (const auto& a : p.args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (const auto& e : p.env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  execve(file.c_str(), argv.data(), envp.data());
  ThrowErrno("exec " + file);
}

}  // namespace

void RunInit(ChildIo io, const std::string& cgroup, bool newCgroupNs, std::vector<JoinNamespace> join,
             const Spec& spec, const RootfsPlan& plan) {
  g_sync = io.sync;
  try {
    ResetSignals();
    if (!cgroup.empty()) JoinCgroup(cgroup);
    if (newCgroupNs && unshare(CLONE_NEWCGROUP) < 0) ThrowErrno("unshare(CLONE_NEWCGROUP)");
    JoinAll(join);
    SetupIo(io);
    SetupRootfs(spec, plan);
    if (spec.process.terminal) {
      int master = OpenContainerPty(spec.process);
      SendWithFd("ok", master);
      close(master);
    } else if (send(3, "ok", 2, MSG_NOSIGNAL) < 0) {
      _exit(127);
    }
    char buf[16];
    ssize_t n = recv(3, buf, sizeof buf, 0);
    if (n != 5 || memcmp(buf, "start", 5) != 0) _exit(127);  // the agent went away or deleted us
    ExecProcess(spec.process);
  } catch (const Error& e) {
    Report(e.what(), e.err());
  } catch (const std::exception& e) {
    Report(e.what(), 0);
  }
}

void RunExec(ChildIo io, const std::string& cgroup, std::vector<JoinNamespace> join, const ProcessSpec& process) {
  g_sync = io.sync;
  try {
    ResetSignals();
    if (!cgroup.empty()) JoinCgroup(cgroup);
    JoinAll(join);
    SetupIo(io);
    if (process.terminal) {
      int master = OpenContainerPty(process);
      SendWithFd("pty", master);
      close(master);
    }
    ExecProcess(process);
  } catch (const Error& e) {
    Report(e.what(), e.err());
  } catch (const std::exception& e) {
    Report(e.what(), 0);
  }
}

}  // namespace agent
