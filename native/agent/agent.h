// The agent: sessions (one per connected host channel), containers and their processes, and the
// request handlers of docs/agent-protocol.md. Everything runs on one epoll loop, single-threaded.
#pragma once
#include <sys/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "agent/cgroup.h"
#include "agent/direct_stream.h"
#include "agent/frame.h"
#include "agent/json.h"
#include "agent/loop.h"
#include "agent/mounts.h"
#include "agent/net.h"
#include "agent/requests.h"
#include "agent/spec.h"

namespace agent {

constexpr int kProtocolVersion = 1;
// virtio_console's port write() takes at most this many bytes per call.
constexpr uint32_t kVirtioMaxWrite = 32 * 1024;
constexpr const char* kAgentVersion = "0.1.0";

struct Options {
  std::vector<std::string> listen;  // "unix:/path" or "vsock:PORT"
  bool virtioSerial = false;        // serve the vmpod.agent.* virtio-serial ports
  std::string portPrefix = "vmpod.agent.";
  std::string stateDir = "/run/vmpod";
  std::string builtinRootfs = "/usr/share/vmpod/rootfs";
  std::string cgroup = "auto";  // auto | none | an absolute cgroup2 directory
  bool pid1 = false;
  bool allowSetTime = false;
  bool manageNetwork = false;  // network methods allowed (always as PID 1)
  std::string sysRoot = "/sys";  // where devices are looked up (tests point it at a fake tree)
  // On a host (tests): virtio-fs tag -> host directory. A virtiofs Mount of one of these tags is
  // a recursive bind of the directory (--share TAG=DIR).
  std::map<std::string, std::string> shares;
};

class Agent;

// A reference to a request awaiting an asynchronous answer; dropped if its session goes away.
struct Pending {
  uint64_t session = 0;
  uint32_t stream = 0;
  explicit operator bool() const { return session != 0; }
};

// One host connection: frames in, frames out, bounded output queue.
class Session {
 public:
  Session(Agent& agent, uint64_t id, int fd, bool ownsFd, std::string name);
  ~Session();
  uint64_t id() const { return id_; }
  bool closed() const { return closed_; }
  bool failed() const { return failed_; }  // closed after a protocol error
  const std::string& name() const { return name_; }

  void Start();  // registers with the loop
  // Feeds bytes read from the channel before the session existed.
  void Receive(const char* data, size_t len);
  // virtio-serial ports: the session survives host hang-ups (HostGone pauses it, Resume goes on
  // once the port is connected again); a new host is recognised by its Hello on stream 1.
  void setPort() { port_ = true; }
  bool paused() const { return paused_; }
  void Resume();
  void SendFrame(uint32_t stream, uint8_t type, uint8_t flags, std::string_view payload);
  void SendResult(uint32_t stream, const json& result);
  void SendError(uint32_t stream, const Error& error);
  // Reads up to `max` bytes from `fd` straight into a data frame on `stream`. Returns read()'s result.
  ssize_t SendDataFromFd(uint32_t stream, int fd, size_t max);
  // The same from a pipe, without copying through user space: a header, then splice(2) of the
  // bytes the pipe holds (virtio_console takes a whole pipe's pages in one virtqueue buffer).
  // Falls back to SendDataFromFd when the queue is not empty or the pipe is empty.
  ssize_t SpliceDataFromFd(uint32_t stream, int fd, size_t max);
  void Flush();
  // No more stdio may be queued: too much is waiting, or a splice is in flight (its bytes are
  // still in the source pipe, so nothing else may read from a pipe until it completes).
  bool congested() const { return queued() > kHighWater || spliceRemaining_ > 0; }
  // Largest stdio chunk per data frame on this session.
  uint32_t dataChunk() const { return dataChunk_; }
  void setDataChunk(uint32_t n) { dataChunk_ = n; }
  void disableSplice() { canSplice_ = false; }
  // Ends the session: detaches its streams and waiters; the fd is closed if owned.
  void Close(const std::string& why);
  // A protocol violation: tell the peer on stream 0, then close.
  void Fail(const std::string& why);

  bool helloDone = false;
  uint32_t lastRequest = 0;

