#include "agent/agent.h"

#include <fcntl.h>
#include <pty.h>
#include <sched.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <cstring>

#include "agent/child.h"
#include "agent/pci.h"
#include "agent/requests.h"

namespace agent {

namespace {

int64_t NowMs() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

json ExitJson(const Process& p) {
  return {{"exitCode", p.exitCode}, {"signal", p.exitSignal}, {"oomKilled", p.oomKilled}};
}

const char* StateName(Process::State s) {
  switch (s) {
    case Process::kCreating: return "creating";
    case Process::kCreated: return "created";
    case Process::kRunning: return "running";
    case Process::kExited: return "stopped";
  }
  return "unknown";
}

}  // namespace

std::string Process::label() const {
  return container->id + (execId.empty() ? "" : "/" + execId);
}

std::string Container::status() const { return paused && init->state == Process::kRunning ? "paused" : StateName(init->state); }

Agent::Agent(Options options)
    : opts_(std::move(options)),
      net_(std::make_unique<GuestNetwork>(loop_, opts_.stateDir, opts_.pid1 || opts_.manageNetwork, opts_.pid1)) {}

Session* Agent::FindSession(uint64_t id) {
  auto it = sessions_.find(id);
  return it == sessions_.end() || it->second->closed() ? nullptr : it->second.get();
}

uint64_t Agent::AddSession(int fd, bool ownsFd, const std::string& name) {
  uint64_t id = nextSession_++;
  auto s = std::make_unique<Session>(*this, id, fd, ownsFd, name);
  s->Start();
  sessions_[id] = std::move(s);
  return id;
}

std::vector<Process*> Agent::AllProcesses() {
  std::vector<Process*> out;
  for (auto& [id, c] : containers_) {
    out.push_back(c->init.get());
    for (auto& [eid, e] : c->execs) out.push_back(e.get());
  }
  return out;
}

void Agent::OnSessionClosed(uint64_t id) {
  OnSessionReset(id);
  // A virtio-serial port gets a new session when the host reconnects (see transport.cc).
  for (size_t i = 0; i < ports_.size(); i++) {
    if (ports_[i].session == id) {
      ports_[i].session = 0;
      auto it = sessions_.find(id);
      ports_[i].poisoned = it != sessions_.end() && it->second->failed();
      WatchPort(i);
    }
  }
}

void Agent::OnHostGone(uint64_t id) {
  for (Process* p : AllProcesses()) {
    for (Output* o : {&p->out, &p->err}) {
      if (o->session == id) {
        o->session = 0;
        o->credit = 0;
      }
    }
    if (p->in.session == id) p->in.session = 0;
    UpdateIo(*p);
  }
  for (size_t i = 0; i < ports_.size(); i++) {
    if (ports_[i].session == id) WatchPortLater(i);
  }
}

void Agent::OnSessionReset(uint64_t id) {
  for (Process* p : AllProcesses()) {
    for (Output* o : {&p->out, &p->err}) {
      if (o->session == id) {
        o->session = 0;
        o->credit = 0;
      }
    }
    if (p->in.session == id) p->in.session = 0;
    std::erase_if(p->waiters, [id](const Pending& w) { return w.session == id; });
    UpdateIo(*p);
  }
  for (auto& [cid, c] : containers_) std::erase_if(c->deleteWaiters, [id](const Pending& w) { return w.session == id; });
  for (Process* p : AllProcesses()) {
    if (p->pending.session == id) p->pending = Pending{};  // the child goes on; nobody to answer
  }
}

void Agent::OnSessionDrained(uint64_t id) {
  for (Process* p : AllProcesses()) {
    if (p->out.session == id || p->err.session == id) UpdateIo(*p);
  }
}

void Agent::Reply(const Pending& pending, const json& result) {
  if (Session* s = FindSession(pending.session)) s->SendResult(pending.stream, result);
}

void Agent::ReplyError(const Pending& pending, const Error& error) {
  if (Session* s = FindSession(pending.session)) s->SendError(pending.stream, error);
}

// --- Requests -------------------------------------------------------------------------------

void Agent::Dispatch(Session& s, uint32_t stream, std::string_view payload) {
  std::string method;
  try {
    Envelope request = ParseEnvelope(payload);
    method = request.method;
    const json& params = request.params;
    if (!s.helloDone && method != "Hello") {
      throw Error(Code::kFailedPrecondition, "the first request of a session must be Hello");
    }
    const Method* m = FindMethod(method);
    if (shuttingDown_ && !(m && m->duringShutdown)) throw Error(Code::kFailedPrecondition, "the agent is shutting down");
    Debug("session %s: %s", s.name().c_str(), method.c_str());
    if (!m) throw Error(Code::kUnimplemented, "unknown method \"" + method + "\"");
    if (auto result = m->handler(*this, s, stream, params)) s.SendResult(stream, *result);
  } catch (const Error& e) {
    Debug("%s failed: %s", method.c_str(), e.what());
    s.SendError(stream, e);
  } catch (const std::exception& e) {
    s.SendError(stream, Error(Code::kInternal, e.what()));
  }
}

// Rows are in the order in which Hello lists their features (the order hosts have always seen);
// dispatch does not depend on it.
const std::vector<Agent::Method>& Agent::Methods() {
  using R = std::optional<json>;
  static const std::vector<Method> kMethods = {
      {"Hello", [](Agent& a, Session& s, uint32_t, const json& p) -> R { return a.Hello(s, p); }, true, {}},
      {"Ping",
       [](Agent&, Session&, uint32_t, const json& p) -> R {
         ParseNoParams(p);
         return json::object();
       },
       true, {}},
      {"CreateContainer", [](Agent& a, Session& s, uint32_t st, const json& p) -> R { return a.CreateContainer(s, st, p), std::nullopt; },
       false, {"containers"}},
      {"StartContainer", [](Agent& a, Session& s, uint32_t st, const json& p) -> R { return a.StartContainer(s, st, p), std::nullopt; },
       false, {}},
      {"DeleteContainer", [](Agent& a, Session& s, uint32_t st, const json& p) -> R { return a.DeleteContainer(s, st, p); }, false, {}},
      {"ListContainers",
       [](Agent& a, Session&, uint32_t, const json& p) -> R {
         ParseNoParams(p);
         return a.ListContainers();
       },
       true, {}},
      {"OpenStdio", [](Agent& a, Session& s, uint32_t st, const json& p) -> R { return a.OpenStdio(s, st, p); }, false, {}},
      {"Signal", [](Agent& a, Session&, uint32_t, const json& p) -> R { return a.SignalProcess(p); }, false, {}},
      {"Exec", [](Agent& a, Session& s, uint32_t st, const json& p) -> R { return a.Exec(s, st, p), std::nullopt; }, false, {"exec"}},
      {"ResizeTty", [](Agent& a, Session&, uint32_t, const json& p) -> R { return a.ResizeTty(p); }, false, {"tty"}},
      {"Stats", [](Agent& a, Session&, uint32_t, const json& p) -> R { return a.Stats(p); }, false, {"stats"}},
      // pause-container: PauseContainer, ResumeContainer and the status "paused".
      {"PauseContainer", [](Agent& a, Session& s, uint32_t st, const json& p) -> R { return a.PauseContainer(s, st, p, true), std::nullopt; },
       false, {"pause-container"}},
      {"ResumeContainer", [](Agent& a, Session& s, uint32_t st, const json& p) -> R { return a.PauseContainer(s, st, p, false), std::nullopt; },
       false, {}},
      {"UpdateContainer", [](Agent& a, Session&, uint32_t, const json& p) -> R { return a.UpdateContainer(p); }, false, {"update-container"}},
      // mount-9p: the type 9p of Mount.
      {"Mount", [](Agent& a, Session& s, uint32_t st, const json& p) -> R { return a.Mount(s, st, p), std::nullopt; }, false,
       {"mount", "mount-9p"}},
      {"Unmount", [](Agent& a, Session&, uint32_t, const json& p) -> R { return a.Unmount(p); }, false, {}},
      {"SetTime", [](Agent& a, Session&, uint32_t, const json& p) -> R { return a.SetTime(p); }, false, {"set-time"}},
      // oom: Wait's oomKilled.
      {"Wait", [](Agent& a, Session& s, uint32_t st, const json& p) -> R { return a.Wait(s, st, p); }, true, {"oom"}},
      {"ConfigureInterface", [](Agent& a, Session& s, uint32_t st, const json& p) -> R { return a.ConfigureInterface(s, st, p), std::nullopt; },
       false, {"network"}},
      {"RemoveInterface", [](Agent& a, Session&, uint32_t, const json& p) -> R { return a.net_->RemoveInterface(p); }, false, {}},
      {"ListInterfaces", [](Agent& a, Session&, uint32_t, const json& p) -> R { return a.net_->ListInterfaces(p); }, false, {}},
      {"SetNetworkConfig", [](Agent& a, Session&, uint32_t, const json& p) -> R { return a.net_->SetNetworkConfig(p); }, false, {}},
      // Options of CreateContainer (direct, overlay), not methods.
      {nullptr, nullptr, false, {"direct-stdio", "rootfs-overlay"}},
      {"FindDevice", [](Agent& a, Session& s, uint32_t st, const json& p) -> R { return a.FindDevice(s, st, p), std::nullopt; }, false,
       {"find-device"}},
      {"Shutdown",
       [](Agent& a, Session& s, uint32_t st, const json& p) -> R {
         ParseNoParams(p);
         a.StartShutdown(Pending{s.id(), st});
         return std::nullopt;
       },
       false, {}},
  };
  return kMethods;
}

const Agent::Method* Agent::FindMethod(const std::string& name) {
  for (const auto& m : Methods()) {
    if (m.name && name == m.name) return &m;
  }
  return nullptr;
}

json Agent::Hello(Session& s, const json& p) {
  std::string client = ParseHello(p, kProtocolVersion);
  Debug("session %s: hello from %s", s.name().c_str(), client.c_str());
  s.helloDone = true;
  std::vector<std::string> features;
  for (const auto& m : Methods()) features.insert(features.end(), m.features.begin(), m.features.end());
  return {{"version", kProtocolVersion},
          {"agent", std::string("vmpod-agent/") + kAgentVersion},
          {"pid", getpid()},
          {"pid1", opts_.pid1},
          {"cgroups", cgroups_.enabled()},
          {"controllers", std::vector<std::string>(cgroups_.controllers().begin(), cgroups_.controllers().end())},
          {"stateDir", opts_.stateDir},
          {"maxPayload", kMaxPayload},
          {"maxDataChunk", kMaxDataChunk},
          {"initialWindow", kInitialWindow},
          {"features", features}};
}

Container& Agent::FindContainer(const std::string& id) {
  auto it = containers_.find(id);
  if (it == containers_.end()) throw Error(Code::kNotFound, "container \"" + id + "\" does not exist");
  return *it->second;
}

Process& Agent::FindProcess(const ProcessRef& ref) {
  Container& c = FindContainer(ref.containerId);
  if (ref.execId.empty()) return *c.init;
  auto it = c.execs.find(ref.execId);
  if (it == c.execs.end()) throw Error(Code::kNotFound, "process \"" + ref.execId + "\" does not exist in container \"" + c.id + "\"");
  return *it->second;
}

// Runs `child` in a new process (with `cloneFlags` namespaces); returns its pid in our namespace.
template <typename Fn>
static pid_t Spawn(unsigned long cloneFlags, Fn child) {
  pid_t pid = static_cast<pid_t>(syscall(SYS_clone, cloneFlags | SIGCHLD, nullptr, nullptr, nullptr, nullptr));
  if (pid < 0) ThrowErrno("clone");
  if (pid == 0) {
    // Until its execve the child is a copy of the agent (memory, descriptors, environment) that
    // joins a container: no process of the container may ptrace it or read its /proc files.
    // The agent is not dumpable either, so this holds from the clone on; execve of a normal
    // program makes it dumpable again.
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0) _exit(127);
    child();
    _exit(127);
  }
  return pid;
}

