#include "agent/pci.h"

#include <dirent.h>
#include <limits.h>
#include <unistd.h>

#include <algorithm>
#include <regex>

#include "agent/util.h"

namespace agent {
namespace {

// Entries of `dir` (no "." or ".."), sorted; empty if it cannot be read.
std::vector<std::string> List(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = opendir(dir.c_str());
  if (!d) return names;
  while (struct dirent* e = readdir(d)) {
    if (e->d_name[0] != '.') names.push_back(e->d_name);
  }
  closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

// The child of a bridge directory whose address ends in ":SS.0" (the device in slot SS of the
// bus behind it), or empty.
std::string ChildInSlot(const std::string& dir, const std::string& slot) {
  static const std::regex kAddress("[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\\.0");
  for (const auto& name : List(dir)) {
    if (std::regex_match(name, kAddress) && name.compare(8, 2, slot) == 0) return name;
  }
  return "";
}

}  // namespace

bool ValidPciPath(const std::string& path) {
  static const std::regex kPath("[01][0-9a-f](/[01][0-9a-f]){0,7}");
  return std::regex_match(path, kPath);
}

std::optional<PciDevice> FindPciDevice(const std::string& path, const std::string& sysRoot) {
  // The first slot is on the root bus 0000:00; each further one on the bus behind the previous.
  std::string dir = sysRoot + "/devices/pci0000:00";
  std::string address;
  bool first = true;
  for (const auto& slot : Split(path, '/')) {
    address = first ? "0000:00:" + slot + ".0" : ChildInSlot(dir, slot);
    first = false;
    if (address.empty() || !IsDirectory(dir + "/" + address)) return std::nullopt;
    dir += "/" + address;
  }
  PciDevice device;
  device.address = address;
  device.sysfsPath = dir;
  char target[PATH_MAX];
  ssize_t n = readlink((dir + "/driver").c_str(), target, sizeof target - 1);
  if (n > 0) {
    std::string link(target, static_cast<size_t>(n));
    device.driver = link.substr(link.rfind('/') + 1);
  }
  // A NIC's interfaces: DIR/net/IF for a device with its own driver, DIR/virtioN/net/IF for virtio.
  for (const auto& name : List(dir + "/net")) device.netdevs.push_back(name);
  for (const auto& sub : List(dir)) {
    if (sub.rfind("virtio", 0) == 0) {
      for (const auto& name : List(dir + "/" + sub + "/net")) device.netdevs.push_back(name);
    }
  }
  return device;
}

}  // namespace agent
