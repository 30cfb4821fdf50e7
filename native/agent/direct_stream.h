// Direct streams: a container init's stdout or stderr bound straight to a virtio-serial port of
// its own (`vmpod.stream.N`), so the container's write() is the only copy in the guest. The
// host end knows a random 32-byte marker that only the agent writes: once before the container
// can write (start), and once after the init was reaped (end), when the kernel has killed the
// container's whole pid namespace and nothing of it can write any more. The bytes between the
// two markers are the stream. See docs/agent-protocol.md, "Direct streams".
#pragma once
#include <array>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "agent/json.h"
#include "agent/loop.h"
#include "agent/util.h"

namespace agent {

struct Spec;

constexpr const char* kStreamPortPrefix = "vmpod.stream.";
constexpr size_t kStreamMarkerSize = 32;

// One output's request in CreateContainer: the port and the marker (raw bytes).
struct DirectRequest {
  std::string port;
  std::string marker;
};

// Parses and checks CreateContainer's `direct` ({stdout?: {port, cookie}, stderr?: ...}) against
// the spec and `stdio`. Index 0 is stdout, 1 stderr. Throws Error(kInvalidArgument).
std::array<std::optional<DirectRequest>, 2> ParseDirect(const json* direct, const json* stdio, const Spec& spec);

class DirectStreams {
 public:
  explicit DirectStreams(Loop& loop) : loop_(loop) {}

  // Opens the port for output `which` (0 stdout, 1 stderr) of container `id` and queues the
  // start marker; returns a dup for the child. BUSY when another container holds the port.
  Fd Claim(const std::string& id, int which, const DirectRequest& request);
  // Closes what Claim opened for `id` (the container could not be created).
  void Abandon(const std::string& id);
  // Runs `ready` once every start marker of `id` is in its port (at once if they are), or
  // `failed` if that takes longer than `timeoutMs` (the host end is not connected).
  void WhenStarted(const std::string& id, std::function<void()> ready, std::function<void(const Error&)> failed,
                   int64_t timeoutMs = 10000);
  // The init of `id` was reaped: queue the end markers. Once written, a marker is written again
  // whenever a new host connects to the port (the previous one may have left with it in
  // flight), until the container is deleted.
  void End(const std::string& id);
  // `id` is deleted: its ports are released; a stream still writing its end marker becomes an
  // orphan, dropped once written, when the port is claimed again (the next reader skips
  // everything before its own start marker) or at shutdown.
  void Forget(const std::string& id);
  // The port of output `which` of container `id`, if it is direct.
  std::optional<std::string> PortOf(const std::string& id, int which) const;
  // One last try to write what is pending, then closes every port.
  void Shutdown();

 private:
  struct Stream {
    std::string port;
    std::string owner;  // container id; empty for an orphan
    int which = 0;
    std::string marker;
    Fd fd;
    std::string pending;  // marker bytes still to write
    enum State { kStarting, kActive, kEnding, kEnded } state = kStarting;
    uint64_t token = 0;  // EPOLLOUT registration
    uint64_t timer = 0;  // retry while no host is connected
    bool hostGone = false;  // kEnded: the host hung up since the end marker was written
  };
  struct Waiter {
    std::function<void()> ready;
    std::function<void(const Error&)> failed;
    uint64_t timer = 0;
  };
  void Pump(Stream& s);
  void Wait(Stream& s);
  void WatchHost(Stream& s);
  void Drop(const std::string& port);
  void Started(const std::string& id);
  bool AllStarted(const std::string& id) const;

  Loop& loop_;
  std::map<std::string, std::unique_ptr<Stream>> byPort_;
  std::map<std::string, std::vector<std::shared_ptr<Waiter>>> waiters_;
};

}  // namespace agent