// Makes the process's pipes (or pty) and returns the child's ends, which the agent closes once
// the child holds them.
ChildEnds Agent::SetupStdio(Process& p, const StdioRequest& stdio, const ProcessSpec& spec) {
  bool wantIn = stdio.in, wantOut = stdio.out, wantErr = stdio.err;
  ChildEnds ends;
  p.terminal = spec.terminal;
  if (spec.terminal) {
    // The child opens the pty inside the container and sends us the master (see OnSync).
    p.err.eof = true;  // a terminal has one output stream
    return ends;
  }
  int fds[2];
  if (wantIn) {
    if (pipe2(fds, O_CLOEXEC) < 0) ThrowErrno("pipe2");
    ends.in.reset(fds[0]);
    p.stdinFd.reset(fds[1]);
    p.in.fd = fds[1];
    SetNonBlocking(fds[1]);
  } else {
    p.in.closed = true;
  }
  for (auto [want, ours, child, out] : {std::tuple{wantOut, &p.stdoutFd, &ends.out, &p.out},
                                        std::tuple{wantErr, &p.stderrFd, &ends.err, &p.err}}) {
    if (!want) {
      out->eof = true;
      continue;
    }
    if (pipe2(fds, O_CLOEXEC) < 0) ThrowErrno("pipe2");
    // A larger pipe means fewer wakeups per megabyte (best effort: pipe-max-size may be lower).
    fcntl(fds[0], F_SETPIPE_SZ, 1 << 20);
    ours->reset(fds[0]);
    child->reset(fds[1]);
    out->fd = fds[0];
    SetNonBlocking(fds[0]);
  }
  return ends;
}

static ChildIo IoFor(const ChildEnds& ends, int sync) {
  ChildIo io;
  io.in = ends.in.get();
  io.out = ends.out.get();
  io.err = ends.err.get();
  io.sync = sync;
  return io;
}

