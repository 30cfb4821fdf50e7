#include "agent/cgroup.h"

#include <signal.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cstring>

#include <linux/magic.h>

namespace agent {

namespace {

std::optional<uint64_t> ReadKey(const std::string& file, const std::string& key) {
  std::string text;
  if (!ReadFileIfExists(file, &text)) return std::nullopt;
  for (const auto& line : Split(text, '\n')) {
    auto parts = Split(line, ' ');
    if (parts.size() == 2 && parts[0] == key) return std::stoull(parts[1]);
  }
  return std::nullopt;
}

// A single-value file: nullopt when absent or "max".
std::optional<uint64_t> ReadValue(const std::string& file) {
  std::string text;
  if (!ReadFileIfExists(file, &text)) return std::nullopt;
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  if (text.empty() || text == "max" || text.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
  return std::stoull(text);
}

json Nullable(std::optional<uint64_t> v) { return v ? json(*v) : json(nullptr); }

}  // namespace

void JoinCgroup(const std::string& path) { WriteFile(path + "/cgroup.procs", "0"); }

void Cgroups::Init(const std::string& root, bool enableInParent) {
  std::string parent = root.substr(0, root.rfind('/'));
  struct statfs fs;
  if (statfs(parent.c_str(), &fs) < 0) ThrowErrno("statfs " + parent);
  if (fs.f_type != CGROUP2_SUPER_MAGIC) throw Error(Code::kInvalidArgument, parent + " is not a cgroup2 mount");
  std::set<std::string> available;
  for (auto& c : Split(ReadFile(parent + "/cgroup.controllers"), ' ')) {
    while (!c.empty() && c.back() == '\n') c.pop_back();
    if (!c.empty()) available.insert(c);
  }
  if (enableInParent) {
    for (const auto& c : {"cpu", "cpuset", "memory", "pids", "hugetlb", "io"}) {
      if (!available.count(c)) continue;
      try {
        WriteFile(parent + "/cgroup.subtree_control", std::string("+") + c);
      } catch (const Error& e) {
        Log("cannot enable the %s controller in %s: %s", c, parent.c_str(), e.what());
      }
    }
  }
  if (mkdir(root.c_str(), 0755) == 0) {
    createdRoot_ = true;
  } else if (errno != EEXIST) {
    ThrowErrno("mkdir " + root);
  }
  std::string enabled = ReadFile(root + "/cgroup.controllers");
  for (auto& c : Split(enabled, ' ')) {
    while (!c.empty() && c.back() == '\n') c.pop_back();
    if (c.empty()) continue;
    try {
      WriteFile(root + "/cgroup.subtree_control", "+" + c);
      controllers_.insert(c);
    } catch (const Error& e) {
      Log("cannot enable the %s controller in %s: %s", c.c_str(), root.c_str(), e.what());
    }
  }
  root_ = root;
  std::string list;
  for (auto& c : controllers_) list += " " + c;
  Log("cgroup2 root %s, controllers:%s", root.c_str(), list.empty() ? " (none)" : list.c_str());
}

std::string Cgroups::Create(const std::string& id, const ResourcesSpec& r) {
  std::string path = root_ + "/" + id;
  if (mkdir(path.c_str(), 0755) < 0) ThrowErrno("mkdir " + path);
  auto need = [&](const char* controller, const char* field) {
    if (!controllers_.count(controller)) {
      throw Error(Code::kFailedPrecondition, std::string("linux.resources.") + field + ": the " + controller +
                                                 " controller is not available in cgroup " + root_);
    }
  };
  auto set = [&](const std::string& file, const std::string& value) { WriteFile(path + "/" + file, value); };
  auto limit = [](int64_t v) { return v < 0 ? std::string("max") : std::to_string(v); };
  try {
    if (r.memoryLimit || r.memoryReservation || r.memorySwap) need("memory", "memory");
    if (r.memoryLimit) set("memory.max", limit(*r.memoryLimit));
    if (r.memoryReservation) set("memory.low", limit(*r.memoryReservation));
    if (r.memorySwap) {
      // OCI swap is memory+swap; cgroup2 wants swap alone.
      int64_t swap = *r.memorySwap;
      if (swap >= 0 && r.memoryLimit && *r.memoryLimit >= 0) swap = swap >= *r.memoryLimit ? swap - *r.memoryLimit : 0;
      if (PathExists(path + "/memory.swap.max")) set("memory.swap.max", limit(swap));
    }
    if (r.pidsLimit) {
      need("pids", "pids");
      set("pids.max", *r.pidsLimit <= 0 ? "max" : std::to_string(*r.pidsLimit));
    }
    if (r.cpuShares || r.cpuQuota || r.cpuPeriod) need("cpu", "cpu");
    if (r.cpuShares && *r.cpuShares > 0) {
      uint64_t shares = std::min<uint64_t>(std::max<uint64_t>(*r.cpuShares, 2), 262144);
      set("cpu.weight", std::to_string(1 + ((shares - 2) * 9999) / 262142));
    }
    if (r.cpuQuota || r.cpuPeriod) {
      std::string quota = r.cpuQuota && *r.cpuQuota > 0 ? std::to_string(*r.cpuQuota) : "max";
      set("cpu.max", quota + " " + std::to_string(r.cpuPeriod.value_or(100000)));
    }
    if (!r.cpusetCpus.empty() || !r.cpusetMems.empty()) need("cpuset", "cpu.cpus");
    if (!r.cpusetCpus.empty()) set("cpuset.cpus", r.cpusetCpus);
    if (!r.cpusetMems.empty()) set("cpuset.mems", r.cpusetMems);
    for (const auto& [size, bytes] : r.hugepageLimits) {
      need("hugetlb", "hugepageLimits");
      set("hugetlb." + size + ".max", std::to_string(bytes));
    }
    for (const auto& [key, value] : r.unified) {
      std::string controller = key.substr(0, key.find('.'));
      need(controller.c_str(), ("unified." + key).c_str());
      set(key, value);
    }
  } catch (...) {
    rmdir(path.c_str());
    throw;
  }
  return path;
}

bool Cgroups::Remove(const std::string& path) {
  if (rmdir(path.c_str()) == 0 || errno == ENOENT) return true;
  if (errno == EBUSY) return false;
  Log("rmdir %s: %s", path.c_str(), strerror(errno));
  return true;
}

void Cgroups::Signal(const std::string& path, int sig) {
  if (sig == SIGKILL && PathExists(path + "/cgroup.kill")) {
    try {
      WriteFile(path + "/cgroup.kill", "1");
      return;
    } catch (const Error&) {
    }
  }
  std::string procs;
  if (!ReadFileIfExists(path + "/cgroup.procs", &procs)) return;
  for (const auto& line : Split(procs, '\n')) {
    if (!line.empty()) kill(static_cast<pid_t>(std::stol(line)), sig);
  }
}

uint64_t Cgroups::OomKills(const std::string& path) {
  return ReadKey(path + "/memory.events", "oom_kill").value_or(0);
}

json Cgroups::Stats(const std::string& path) {
  json cpu = {{"usageUsec", Nullable(ReadKey(path + "/cpu.stat", "usage_usec"))},
              {"userUsec", Nullable(ReadKey(path + "/cpu.stat", "user_usec"))},
              {"systemUsec", Nullable(ReadKey(path + "/cpu.stat", "system_usec"))}};
  json memory = {{"currentBytes", Nullable(ReadValue(path + "/memory.current"))},
                 {"maxBytes", Nullable(ReadValue(path + "/memory.max"))},
                 {"peakBytes", Nullable(ReadValue(path + "/memory.peak"))},
                 {"oomKills", Nullable(ReadKey(path + "/memory.events", "oom_kill"))}};
  json pids = {{"current", Nullable(ReadValue(path + "/pids.current"))},
               {"max", Nullable(ReadValue(path + "/pids.max"))}};
  return {{"cpu", cpu}, {"memory", memory}, {"pids", pids}};
}

void Cgroups::Freeze(const std::string& path, bool frozen) { WriteFile(path + "/cgroup.freeze", frozen ? "1" : "0"); }

bool Cgroups::Frozen(const std::string& path) {
  auto v = ReadKey(path + "/cgroup.events", "frozen");
  if (!v) throw Error(Code::kFailedPrecondition, "this kernel's cgroups cannot freeze (" + path + "/cgroup.events has no \"frozen\")");
  return *v == 1;
}

void Cgroups::Update(const std::string& path, const ResourceUpdate& u) {
  auto need = [&](const char* controller, const char* field) {
    if (!controllers_.count(controller)) {
      throw Error(Code::kFailedPrecondition, std::string("resources.") + field + ": the " + controller +
                                                 " controller is not available in cgroup " + root_);
    }
  };
  auto limit = [](int64_t v) { return v < 0 ? std::string("max") : std::to_string(v); };
  std::vector<std::pair<std::string, std::string>> writes;  // file, value; in this order
  if (u.memoryLimit || u.memoryReservation || u.memorySwap) need("memory", "memory");
  if (u.memoryLimit) writes.emplace_back("memory.max", limit(*u.memoryLimit));
  if (u.memoryReservation) writes.emplace_back("memory.low", limit(*u.memoryReservation));
  if (u.memorySwap) {
    if (auto swap = SwapMax(*u.memorySwap, u.memoryLimit)) {
      if (PathExists(path + "/memory.swap.max")) {
        writes.emplace_back("memory.swap.max", *swap);
      } else if (*swap != "max") {
        throw Error(Code::kFailedPrecondition, "resources.memory.swap: the guest kernel does not account swap (no memory.swap.max)");
      }
    }
  }
  if (u.cpuShares || u.cpuQuota || u.cpuPeriod) need("cpu", "cpu");
  if (u.cpuShares) writes.emplace_back("cpu.weight", std::to_string(CpuWeight(*u.cpuShares)));
  if (u.cpuQuota || u.cpuPeriod) {
    // cpu.max is "QUOTA PERIOD": what the update leaves out stays as it is.
    std::string quota = u.cpuQuota ? limit(*u.cpuQuota) : "";
    std::string period = u.cpuPeriod ? std::to_string(*u.cpuPeriod) : "";
    if (quota.empty() || period.empty()) {
      auto current = Split(ReadFile(path + "/cpu.max"), ' ');
      if (current.size() != 2) throw Error(Code::kInternal, path + "/cpu.max is not \"QUOTA PERIOD\"");
      while (!current[1].empty() && current[1].back() == '\n') current[1].pop_back();
      if (quota.empty()) quota = current[0];
      if (period.empty()) period = current[1];
    }
    writes.emplace_back("cpu.max", quota + " " + period);
  }
  if (u.cpus || u.mems) need("cpuset", "cpu.cpus");
  if (u.cpus) writes.emplace_back("cpuset.cpus", *u.cpus);
  if (u.mems) writes.emplace_back("cpuset.mems", *u.mems);
  if (u.pidsLimit) {
    need("pids", "pids");
    writes.emplace_back("pids.max", *u.pidsLimit <= 0 ? "max" : std::to_string(*u.pidsLimit));
  }
  if (u.blkioWeight) {
    need("io", "blockIO");
    // BFQ takes the v1 range as it is; io.weight (the io cost model) wants 1-10000.
    if (PathExists(path + "/io.bfq.weight")) {
      writes.emplace_back("io.bfq.weight", std::to_string(*u.blkioWeight));
    } else if (PathExists(path + "/io.weight")) {
      writes.emplace_back("io.weight", "default " + std::to_string(IoWeight(*u.blkioWeight)));
    } else {
      throw Error(Code::kFailedPrecondition, "resources.blockIO.weight: the guest kernel has no io.bfq.weight or io.weight");
    }
  }
  std::vector<std::pair<std::string, std::string>> done;  // file, old value
  try {
    for (const auto& [file, value] : writes) {
      std::string old = ReadFile(path + "/" + file);
      while (!old.empty() && old.back() == '\n') old.pop_back();
      try {
        WriteFile(path + "/" + file, value);
      } catch (const Error& e) {
        // The kernel's refusal of a value in range (a cpu the guest lacks, a quota too large for
        // its period) is the caller's to fix.
        throw Error(e.err() == EINVAL || e.err() == ERANGE ? Code::kInvalidArgument : e.code(),
                    "cannot set " + file + " to \"" + value + "\": " + strerror(e.err()), e.err());
      }
      done.emplace_back(file, old);
    }
  } catch (...) {
    for (auto it = done.rbegin(); it != done.rend(); ++it) {
      try {
        // An empty value (cpuset.cpus of a cgroup that takes its parent's) as a newline: the
        // kernel never sees a write of nothing.
        WriteFile(path + "/" + it->first, it->second.empty() ? "\n" : it->second);
      } catch (const Error& e) {
        Log("cannot restore %s/%s to \"%s\": %s", path.c_str(), it->first.c_str(), it->second.c_str(), e.what());
      }
    }
    throw;
  }
}

void Cgroups::Shutdown() {
  if (createdRoot_ && rmdir(root_.c_str()) < 0) Log("rmdir %s: %s", root_.c_str(), strerror(errno));
}

}  // namespace agent
