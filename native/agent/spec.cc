#include "agent/spec.h"

#include <linux/capability.h>
#include <sys/mount.h>
#include <sys/resource.h>

#include <cstring>

namespace agent {

namespace {

const char* const kCapNames[] = {
    "CAP_CHOWN",          "CAP_DAC_OVERRIDE",    "CAP_DAC_READ_SEARCH", "CAP_FOWNER",
    "CAP_FSETID",         "CAP_KILL",            "CAP_SETGID",          "CAP_SETUID",
    "CAP_SETPCAP",        "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",      "CAP_NET_RAW",         "CAP_IPC_LOCK",        "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",     "CAP_SYS_RAWIO",       "CAP_SYS_CHROOT",      "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",      "CAP_SYS_ADMIN",       "CAP_SYS_BOOT",        "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",   "CAP_SYS_TIME",        "CAP_SYS_TTY_CONFIG",  "CAP_MKNOD",
    "CAP_LEASE",          "CAP_AUDIT_WRITE",     "CAP_AUDIT_CONTROL",   "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",   "CAP_MAC_ADMIN",       "CAP_SYSLOG",          "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",  "CAP_AUDIT_READ",      "CAP_PERFMON",         "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
};
static_assert(sizeof(kCapNames) / sizeof(kCapNames[0]) == CAP_LAST_CAP + 1);

struct NamedInt {
  const char* name;
  int value;
};

const NamedInt kRlimits[] = {
    {"RLIMIT_CPU", RLIMIT_CPU},         {"RLIMIT_FSIZE", RLIMIT_FSIZE},     {"RLIMIT_DATA", RLIMIT_DATA},
    {"RLIMIT_STACK", RLIMIT_STACK},     {"RLIMIT_CORE", RLIMIT_CORE},       {"RLIMIT_RSS", RLIMIT_RSS},
    {"RLIMIT_NPROC", RLIMIT_NPROC},     {"RLIMIT_NOFILE", RLIMIT_NOFILE},   {"RLIMIT_MEMLOCK", RLIMIT_MEMLOCK},
    {"RLIMIT_AS", RLIMIT_AS},           {"RLIMIT_LOCKS", RLIMIT_LOCKS},     {"RLIMIT_SIGPENDING", RLIMIT_SIGPENDING},
    {"RLIMIT_MSGQUEUE", RLIMIT_MSGQUEUE}, {"RLIMIT_NICE", RLIMIT_NICE},     {"RLIMIT_RTPRIO", RLIMIT_RTPRIO},
    {"RLIMIT_RTTIME", RLIMIT_RTTIME},
};

uint64_t ParseCapSet(const json& caps, const char* key, const std::string& path) {
  uint64_t set = 0;
  std::string p = path + "." + key;
  auto names = OptStrings(caps, key, path, 64);
  for (size_t i = 0; i < names.size(); i++) {
    int n = CapabilityNumber(names[i]);
    if (n < 0) BadField(p + "[" + std::to_string(i) + "]", "unknown capability \"" + names[i] + "\"");
    set |= uint64_t(1) << n;
  }
  return set;
}

std::string CheckAbsolute(const std::string& value, const std::string& path) {
  if (value.empty() || value[0] != '/') BadField(path, "must be an absolute path");
  return value;
}

}  // namespace

int CapabilityNumber(const std::string& name) {
  for (int i = 0; i <= CAP_LAST_CAP; i++) {
    if (name == kCapNames[i]) return i;
  }
  return -1;
}

ProcessSpec ParseProcess(const json& p, const std::string& path) {
  if (!p.is_object()) BadField(path, "must be an object");
  ProcessSpec out;
  out.terminal = OptBool(p, "terminal", path, false);
  out.args = OptStrings(p, "args", path);
  if (out.args.empty()) BadField(path + ".args", "must hold at least the program to run");
  if (out.args[0].empty()) BadField(path + ".args[0]", "must not be empty");
  out.env = OptStrings(p, "env", path);
  for (size_t i = 0; i < out.env.size(); i++) {
    if (out.env[i].find('=') == std::string::npos || out.env[i][0] == '=') {
      BadField(path + ".env[" + std::to_string(i) + "]", "must be NAME=VALUE");
    }
  }
  if (auto cwd = OptString(p, "cwd", path)) out.cwd = CheckAbsolute(*cwd, path + ".cwd");
  if (const json* user = OptObject(p, "user", path)) {
    std::string up = path + ".user";
    out.uid = static_cast<uid_t>(OptInt(*user, "uid", up, 0, UINT32_MAX - 1).value_or(0));
    out.gid = static_cast<gid_t>(OptInt(*user, "gid", up, 0, UINT32_MAX - 1).value_or(0));
    if (auto mask = OptInt(*user, "umask", up, 0, 0777)) out.umask = static_cast<mode_t>(*mask);
    if (const json* gids = OptArray(*user, "additionalGids", up)) {
      if (gids->size() > 65536) BadField(up + ".additionalGids", "has too many items");
      for (size_t i = 0; i < gids->size(); i++) {
        const json& g = (*gids)[i];
        if (!g.is_number_integer() || g.get<int64_t>() < 0 || g.get<int64_t>() >= UINT32_MAX) {
          BadField(up + ".additionalGids[" + std::to_string(i) + "]", "must be a gid");
        }
        out.additionalGids.push_back(static_cast<gid_t>(g.get<int64_t>()));
      }
    }
    if (Field(*user, "username")) BadField(up + ".username", "is a Windows field; use uid/gid");
  }
  if (const json* rl = OptArray(p, "rlimits", path)) {
    for (size_t i = 0; i < rl->size(); i++) {
      std::string rp = path + ".rlimits[" + std::to_string(i) + "]";
      const json& r = (*rl)[i];
      if (!r.is_object()) BadField(rp, "must be an object");
      std::string type = GetString(r, "type", rp);
      int resource = -1;
      for (const auto& n : kRlimits) {
        if (type == n.name) resource = n.value;
      }
      if (resource < 0) BadField(rp + ".type", "unknown rlimit \"" + type + "\"");
      auto hard = OptUint64(r, "hard", rp);
      auto soft = OptUint64(r, "soft", rp);
      if (!hard || !soft) BadField(rp, "needs both soft and hard");
      if (*soft > *hard) BadField(rp, "soft limit is above the hard limit");
      out.rlimits.push_back({resource, *soft, *hard});
    }
  }
  if (const json* caps = OptObject(p, "capabilities", path)) {
    std::string cp = path + ".capabilities";
    Capabilities c;
    c.bounding = ParseCapSet(*caps, "bounding", cp);
    c.effective = ParseCapSet(*caps, "effective", cp);
    c.permitted = ParseCapSet(*caps, "permitted", cp);
    c.inheritable = ParseCapSet(*caps, "inheritable", cp);
    c.ambient = ParseCapSet(*caps, "ambient", cp);
    out.capabilities = c;
  }
  out.noNewPrivileges = OptBool(p, "noNewPrivileges", path, false);
  if (auto adj = OptInt(p, "oomScoreAdj", path, -1000, 1000)) out.oomScoreAdj = static_cast<int>(*adj);
  if (const json* size = OptObject(p, "consoleSize", path)) {
    out.rows = static_cast<uint16_t>(GetInt(*size, "height", path + ".consoleSize", 0, 65535));
    out.cols = static_cast<uint16_t>(GetInt(*size, "width", path + ".consoleSize", 0, 65535));
  }
  for (const char* unsupported : {"apparmorProfile", "selinuxLabel", "ioPriority", "scheduler", "execCPUAffinity"}) {
    if (Field(p, unsupported)) Debug("ignoring %s.%s", path.c_str(), unsupported);
  }
  return out;
}

static void ParseResources(const json& r, ResourcesSpec* out) {
  const std::string rp = "linux.resources";
  if (const json* mem = OptObject(r, "memory", rp)) {
    std::string mp = rp + ".memory";
    out->memoryLimit = OptInt(*mem, "limit", mp, -1, INT64_MAX);
    out->memoryReservation = OptInt(*mem, "reservation", mp, -1, INT64_MAX);
    out->memorySwap = OptInt(*mem, "swap", mp, -1, INT64_MAX);
  }
  if (const json* pids = OptObject(r, "pids", rp)) out->pidsLimit = OptInt(*pids, "limit", rp + ".pids", -1, INT64_MAX);
  if (const json* cpu = OptObject(r, "cpu", rp)) {
    std::string cp = rp + ".cpu";
    out->cpuShares = OptUint64(*cpu, "shares", cp);
    out->cpuQuota = OptInt(*cpu, "quota", cp, -1, INT64_MAX);
    out->cpuPeriod = OptUint64(*cpu, "period", cp);
    out->cpusetCpus = OptString(*cpu, "cpus", cp).value_or("");
    out->cpusetMems = OptString(*cpu, "mems", cp).value_or("");
    for (const std::string* s : {&out->cpusetCpus, &out->cpusetMems}) {
      if (s->find_first_not_of("0123456789,-") != std::string::npos) BadField(cp, "cpus/mems must be a cpu list like 0-1,3");
    }
  }
  if (const json* huge = OptArray(r, "hugepageLimits", rp)) {
    for (size_t i = 0; i < huge->size(); i++) {
      std::string hp = rp + ".hugepageLimits[" + std::to_string(i) + "]";
      std::string size = GetString((*huge)[i], "pageSize", hp);
      if (size.empty() || size.size() > 8 || size.find_first_not_of("0123456789KMGB") != std::string::npos) {
        BadField(hp + ".pageSize", "must look like 2MB or 1GB");
      }
      auto limit = OptUint64((*huge)[i], "limit", hp);
      if (!limit) BadField(hp + ".limit", "is required");
      out->hugepageLimits.emplace_back(size, *limit);
    }
  }
  if (const json* unified = OptObject(r, "unified", rp)) {
    for (auto it = unified->begin(); it != unified->end(); ++it) {
      const std::string& key = it.key();
      std::string kp = rp + ".unified." + key;
      if (key.empty() || key.find('/') != std::string::npos || key[0] == '.' || key.find('.') == std::string::npos ||
          StartsWith(key, "cgroup.")) {
        BadField(kp, "is not a controller file name");
      }
      if (!it->is_string()) BadField(kp, "must be a string");
      out->unified[key] = it->get<std::string>();
      CheckNoNul(out->unified[key], kp);
    }
  }
  for (const char* unsupported : {"devices", "blockIO", "network", "rdma"}) {
    if (Field(r, unsupported)) Debug("ignoring linux.resources.%s", unsupported);
  }
}

Spec ParseSpec(const json& c) {
  if (!c.is_object()) BadField("config", "must be a JSON object");
  Spec spec;
  std::string version = GetString(c, "ociVersion", "");
  if (!StartsWith(version, "1.")) BadField("ociVersion", "\"" + version + "\" is not a 1.x OCI runtime spec version");
  spec.process = ParseProcess(GetObject(c, "process", ""), "process");
  if (const json* root = OptObject(c, "root", "")) {
    spec.rootPath = OptString(*root, "path", "root").value_or("");
    spec.rootReadonly = OptBool(*root, "readonly", "root", false);
  }
  if (auto host = OptString(c, "hostname", "")) {
    if (host->size() > 64) BadField("hostname", "is longer than 64 bytes");
    spec.hostname = *host;
  }
  if (const json* mounts = OptArray(c, "mounts", "")) {
    if (mounts->size() > 1024) BadField("mounts", "has more than 1024 items");
    for (size_t i = 0; i < mounts->size(); i++) {
      std::string mp = "mounts[" + std::to_string(i) + "]";
      const json& m = (*mounts)[i];
      if (!m.is_object()) BadField(mp, "must be an object");
      MountSpec ms;
      ms.destination = CheckAbsolute(GetString(m, "destination", mp), mp + ".destination");
      ms.type = OptString(m, "type", mp).value_or("");
      ms.source = OptString(m, "source", mp).value_or("");
      ms.options = OptStrings(m, "options", mp, 64);
      if (ms.type.empty()) {
        bool bind = false;
        for (auto& o : ms.options) bind = bind || o == "bind" || o == "rbind";
        if (!bind) BadField(mp + ".type", "is required unless the options hold bind or rbind");
        ms.type = "bind";
      }
      spec.mounts.push_back(std::move(ms));
    }
  }
  if (const json* lnx = OptObject(c, "linux", "")) {
    if (const json* nss = OptArray(*lnx, "namespaces", "linux")) {
      for (size_t i = 0; i < nss->size(); i++) {
        std::string np = "linux.namespaces[" + std::to_string(i) + "]";
        NamespaceSpec ns;
        ns.type = GetString((*nss)[i], "type", np);
        ns.path = OptString((*nss)[i], "path", np).value_or("");
        if (ns.type == "user" || ns.type == "time") {
          BadField(np + ".type", "\"" + ns.type + "\" namespaces are not supported by the vmpod agent");
        }
        if (ns.type != "pid" && ns.type != "network" && ns.type != "mount" && ns.type != "ipc" && ns.type != "uts" &&
            ns.type != "cgroup") {
          BadField(np + ".type", "unknown namespace type \"" + ns.type + "\"");
        }
        if (!ns.path.empty()) CheckAbsolute(ns.path, np + ".path");
        if (ns.type == "mount" && !ns.path.empty()) BadField(np + ".path", "joining a mount namespace is not supported");
        spec.namespaces.push_back(ns);
      }
    }
    if (const json* devs = OptArray(*lnx, "devices", "linux")) {
      for (size_t i = 0; i < devs->size(); i++) {
        std::string dp = "linux.devices[" + std::to_string(i) + "]";
        const json& d = (*devs)[i];
        DeviceSpec ds;
        ds.path = CheckAbsolute(GetString(d, "path", dp), dp + ".path");
        std::string type = GetString(d, "type", dp);
        if (type != "c" && type != "b" && type != "u" && type != "p") BadField(dp + ".type", "must be c, b, u or p");
        ds.type = type[0];
        ds.major = OptInt(d, "major", dp, 0, 4095).value_or(0);
        ds.minor = OptInt(d, "minor", dp, 0, 1048575).value_or(0);
        ds.fileMode = static_cast<mode_t>(OptInt(d, "fileMode", dp, 0, 07777).value_or(0666));
        ds.uid = static_cast<uid_t>(OptInt(d, "uid", dp, 0, UINT32_MAX - 1).value_or(0));
        ds.gid = static_cast<gid_t>(OptInt(d, "gid", dp, 0, UINT32_MAX - 1).value_or(0));
        spec.devices.push_back(ds);
      }
    }
    if (const json* r = OptObject(*lnx, "resources", "linux")) ParseResources(*r, &spec.resources);
    spec.maskedPaths = OptStrings(*lnx, "maskedPaths", "linux");
    spec.readonlyPaths = OptStrings(*lnx, "readonlyPaths", "linux");
    for (auto* list : {&spec.maskedPaths, &spec.readonlyPaths}) {
      for (auto& p : *list) CheckAbsolute(p, "linux.maskedPaths/readonlyPaths");
    }
    if (const json* sysctl = OptObject(*lnx, "sysctl", "linux")) {
      for (auto it = sysctl->begin(); it != sysctl->end(); ++it) {
        const std::string& key = it.key();
        if (key.empty() || key.find('/') != std::string::npos || key.find("..") != std::string::npos) {
          BadField("linux.sysctl." + key, "is not a sysctl name");
        }
        if (!it->is_string()) BadField("linux.sysctl." + key, "must be a string");
        spec.sysctl[key] = it->get<std::string>();
      }
    }
    spec.rootfsPropagation = OptString(*lnx, "rootfsPropagation", "linux").value_or("");
    if (Field(*lnx, "uidMappings") || Field(*lnx, "gidMappings")) {
      BadField("linux.uidMappings", "user namespaces are not supported by the vmpod agent");
    }
    for (const char* ignored : {"seccomp", "mountLabel", "intelRdt", "personality", "cgroupsPath"}) {
      if (Field(*lnx, ignored)) Debug("ignoring linux.%s", ignored);
    }
  }
  return spec;
}

MountOptions ParseMountOptions(const std::vector<std::string>& options) {
  struct Flag {
    const char* name;
    bool clear;
    unsigned long flag;
  };
  static const Flag kFlags[] = {
      {"ro", false, MS_RDONLY},        {"rw", true, MS_RDONLY},           {"nosuid", false, MS_NOSUID},
      {"suid", true, MS_NOSUID},       {"nodev", false, MS_NODEV},        {"dev", true, MS_NODEV},
      {"noexec", false, MS_NOEXEC},    {"exec", true, MS_NOEXEC},         {"sync", false, MS_SYNCHRONOUS},
      {"async", true, MS_SYNCHRONOUS}, {"dirsync", false, MS_DIRSYNC},    {"remount", false, MS_REMOUNT},
      {"mand", false, MS_MANDLOCK},    {"nomand", true, MS_MANDLOCK},     {"atime", true, MS_NOATIME},
      {"noatime", false, MS_NOATIME},  {"diratime", true, MS_NODIRATIME}, {"nodiratime", false, MS_NODIRATIME},
      {"relatime", false, MS_RELATIME}, {"norelatime", true, MS_RELATIME}, {"strictatime", false, MS_STRICTATIME},
      {"nostrictatime", true, MS_STRICTATIME},
  };
  static const Flag kPropagation[] = {
      {"private", false, MS_PRIVATE},   {"rprivate", false, MS_PRIVATE | MS_REC},
      {"shared", false, MS_SHARED},     {"rshared", false, MS_SHARED | MS_REC},
      {"slave", false, MS_SLAVE},       {"rslave", false, MS_SLAVE | MS_REC},
      {"unbindable", false, MS_UNBINDABLE}, {"runbindable", false, MS_UNBINDABLE | MS_REC},
  };
  MountOptions out;
  for (const auto& o : options) {
    bool known = false;
    for (const auto& f : kFlags) {
      if (o == f.name) {
        known = true;
        out.flags = f.clear ? (out.flags & ~f.flag) : (out.flags | f.flag);
      }
    }
    for (const auto& f : kPropagation) {
      if (o == f.name) {
        known = true;
        out.propagation = f.flag;
      }
    }
    if (o == "bind" || o == "rbind") {
      known = true;
      out.bind = true;
      out.flags |= MS_BIND | (o == "rbind" ? MS_REC : 0);
    }
    if (!known) {
      if (o.find(',') != std::string::npos) BadField("mount option \"" + o + "\"", "must not contain ','");
      if (!out.data.empty()) out.data += ",";
      out.data += o;
    }
  }
  return out;
}

}  // namespace agent