void Agent::CreateContainer(Session& s, uint32_t stream, const json& p) {
  CreateRequest req = ParseCreateRequest(p);
  const std::string& id = req.id;
  const auto& bundle = req.bundle;
  if (containers_.count(id)) throw Error(Code::kAlreadyExists, "container \"" + id + "\" already exists");
  if (bundle && !IsDirectory(*bundle)) throw Error(Code::kNotFound, "bundle \"" + *bundle + "\" is not a directory", ENOENT);
  json config;
  if (req.config) {
    config = *req.config;
  } else {
    std::string text;
    if (!ReadFileIfExists(*bundle + "/config.json", &text, kMaxPayload)) {
      throw Error(Code::kNotFound, "bundle \"" + *bundle + "\" has no config.json", ENOENT);
    }
    try {
      config = ParseObject(text);
    } catch (const Error& e) {
      throw Error(Code::kInvalidArgument, *bundle + "/config.json: " + e.what());
    }
  }
  Spec spec = ParseSpec(config);
  auto direct = ParseDirect(req.direct, req.stdio, spec);

  auto c = std::make_unique<Container>();
  c->id = id;
  c->bundle = bundle.value_or("");
  c->createdAt = NowMs();
  RootfsPlan plan;
  std::string rootfs = req.rootfs.value_or(spec.rootPath);
  if (rootfs.empty()) BadField("rootfs", "no rootfs: set root.path in the config or rootfs in the request");
  c->dir = opts_.stateDir + "/containers/" + id;
  if (rootfs == "builtin") {
    if (!IsDirectory(opts_.builtinRootfs)) {
      throw Error(Code::kNotFound, "the builtin rootfs " + opts_.builtinRootfs + " is missing", ENOENT);
    }
    plan.overlayLower = opts_.builtinRootfs;
    plan.overlayUpper = c->dir + "/upper";
    plan.overlayWork = c->dir + "/work";
    plan.rootfs = c->dir + "/rootfs";
  } else {
    if (rootfs[0] != '/') {
      if (!bundle) BadField("root.path", "a relative root.path needs a bundle");
      rootfs = *bundle + "/" + rootfs;
    }
    plan.rootfs = NormalizePath(rootfs);
    if (!IsDirectory(plan.rootfs)) throw Error(Code::kNotFound, "rootfs \"" + plan.rootfs + "\" is not a directory", ENOENT);
    // A read-only tree (a rootfs image the host mounted) as the lower layer of a per-container
    // copy-on-write rootfs, as the builtin one is.
    if (req.overlay) {
      plan.overlayLower = plan.rootfs;
      plan.overlayUpper = c->dir + "/upper";
      plan.overlayWork = c->dir + "/work";
      plan.rootfs = c->dir + "/rootfs";
    }
  }
  c->rootfs = rootfs == "builtin" ? "builtin" : plan.overlayLower.empty() ? plan.rootfs : plan.overlayLower;
  plan.reroot = c->dir + "/reroot";
  plan.cgroup2 = cgroups_.enabled();
  if (spec.resources.any() && !cgroups_.enabled()) {
    throw Error(Code::kFailedPrecondition, "linux.resources: cgroups are disabled in this agent (--cgroup none)");
  }

  // Namespaces: mount, pid, uts and ipc are always private; network and cgroup as the spec says.
  unsigned long flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC;
  bool newCgroupNs = false;
  std::vector<Fd> nsFds;
  std::vector<JoinNamespace> join;
  Fd pidNs;
  for (const auto& ns : spec.namespaces) {
    static const std::map<std::string, int> kTypes = {{"pid", CLONE_NEWPID},   {"network", CLONE_NEWNET},
                                                      {"mount", CLONE_NEWNS},  {"ipc", CLONE_NEWIPC},
                                                      {"uts", CLONE_NEWUTS},   {"cgroup", CLONE_NEWCGROUP}};
    int type = kTypes.at(ns.type);
    if (ns.path.empty()) {
      if (type == CLONE_NEWNET) flags |= CLONE_NEWNET;
      if (type == CLONE_NEWCGROUP) newCgroupNs = cgroups_.enabled();
      continue;
    }
    Fd fd(open(ns.path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) ThrowErrno("open namespace " + ns.path);
    if (type == CLONE_NEWPID) {
      flags &= ~CLONE_NEWPID;
      pidNs = std::move(fd);
      continue;
    }
    flags &= ~static_cast<unsigned long>(type);
    join.push_back({type, fd.get()});
    nsFds.push_back(std::move(fd));
  }

  MkdirAll(opts_.stateDir + "/containers", 0700);
  RemoveTree(c->dir);
  MkdirAll(c->dir, 0700);
  MkdirAll(plan.reroot, 0700);
  if (!plan.overlayLower.empty()) {
    for (const auto& d : {plan.overlayUpper, plan.overlayWork, plan.rootfs}) MkdirAll(d, 0755);
  }
  auto init = std::make_unique<Process>();
  init->container = c.get();
  try {
    net_->AddContainerFiles(spec, c->dir);  // /etc/resolv.conf, hosts, hostname (once the host set them)
    if (cgroups_.enabled()) c->cgroup = cgroups_.Create(id, spec.resources);
    // A direct output gets no pipe: the child writes to its stream port.
    StdioRequest pipes = req.pipes;
    if (direct[0]) pipes.out = false;
    if (direct[1]) pipes.err = false;
    ChildEnds ends = SetupStdio(*init, pipes, spec.process);
    for (int i = 0; i < 2; i++) {
      if (direct[i]) (i == 0 ? ends.out : ends.err) = direct_.Claim(id, i, *direct[i]);
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) ThrowErrno("socketpair");
    init->sync.reset(sv[0]);
    Fd childSync(sv[1]);
    ChildIo io = IoFor(ends, childSync.get());
    if (pidNs.valid() && setns(pidNs.get(), CLONE_NEWPID) < 0) ThrowErrno("setns(pid)");
    std::string cgroup = c->cgroup;
    pid_t pid;
    try {
      pid = Spawn(flags, [&] { RunInit(io, cgroup, newCgroupNs, join, spec, plan); });
    } catch (...) {
      if (pidNs.valid()) setns(selfPidNs_.get(), CLONE_NEWPID);
      throw;
    }
    if (pidNs.valid()) setns(selfPidNs_.get(), CLONE_NEWPID);
    init->pid = pid;
  } catch (...) {
    direct_.Abandon(id);
    if (!c->cgroup.empty()) cgroups_.Remove(c->cgroup);
    RemoveTree(c->dir);
    throw;
  }
  init->startedAt = NowMs();
  if (!c->cgroup.empty()) init->oomBaseline = cgroups_.OomKills(c->cgroup);
  Process& ref = *init;
  c->init = std::move(init);
  Log("container %s: created, init pid %d", id.c_str(), ref.pid);
  containers_[id] = std::move(c);
  Spawned(ref, Pending{s.id(), stream});
}

// Registers a new child: its pid, its setup channel and the request waiting for it.
void Agent::Spawned(Process& p, Pending pending) {
  byPid_[p.pid] = &p;
  p.pending = pending;
  SetNonBlocking(p.sync.get());
  p.syncToken = loop_.Add(p.sync.get(), EPOLLIN, [this, &p](uint32_t) { OnSync(p); });
  UpdateIo(p);
}

// Reads the child's setup channel: "ok" (created, waiting for start), an error, or EOF (exec done).
void Agent::OnSync(Process& p) {
  char buf[4096];
  iovec iov{buf, sizeof buf};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = control;
  mh.msg_controllen = sizeof control;
  ssize_t n = recvmsg(p.sync.get(), &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  std::string msg = n > 0 ? std::string(buf, n) : "";
  for (cmsghdr* c = n > 0 ? CMSG_FIRSTHDR(&mh) : nullptr; c; c = CMSG_NXTHDR(&mh, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    int fd;
    memcpy(&fd, CMSG_DATA(c), sizeof fd);
    if (!p.terminal || p.ptyFd.valid()) {
      close(fd);
      continue;
    }
    // The pty master, opened by the child inside the container.
    p.ptyFd.reset(fd);
    SetNonBlocking(fd);
    p.out.fd = fd;
    p.in.fd = fd;
  }
  if (msg == "pty") return;  // an exec'd process: execve comes next
  if (msg == "ok" && p.state == Process::kCreating && p.execId.empty()) {
    p.state = Process::kCreated;
    FinishPending(p, nullptr);
    return;
  }
  loop_.Remove(p.syncToken);
  p.syncToken = 0;
  p.sync.reset();
  if (!msg.empty() && msg[0] == 'E') {
    size_t space = msg.find(' ');
    int err = std::atoi(msg.substr(1, space).c_str());
    std::string text = space == std::string::npos ? msg : msg.substr(space + 1);
    // The child exits 127 right after this; OnExit answers once it is reaped, so that by the time
    // the host sees the error, a failed container or exec is already gone.
    p.failure.emplace(err == ENOENT ? Code::kNotFound : Code::kInternal, p.label() + ": " + text, err);
    return;
  }
  // EOF: execve succeeded (the channel was close-on-exec) or the child died (OnExit reports it).
  if (p.state != Process::kExited && !p.failure && (p.state == Process::kCreated || !p.execId.empty())) {
    p.state = Process::kRunning;
    FinishPending(p, nullptr);
  }
}

void Agent::FinishPending(Process& p, const Error* error) {
  Pending pending = p.pending;
  p.pending = Pending{};
  if (!pending) return;
  if (error) {
    ReplyError(pending, *error);
    return;
  }
  Reply(pending, {{"pid", p.pid}});
}

void Agent::StartContainer(Session& s, uint32_t stream, const json& p) {
  Container& c = FindContainer(ParseStartRequest(p));
  Process& init = *c.init;
  if (init.state != Process::kCreated || init.pending) {
    throw Error(Code::kFailedPrecondition, "container \"" + c.id + "\" is " + StateName(init.state) + ", not created");
  }
  Pending pending{s.id(), stream};
  init.pending = pending;
  std::string id = c.id;
  // The container may write only once the start markers of its direct streams are out.
  auto current = [this, id, pending]() -> Process* {
    auto it = containers_.find(id);
    if (it == containers_.end()) return nullptr;
    Process& p = *it->second->init;
    bool same = p.pending.session == pending.session && p.pending.stream == pending.stream;
    return same && p.state == Process::kCreated ? &p : nullptr;
  };
  direct_.WhenStarted(
      id,
      [this, current, pending] {
        Process* p = current();
        if (!p) return;
        if (send(p->sync.get(), "start", 5, MSG_NOSIGNAL) != 5) {
          p->pending = Pending{};
          ReplyError(pending, Error(Code::kInternal, std::string("signal the container's init to start: ") + strerror(errno), errno));
          return;
        }
        p->startedAt = NowMs();
      },
      [this, current, pending](const Error& e) {
        if (Process* p = current()) {
          p->pending = Pending{};
          ReplyError(pending, e);
        }
      });
}

void Agent::Exec(Session& s, uint32_t stream, const json& p) {
  ExecRequest req = ParseExecRequest(p);
  Container& c = FindContainer(req.containerId);
  const std::string& execId = req.execId;
  if (c.execs.count(execId)) throw Error(Code::kAlreadyExists, "process \"" + execId + "\" already exists in \"" + c.id + "\"");
  if (c.init->state != Process::kRunning || c.deleting) {
    throw Error(Code::kFailedPrecondition, "container \"" + c.id + "\" is " + StateName(c.init->state) + ", not running");
  }
  // As runc: a process started in a frozen cgroup would freeze half-way through its setup.
  if (c.paused) throw Error(Code::kFailedPrecondition, "container \"" + c.id + "\" is paused: resume it to exec into it");
  const ProcessSpec& spec = req.process;
  auto proc = std::make_unique<Process>();
  proc->container = &c;
  proc->execId = execId;
  ChildEnds ends = SetupStdio(*proc, req.pipes, spec);

  std::string nsDir = "/proc/" + std::to_string(c.init->pid) + "/ns/";
  std::vector<Fd> nsFds;
  std::vector<JoinNamespace> join;
  for (const auto& [name, type] : std::vector<std::pair<std::string, int>>{
           {"ipc", CLONE_NEWIPC}, {"uts", CLONE_NEWUTS}, {"net", CLONE_NEWNET}, {"cgroup", CLONE_NEWCGROUP}, {"mnt", CLONE_NEWNS}}) {
    Fd fd(open((nsDir + name).c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) ThrowErrno("open " + nsDir + name);
    join.push_back({type, fd.get()});
    nsFds.push_back(std::move(fd));
  }
  Fd pidNs(open((nsDir + "pid").c_str(), O_RDONLY | O_CLOEXEC));
  if (!pidNs.valid()) ThrowErrno("open " + nsDir + "pid");
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) ThrowErrno("socketpair");
  proc->sync.reset(sv[0]);
  Fd childSync(sv[1]);
  ChildIo io = IoFor(ends, childSync.get());
  // setns(CLONE_NEWPID) only changes where our next child is born; switch back right after.
  if (setns(pidNs.get(), CLONE_NEWPID) < 0) ThrowErrno("setns(pid)");
  pid_t pid;
  try {
    pid = Spawn(0, [&] { RunExec(io, c.cgroup, join, spec); });
  } catch (...) {
    setns(selfPidNs_.get(), CLONE_NEWPID);
    throw;
  }
  if (setns(selfPidNs_.get(), CLONE_NEWPID) < 0) Log("cannot return to the agent's pid namespace: %s", strerror(errno));
  proc->pid = pid;
  proc->startedAt = NowMs();
  if (!c.cgroup.empty()) proc->oomBaseline = cgroups_.OomKills(c.cgroup);
  Process& ref = *proc;
  c.execs[execId] = std::move(proc);
  Debug("exec %s: pid %d", ref.label().c_str(), pid);
  Spawned(ref, Pending{s.id(), stream});
}

std::optional<json> Agent::OpenStdio(Session& s, uint32_t stream, const json& p) {
  OpenStdioRequest req = ParseOpenStdioRequest(p);
  Process& proc = FindProcess(req.process);
  std::string which = req.fd == 0 ? "stdin" : req.fd == 1 ? "stdout" : "stderr";
  if (req.fd == 0) {
    if (proc.in.closed || proc.in.fd < 0 || proc.in.closing) {
      throw Error(Code::kFailedPrecondition, proc.label() + ": stdin is closed or was not requested (stdio.stdin)");
    }
    if (proc.in.session && FindSession(proc.in.session)) {
      throw Error(Code::kBusy, proc.label() + ": stdin is attached to another session");
    }
    proc.in.session = s.id();
    proc.in.stream = stream;
    // The peer starts with a full window, minus what is still queued from an earlier attachment.
    proc.in.credit = kInitialWindow - std::min<uint32_t>(kInitialWindow, proc.in.queue.size());
    proc.in.ungranted = 0;
    return json::object();
  }
  if (which == "stderr" && proc.terminal) {
    throw Error(Code::kInvalidArgument, proc.label() + ": a terminal process has no separate stderr");
  }
  if (auto port = proc.execId.empty() ? direct_.PortOf(proc.container->id, which == "stdout" ? 0 : 1) : std::nullopt) {
    throw Error(Code::kFailedPrecondition, proc.label() + ": " + which + " goes straight to stream port " + *port +
                                               ": read it from that port's host end");
  }
  Output& o = which == "stdout" ? proc.out : proc.err;
  if (o.fd < 0 && !o.eof) throw Error(Code::kFailedPrecondition, proc.label() + ": " + which + " was not requested");
  if (o.session && FindSession(o.session)) {
    throw Error(Code::kBusy, proc.label() + ": " + which + " is attached to another session");
  }
  s.SendResult(stream, json::object());
  if (o.eof) {
    // Everything was delivered already (or the stream was not requested): end it right away.
    s.SendFrame(stream, kData, kFlagClose, "");
    return std::nullopt;
  }
  o.session = s.id();
  o.stream = stream;
  o.credit = kInitialWindow;
  UpdateIo(proc);
  return std::nullopt;  // answered above, before the first data frame
}

json Agent::SignalProcess(const json& p) {
  SignalRequest req = ParseSignalRequest(p);
  Process& proc = FindProcess(req.process);
  int sig = req.signal;
  bool all = req.all;
  if (proc.state == Process::kExited || proc.pid <= 0) {
    throw Error(Code::kFailedPrecondition, proc.label() + " is not running");
  }
  if (all && !proc.container->cgroup.empty()) {
    cgroups_.Signal(proc.container->cgroup, sig);
  } else if (kill(proc.pid, sig) < 0) {
    ThrowErrno("kill " + std::to_string(proc.pid));
  }
  return json::object();
}

std::optional<json> Agent::Wait(Session& s, uint32_t stream, const json& p) {
  Process& proc = FindProcess(ParseWaitRequest(p));
  if (proc.state == Process::kExited) return ExitJson(proc);
  proc.waiters.push_back(Pending{s.id(), stream});
  return std::nullopt;
}

json Agent::ResizeTty(const json& p) {
  ResizeRequest req = ParseResizeRequest(p);
  Process& proc = FindProcess(req.process);
  winsize ws{};
  ws.ws_row = req.rows;
  ws.ws_col = req.cols;
  if (!proc.terminal || !proc.ptyFd.valid()) throw Error(Code::kFailedPrecondition, proc.label() + " has no terminal");
  if (ioctl(proc.ptyFd.get(), TIOCSWINSZ, &ws) < 0) ThrowErrno("ioctl(TIOCSWINSZ)");
  return json::object();
}

json Agent::Stats(const json& p) {
  Container& c = FindContainer(ParseStatsRequest(p));
  if (c.cgroup.empty()) throw Error(Code::kFailedPrecondition, "container \"" + c.id + "\" has no cgroup (cgroups are disabled)");
  json stats = cgroups_.Stats(c.cgroup);
  stats["containerId"] = c.id;
  stats["timestamp"] = NowMs();
  return stats;
}

void Agent::PauseContainer(Session& s, uint32_t stream, const json& p, bool pause) {
  PauseRequest req = ParsePauseRequest(p);
  Container& c = FindContainer(req.id);
  const char* verb = pause ? "pause" : "resume";
  if (c.cgroup.empty()) {
    throw Error(Code::kFailedPrecondition, "container \"" + c.id + "\" has no cgroup (cgroups are disabled): cannot " + verb + " it");
  }
  if (c.deleting || c.init->state != Process::kRunning) {
    throw Error(Code::kFailedPrecondition, "container \"" + c.id + "\" is " + (c.deleting ? "being deleted" : c.status()) + ", not " +
                                               (pause ? "running" : "paused"));
  }
  if (c.freezing) throw Error(Code::kFailedPrecondition, "container \"" + c.id + "\" is being paused or resumed already");
  if (pause && c.paused) throw Error(Code::kFailedPrecondition, "container \"" + c.id + "\" is paused already");
  if (!pause && !c.paused) throw Error(Code::kFailedPrecondition, "container \"" + c.id + "\" is running, not paused");
  // An exec between its clone and its execve would join the frozen cgroup and stop half-way,
  // its Exec unanswered until the resume.
  for (auto& [eid, e] : c.execs) {
    if (pause && e->state == Process::kCreating) {
      throw Error(Code::kFailedPrecondition, "container \"" + c.id + "\": exec \"" + eid + "\" is starting; pause it once the exec has started");
    }
  }
  if (!PathExists(c.cgroup + "/cgroup.freeze")) {
    throw Error(Code::kFailedPrecondition, "this kernel's cgroups cannot freeze (no cgroup.freeze): cannot " + std::string(verb) + " \"" + c.id + "\"");
  }
  cgroups_.Freeze(c.cgroup, pause);
  // Paused from the first write on: no exec may start in a cgroup that is freezing.
  c.paused = true;
  c.freezing = true;
  AwaitFreeze(c.id, pause, Pending{s.id(), stream}, MonotonicMs() + req.timeoutMs, req.timeoutMs);
}

// Looks at cgroup.events every 10 ms until "frozen" is what was asked for, or the deadline. A
// pause that does not complete in time is undone (thawed), as runc does.
void Agent::AwaitFreeze(std::string id, bool pause, Pending pending, int64_t deadline, int64_t timeoutMs) {
  auto it = containers_.find(id);
  if (it == containers_.end()) {
    ReplyError(pending, Error(Code::kNotFound, "container \"" + id + "\" was deleted while being " + (pause ? "paused" : "resumed")));
    return;
  }
  Container& c = *it->second;
  auto finish = [&](bool paused) {
    c.paused = paused;
    c.freezing = false;
  };
  try {
    if (c.init->state == Process::kExited || c.deleting) {
      finish(false);
      throw Error(Code::kFailedPrecondition, "container \"" + id + "\" exited while being " + (pause ? "paused" : "resumed"));
    }
    if (cgroups_.Frozen(c.cgroup) == pause) {
      finish(pause);
      Log("container %s: %s", id.c_str(), pause ? "paused" : "resumed");
      Reply(pending, json::object());
      return;
    }
    if (MonotonicMs() >= deadline) {
      if (pause) cgroups_.Freeze(c.cgroup, false);
      finish(!pause);
      throw Error(Code::kInternal,
                  "container \"" + id + "\" did not " + (pause ? "freeze" : "thaw") + " within " + std::to_string(timeoutMs) + " ms" +
                      (pause ? " (a process in an uninterruptible sleep?); it was thawed again" : ""),
                  ETIMEDOUT);
    }
  } catch (const Error& e) {
    if (c.freezing) finish(c.paused);
    c.freezing = false;
    ReplyError(pending, e);
    return;
  }
  loop_.AddTimer(10, [this, id, pause, pending, deadline, timeoutMs] { AwaitFreeze(id, pause, pending, deadline, timeoutMs); });
}

json Agent::UpdateContainer(const json& p) {
  UpdateRequest req = ParseUpdateRequest(p);
  Container& c = FindContainer(req.id);
  if (c.cgroup.empty()) throw Error(Code::kFailedPrecondition, "container \"" + c.id + "\" has no cgroup (cgroups are disabled)");
  if (c.deleting || c.init->state == Process::kExited) {
    throw Error(Code::kFailedPrecondition, "container \"" + c.id + "\" is " + (c.deleting ? "being deleted" : "stopped") + ": nothing to update");
  }
  cgroups_.Update(c.cgroup, req.resources);
  Log("container %s: resources updated", c.id.c_str());
  return json::object();
}

std::optional<json> Agent::DeleteContainer(Session& s, uint32_t stream, const json& p) {
  DeleteRequest req = ParseDeleteRequest(p);
  Container& c = FindContainer(req.id);
  bool force = req.force;
  bool live = false;
  for (Process* proc : AllProcesses()) {
    if (proc->container == &c && proc->state != Process::kExited) live = true;
  }
  if (live && !force && c.init->state != Process::kCreated) {
    throw Error(Code::kFailedPrecondition, "container \"" + c.id + "\" is " + c.status() + "; kill it first or delete with force");
  }
  c.deleting = true;
  c.deleteWaiters.push_back(Pending{s.id(), stream});
  if (live) {
    if (!c.cgroup.empty()) cgroups_.Signal(c.cgroup, SIGKILL);
    for (Process* proc : AllProcesses()) {
      if (proc->container == &c && proc->state != Process::kExited && proc->pid > 0) kill(proc->pid, SIGKILL);
    }
    return std::nullopt;  // FinishDelete answers once every process is reaped
  }
  FinishDelete(c);
  return std::nullopt;
}

json Agent::ListContainers() {
  json list = json::array();
  for (auto& [id, c] : containers_) {
    json execs = json::array();
    for (auto& [eid, e] : c->execs) {
      json ej = {{"execId", eid}, {"pid", e->pid}, {"status", StateName(e->state)}, {"terminal", e->terminal}};
      if (e->state == Process::kExited) ej["exit"] = ExitJson(*e);
      execs.push_back(ej);
    }
    json cj = {{"id", id},           {"status", c->status()}, {"pid", c->init->pid},   {"bundle", c->bundle},
               {"rootfs", c->rootfs}, {"createdAt", c->createdAt}, {"terminal", c->init->terminal}, {"execs", execs}};
    if (c->init->state == Process::kExited) cj["exit"] = ExitJson(*c->init);
    list.push_back(cj);
  }
  return {{"containers", list}};
}

void Agent::Mount(Session& s, uint32_t stream, const json& p) {
  GuestMount m = ParseGuestMount(p, opts_.stateDir);
  if (m.type == "virtiofs") {
    auto share = opts_.shares.find(m.source);
    if (share != opts_.shares.end()) m.shareDir = share->second;
  }
  for (const auto& t : mounts_) {
    if (t == m.target) throw Error(Code::kAlreadyExists, "something is already mounted on " + m.target + " by the agent");
  }
  TryMount(m, Pending{s.id(), stream}, MonotonicMs() + m.timeoutMs);
}

// Block devices may appear a little after the host plugged them: look again every 50 ms.
void Agent::TryMount(GuestMount m, Pending pending, int64_t deadline) {
  std::string device;
  bool block = !m.devicePci.empty() || !m.deviceSerial.empty() || !m.devicePath.empty();
  if (block) {
    device = FindBlockDevice(m, opts_.sysRoot);
    if (device.empty()) {
      if (MonotonicMs() >= deadline) {
        ReplyError(pending, Error(Code::kNotFound, "no block device with " +
                                                       (!m.devicePci.empty() ? "PCI address " + m.devicePci
                                                        : !m.deviceSerial.empty() ? "serial " + m.deviceSerial
                                                                                  : "path " + m.devicePath) +
                                                       " appeared in time"));
        return;
      }
      loop_.AddTimer(50, [this, m, pending, deadline] { TryMount(m, pending, deadline); });
      return;
    }
  }
  try {
    DoGuestMount(m, device);
    mounts_.push_back(m.target);
    if (!m.shareDir.empty()) shareBinds_.insert(m.target);
    Log("mounted %s (%s%s%s) on %s", m.type == "virtiofs" || m.type == "9p" ? m.source.c_str() : device.empty() ? m.type.c_str() : device.c_str(),
        m.type.c_str(), m.shareDir.empty() ? "" : ": a bind of ", m.shareDir.c_str(), m.target.c_str());
    json result = {{"target", m.target}};
    if (!device.empty()) result["device"] = device;
    Reply(pending, result);
  } catch (const Error& e) {
    ReplyError(pending, e);
  }
}

void Agent::FindDevice(Session& s, uint32_t stream, const json& p) {
  FindDeviceRequest req = ParseFindDeviceRequest(p);
  TryFindDevice(req.pciPath, req.netdev, Pending{s.id(), stream}, MonotonicMs() + req.timeoutMs);
}

// A device plugged by the host appears after the guest's PCI hotplug handling, its network
// interface after the driver probed it: look again every 50 ms until the deadline.
void Agent::TryFindDevice(std::string pciPath, bool wantNetdev, Pending pending, int64_t deadline) {
  auto device = FindPciDevice(pciPath, opts_.sysRoot);
  if (!device || (wantNetdev && device->netdevs.empty())) {
    if (MonotonicMs() >= deadline) {
      ReplyError(pending, Error(Code::kNotFound, "no " + std::string(device ? "network interface on the device" : "device") +
                                                     " at PCI path " + pciPath + " appeared in time"));
      return;
    }
    loop_.AddTimer(50, [this, pciPath, wantNetdev, pending, deadline] { TryFindDevice(pciPath, wantNetdev, pending, deadline); });
    return;
  }
  json result = {{"pciAddress", device->address}, {"sysfsPath", device->sysfsPath}, {"netdevs", device->netdevs}};
  if (!device->driver.empty()) result["driver"] = device->driver;
  Reply(pending, result);
}

json Agent::Unmount(const json& p) {
  std::string target = ParseUnmountRequest(p);
  auto it = std::find(mounts_.begin(), mounts_.end(), target);
  if (it == mounts_.end()) throw Error(Code::kNotFound, "the agent mounted nothing on " + target);
  // A --share bind holds the host's binds inside it as submounts, which would keep it busy
  // (virtiofs's announced submounts expire with it): it goes with them.
  bool share = shareBinds_.count(target) > 0;
  if (umount2(target.c_str(), share ? MNT_DETACH : 0) < 0) {
    int err = errno;
    throw Error(err == EBUSY ? Code::kBusy : Code::kInternal, "umount " + target + ": " + strerror(err), err);
  }
  mounts_.erase(it);
  shareBinds_.erase(target);
  rmdir(target.c_str());
  return json::object();
}

void Agent::ConfigureInterface(Session& s, uint32_t stream, const json& p) {
  Pending pending{s.id(), stream};
  net_->ConfigureInterface(
      p, [this, pending](const json& result) { Reply(pending, result); },
      [this, pending](const Error& error) { ReplyError(pending, error); });
}

json Agent::SetTime(const json& p) {
  SetTimeRequest req = ParseSetTimeRequest(p);
  int64_t sec = req.sec, nsec = req.nsec;
  timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  double offsetNs = double(sec - now.tv_sec) * 1e9 + double(nsec - now.tv_nsec);
  bool applied = false;
  if (opts_.allowSetTime) {
    timespec ts{static_cast<time_t>(sec), static_cast<long>(nsec)};
    if (clock_settime(CLOCK_REALTIME, &ts) < 0) ThrowErrno("clock_settime");
    applied = true;
  }
  return {{"applied", applied}, {"offsetNs", offsetNs}};
}

// --- Processes and stdio ----------------------------------------------------------------------

void Agent::OnSigchld() {
  signalfd_siginfo info;
  while (read(signalFd_.get(), &info, sizeof info) == sizeof info) {
  }
  for (;;) {
    int status;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid <= 0) break;
    auto it = byPid_.find(pid);
    if (it == byPid_.end()) {
      Debug("reaped pid %d", pid);  // an orphan, when we are PID 1
      continue;
    }
    Process* p = it->second;
    byPid_.erase(it);
    OnExit(*p, status);
  }
}

void Agent::OnExit(Process& p, int status) {
  if (p.syncToken) OnSync(p);  // an error message may still be waiting in the channel
  Pending pending = p.pending;  // a Create, Start or Exec that never got to execve
  p.pending = Pending{};
  bool creating = p.execId.empty() && p.state == Process::kCreating;   // setup failed
  bool execFailed = !p.execId.empty() && p.state == Process::kCreating;  // an exec never ran
  bool neverRan = creating || execFailed || (pending && p.state == Process::kCreated);
  p.state = Process::kExited;
  if (WIFEXITED(status)) {
    p.exitCode = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    p.exitSignal = WTERMSIG(status);
    p.exitCode = 128 + p.exitSignal;
  }
  // The init of a new pid namespace is reaped only after every process of the namespace has
  // gone, so nothing of the container can still write: end its direct streams.
  if (p.execId.empty()) direct_.End(p.container->id);
  if (!p.container->cgroup.empty()) p.oomKilled = cgroups_.OomKills(p.container->cgroup) > p.oomBaseline;
  Log("%s: pid %d exited (code %d, signal %d%s)", p.label().c_str(), p.pid, p.exitCode, p.exitSignal,
      p.oomKilled ? ", OOM kill in its cgroup" : "");
  std::optional<Error> failure;
  if (neverRan) {
    failure = p.failure ? *p.failure
                        : Error(Code::kInternal, p.label() + ": the process exited (code " + std::to_string(p.exitCode) +
                                                     ") before it was started");
    if (creating || execFailed) p.failed = true;
    if (creating) p.container->deleting = true;  // a container that was never created is removed
  }
  if (p.syncToken) {
    loop_.Remove(p.syncToken);
    p.syncToken = 0;
    p.sync.reset();
  }
  // No one will read stdin any more.
  p.in.queue.clear();
  p.in.closed = true;
  if (p.stdinFd.valid()) {
    p.stdinFd.reset();
    p.in.fd = -1;
  }
  UpdateIo(p);
  json exit = ExitJson(p);
  for (const auto& w : p.waiters) Reply(w, exit);
  p.waiters.clear();
  Container& c = *p.container;
  if (!p.execId.empty() && p.failed && !c.deleting) {
    std::string execId = p.execId;
    ReleaseProcess(p);
    c.execs.erase(execId);  // `p` is gone from here on
  } else if (c.deleting) {
    bool live = false;
    for (Process* q : AllProcesses()) {
      if (q->container == &c && q->state != Process::kExited) live = true;
    }
    if (!live) FinishDelete(c);  // `p` and `c` are gone from here on
  }
  if (failure && pending) ReplyError(pending, *failure);
}

void Agent::ReleaseProcess(Process& p) {
  for (Output* o : {&p.out, &p.err}) {
    if (o->session && !o->eof) {
      if (Session* s = FindSession(o->session)) s->SendFrame(o->stream, kData, kFlagClose, "");
    }
    o->session = 0;
    o->eof = true;
  }
  for (auto& [fd, reg] : p.io) loop_.Remove(reg.first);
  p.io.clear();
  if (p.syncToken) loop_.Remove(p.syncToken);
  p.syncToken = 0;
  if (p.pid > 0) byPid_.erase(p.pid);
}

void Agent::FinishDelete(Container& c) {
  std::string id = c.id;
  direct_.Forget(id);
  for (auto& [eid, e] : c.execs) ReleaseProcess(*e);
  ReleaseProcess(*c.init);
  auto waiters = c.deleteWaiters;
  std::string cgroup = c.cgroup;
  RemoveTree(c.dir);
  containers_.erase(id);
  Log("container %s: deleted", id.c_str());
  // Zombie children of the pid namespace may keep the cgroup busy for a moment.
  // The retry holds itself weakly (a strong self-reference is a cycle: LeakSanitizer found one
  // such closure leaked per deleted container); the pending timer holds it strongly.
  auto removeCgroup = std::make_shared<std::function<void(int)>>();
  std::weak_ptr<std::function<void(int)>> self = removeCgroup;
  *removeCgroup = [this, cgroup, waiters, self, id](int tries) {
    if (cgroup.empty() || cgroups_.Remove(cgroup) || tries >= 100) {
      if (tries >= 100) Log("container %s: cgroup %s is still busy; left behind", id.c_str(), cgroup.c_str());
      for (const auto& w : waiters) Reply(w, json::object());
      return;
    }
    loop_.AddTimer(20, [next = self.lock(), tries] { (*next)(tries + 1); });
  };
  (*removeCgroup)(0);
}

void Agent::UpdateIo(Process& p) {
  auto wantOut = [&](const Output& o) {
    if (o.fd < 0 || o.eof || !o.session || o.credit == 0) return false;
    Session* s = FindSession(o.session);
    return s && !s->congested();
  };
  bool wantIn = p.in.fd >= 0 && !p.in.closed && (!p.in.queue.empty() || p.in.closing);
  std::map<int, uint32_t> want;
  if (p.out.fd >= 0 && !p.out.eof) want[p.out.fd] |= wantOut(p.out) ? uint32_t(EPOLLIN) : 0u;
  if (p.err.fd >= 0 && !p.err.eof) want[p.err.fd] |= wantOut(p.err) ? uint32_t(EPOLLIN) : 0u;
  if (p.in.fd >= 0 && !p.in.closed) want[p.in.fd] |= wantIn ? uint32_t(EPOLLOUT) : 0u;
  // Registered fds nobody wants any more (or that were closed) leave the loop: epoll reports
  // EPOLLHUP even with no events asked, which would spin.
  for (auto it = p.io.begin(); it != p.io.end();) {
    auto w = want.find(it->first);
    if (w == want.end() || w->second == 0) {
      loop_.Remove(it->second.first);
      it = p.io.erase(it);
    } else {
      ++it;
    }
  }
  for (auto [fd, events] : want) {
    if (!events) continue;
    auto it = p.io.find(fd);
    if (it == p.io.end()) {
      uint64_t token = loop_.Add(fd, events, [this, &p, fd](uint32_t ev) { OnIo(p, fd, ev); });
      p.io[fd] = {token, events};
    } else if (it->second.second != events) {
      loop_.Modify(it->second.first, events);
      it->second.second = events;
    }
  }
}

void Agent::OnIo(Process& p, int fd, uint32_t events) {
  bool hup = events & (EPOLLHUP | EPOLLERR);
  if (fd == p.out.fd && (events & EPOLLIN || hup)) PumpOutput(p, p.out);
  if (fd == p.err.fd && (events & EPOLLIN || hup)) PumpOutput(p, p.err);
  if (fd == p.in.fd && (events & EPOLLOUT || hup)) PumpInput(p);
  UpdateIo(p);
}

void Agent::PumpOutput(Process& p, Output& o) {
  Session* s = FindSession(o.session);
  if (!s || o.eof) return;
  // A few chunks per wakeup keep the loop fair between streams.
  for (int round = 0; round < 4 && o.credit > 0 && !s->congested(); round++) {
    uint32_t max = std::min<uint32_t>(o.credit, kMaxSplice);
    ssize_t n = p.terminal ? s->SendDataFromFd(o.stream, o.fd, max) : s->SpliceDataFromFd(o.stream, o.fd, max);
    if (n > 0) {
      o.credit -= static_cast<uint32_t>(n);
      continue;
    }
    if (n < 0 && errno == EAGAIN) break;
    // EOF (or EIO from a pty master whose slave side is all closed): the stream is complete.
    o.eof = true;
    s->SendFrame(o.stream, kData, kFlagClose, "");
    o.session = 0;
    if (&o == &p.out && p.stdoutFd.valid()) {
      p.stdoutFd.reset();
      o.fd = -1;
    } else if (&o == &p.err && p.stderrFd.valid()) {
      p.stderrFd.reset();
      o.fd = -1;
    }
    break;
  }
  if (!s->closed()) s->Flush();
}

void Agent::PumpInput(Process& p) {
  Input& in = p.in;
  while (!in.queue.empty()) {
    ssize_t n = write(in.fd, in.queue.data(), in.queue.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break;
      // EPIPE/EIO: the reader is gone; drop what is queued.
      in.ungranted += static_cast<uint32_t>(in.queue.size());
      in.queue.clear();
      in.closed = true;
      break;
    }
    in.queue.erase(0, n);
    in.ungranted += static_cast<uint32_t>(n);
  }
  if (in.queue.empty() && in.closing && !in.closed) {
    if (p.terminal) {
      // A terminal has no half-close: send the EOF character (^D) instead.
      char eof = 4;
      if (write(in.fd, &eof, 1) < 0) Debug("%s: writing ^D: %s", p.label().c_str(), strerror(errno));
    } else {
      p.stdinFd.reset();
      in.fd = -1;
    }
    in.closed = true;
  }
  if (in.closed && in.session) {
    // Tell the peer that the process no longer reads stdin; it may stop sending.
    if (Session* s = FindSession(in.session)) s->SendFrame(in.stream, kData, kFlagClose, "");
    in.session = 0;
  }
  // Grant the written bytes back in batches.
  if (in.session && in.ungranted > 0 && (in.ungranted >= kInitialWindow / 4 || in.queue.empty())) {
    if (Session* s = FindSession(in.session)) {
      char buf[4];
      PutU32(buf, in.ungranted);
      s->SendFrame(in.stream, kData, kFlagWindow, std::string_view(buf, 4));
      in.credit += in.ungranted;
    }
    in.ungranted = 0;
  }
}

void Agent::OnData(Session& s, const Frame& f) {
  Process* target = nullptr;
  enum { kNone, kIn, kOut, kErr } which = kNone;
  for (Process* p : AllProcesses()) {
    if (p->in.session == s.id() && p->in.stream == f.stream) target = p, which = kIn;
    if (p->out.session == s.id() && p->out.stream == f.stream) target = p, which = kOut;
    if (p->err.session == s.id() && p->err.stream == f.stream) target = p, which = kErr;
  }
  if (!target) {
    // Frames for a stream that just ended (or was never a stdio stream) are dropped; frames for a
    // stream id never used are a protocol error.
    if (f.stream > s.lastRequest) s.Fail("data frame for unknown stream " + std::to_string(f.stream));
    return;
  }
  if (which == kOut || which == kErr) {
    Output& o = which == kOut ? target->out : target->err;
    if (f.flags & kFlagClose) {  // the peer detaches
      o.session = 0;
      o.credit = 0;
    } else if (f.flags & kFlagWindow) {
      WindowUpdate w = GrowWindow(o.credit, f.payload);
      if (!w.error.empty()) return s.Fail(w.error);
      o.credit = w.credit;
    } else {
      return s.Fail("stdio data sent on an output stream");
    }
    UpdateIo(*target);
    return;
  }
  Input& in = target->in;
  if (f.flags & kFlagWindow) return s.Fail("window update on stdin");
  if (f.payload.size() > in.credit) {
    return s.Fail("stdin data beyond the granted window (" + std::to_string(f.payload.size()) + " > " +
                  std::to_string(in.credit) + ")");
  }
  in.credit -= static_cast<uint32_t>(f.payload.size());
  if (in.closed) {
    in.ungranted += static_cast<uint32_t>(f.payload.size());  // discarded, but keep the peer moving
  } else {
    in.queue.append(f.payload);
  }
  if (f.flags & kFlagClose) {
    in.closing = true;
  }
  PumpInput(*target);
  if (f.flags & kFlagClose) in.session = 0;
  UpdateIo(*target);
}

}  // namespace agent