 private:
  static constexpr size_t kHighWater = 512 * 1024;
  static constexpr size_t kHardLimit = 64 * 1024 * 1024;
  size_t queued() const { return out_.size() - outPos_ + spliceRemaining_; }
  void OnEvents(uint32_t events);
  void OnFrame(const Frame& frame);
  static bool IsHello(std::string_view payload);
  void Reset();
  void HostGone();
  void UpdateInterest();

  Agent& agent_;
  uint64_t id_;
  int fd_;
  bool ownsFd_;
  std::string name_;
  uint64_t token_ = 0;
  bool closed_ = false;
  bool failed_ = false;
  bool wantOut_ = false;
  bool port_ = false;
  bool paused_ = false;
  bool resetSinceHangup_ = false;
  uint32_t dataChunk_ = kMaxDataChunk;
  bool canSplice_ = true;
  Fd spliceFd_;               // pipe being spliced to the channel (a dup: survives the process)
  size_t splicePos_ = 0;      // where in out_ the spliced bytes belong
  size_t spliceRemaining_ = 0;
  FrameDecoder decoder_;
  std::string out_;
  size_t outPos_ = 0;
};

// A process's output pipe (stdout or stderr, or the pty master) bridged to at most one stream.
struct Output {
  int fd = -1;
  bool eof = false;
  uint64_t session = 0;
  uint32_t stream = 0;
  uint32_t credit = 0;
};

// A process's stdin bridged to at most one stream; `queue` holds at most the credit granted.
struct Input {
  int fd = -1;
  std::string queue;
  bool closing = false;  // the peer sent EOF: close the pipe once the queue is written
  bool closed = false;
  uint64_t session = 0;
  uint32_t stream = 0;
  uint32_t credit = 0;     // bytes the peer may still send
  uint32_t ungranted = 0;  // bytes written to the pipe, not yet granted back
};

struct Container;

// The child's ends of a process's stdio, closed in the agent once the child holds them.
struct ChildEnds {
  Fd in, out, err;
};

struct Process {
  enum State { kCreating, kCreated, kRunning, kExited };
  Container* container = nullptr;
  std::string execId;  // empty for the container's init process
  pid_t pid = 0;
  State state = kCreating;
  bool terminal = false;
  Fd stdinFd, stdoutFd, stderrFd, ptyFd;
  Output out, err;
  Input in;
  std::map<int, std::pair<uint64_t, uint32_t>> io;  // fd -> (loop token, events)
  int exitCode = -1;
  int exitSignal = 0;
  bool oomKilled = false;
  uint64_t oomBaseline = 0;
  int64_t startedAt = 0;  // unix ms
  std::vector<Pending> waiters;
  // Child setup channel (SOCK_SEQPACKET): "ok" after setup, "E<errno> <message>" on failure.
  Fd sync;
  uint64_t syncToken = 0;
  Pending pending;  // Create / Start / Exec waiting for the child
  bool failed = false;  // setup or execve failed
  std::optional<Error> failure;  // what the child reported
  std::string label() const;
};

struct Container {
  std::string id, bundle, rootfs, dir, cgroup;
  int64_t createdAt = 0;
  std::unique_ptr<Process> init;
  std::map<std::string, std::unique_ptr<Process>> execs;
  bool deleting = false;
  std::vector<Pending> deleteWaiters;
  // Paused (PauseContainer): its cgroup is frozen, or being frozen; false again once thawed.
  bool paused = false;
  bool freezing = false;  // a PauseContainer or ResumeContainer waits for the kernel
  std::string status() const;
};

class Agent {
 public:
  explicit Agent(Options options);
  int Run();  // returns the exit code (listen mode), or powers off (PID 1)

  Loop& loop() { return loop_; }
  const Options& options() const { return opts_; }
  Session* FindSession(uint64_t id);
  void Dispatch(Session& s, uint32_t stream, std::string_view payload);
  void OnData(Session& s, const Frame& frame);
  void OnSessionClosed(uint64_t id);
  // Detaches a session's streams and waiters (a new host took over the channel).
  void OnSessionReset(uint64_t id);
  // A port's host hung up: its stdio attachments end (nobody can read them); waiters stay until
  // a new host says Hello. Polls the port until it is connected again.
  void OnHostGone(uint64_t id);
  void OnSessionDrained(uint64_t id);
  uint64_t AddSession(int fd, bool ownsFd, const std::string& name);

 private:
  // The protocol's methods, one row each (the table is in agent.cc): the handler, whether it is
  // served while the agent shuts down, and the features Hello announces for it. A handler returns
  // the result or throws Error; asynchronous ones return nullopt and answer later through a
  // Pending. A row without a name only announces features.
  struct Method {
    const char* name;
    std::optional<json> (*handler)(Agent& agent, Session& s, uint32_t stream, const json& params);
    bool duringShutdown;
    std::vector<const char*> features;
  };
  static const std::vector<Method>& Methods();
  static const Method* FindMethod(const std::string& name);
  // Request handlers.
  json Hello(Session& s, const json& p);
  void CreateContainer(Session& s, uint32_t stream, const json& p);
  void StartContainer(Session& s, uint32_t stream, const json& p);
  void Exec(Session& s, uint32_t stream, const json& p);
  std::optional<json> OpenStdio(Session& s, uint32_t stream, const json& p);
  json SignalProcess(const json& p);
  std::optional<json> Wait(Session& s, uint32_t stream, const json& p);
  json ResizeTty(const json& p);
  json Stats(const json& p);
  void PauseContainer(Session& s, uint32_t stream, const json& p, bool pause);
  void AwaitFreeze(std::string id, bool pause, Pending pending, int64_t deadline, int64_t timeoutMs);
  json UpdateContainer(const json& p);
  std::optional<json> DeleteContainer(Session& s, uint32_t stream, const json& p);
  json ListContainers();
  void Mount(Session& s, uint32_t stream, const json& p);
  json Unmount(const json& p);
  json SetTime(const json& p);
  void ConfigureInterface(Session& s, uint32_t stream, const json& p);

  Container& FindContainer(const std::string& id);
  Process& FindProcess(const ProcessRef& ref);
  ChildEnds SetupStdio(Process& p, const StdioRequest& stdio, const ProcessSpec& spec);
  void Spawned(Process& p, Pending pending);
  void OnSync(Process& p);
  void FinishPending(Process& p, const Error* error);
  void OnSigchld();
  void OnExit(Process& p, int status);
  void FinishDelete(Container& c);
  void ReleaseProcess(Process& p);
  void UpdateIo(Process& p);
  void OnIo(Process& p, int fd, uint32_t events);
  void PumpOutput(Process& p, Output& o);
  void PumpInput(Process& p);
  void Reply(const Pending& pending, const json& result);
  void ReplyError(const Pending& pending, const Error& error);
  std::vector<Process*> AllProcesses();
  void TryMount(GuestMount m, Pending pending, int64_t deadline);
  void FindDevice(Session& s, uint32_t stream, const json& p);
  void TryFindDevice(std::string pciPath, bool wantNetdev, Pending pending, int64_t deadline);

  void StartTransports();
  void ScanPorts();
  void WatchPort(size_t index);
  void WatchPortLater(size_t index);
  void StartShutdown(Pending pending);
  void FinishShutdown();

  Options opts_;
  Loop loop_;
  DirectStreams direct_{loop_};  // containers' outputs on their own ports (direct_stream.cc)
  std::unique_ptr<GuestNetwork> net_;  // guest networking (net.cc)
  Cgroups cgroups_;
  uint64_t nextSession_ = 1;
  std::map<uint64_t, std::unique_ptr<Session>> sessions_;
  std::map<std::string, std::unique_ptr<Container>> containers_;
  std::unordered_map<pid_t, Process*> byPid_;
  std::vector<std::string> mounts_;
  std::set<std::string> shareBinds_;  // the mounts_ that are --share binds
  struct Port {
    std::string path;
    Fd fd;
    uint64_t session = 0;
    bool poisoned = false;  // the last session failed: ignore input until the host hangs up
    std::string early;      // what a host sent before the guest saw it connect (see WatchPort)
  };
  static constexpr size_t kMaxEarlyBytes = 1u << 20;
  std::vector<Port> ports_;
  std::vector<Fd> listeners_;
  std::vector<std::string> socketPaths_;
  int64_t portScanStart_ = 0;
  Fd signalFd_;
  Fd selfPidNs_;
  bool shuttingDown_ = false;
  int exitCode_ = 0;
};

}  // namespace agent
