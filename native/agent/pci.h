// Finding a device in the guest by its PCI path (Kata's form "SS/DD": the slot of a bridge or
// root port on bus 0, then the slot on the bus behind it, ...; function 0 each), so the host
// can tell the guest where a device it plugged landed.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace agent {

struct PciDevice {
  std::string address;               // guest PCI address, DDDD:BB:DD.F
  std::string sysfsPath;             // its directory under /sys/devices
  std::string driver;                // bound driver, or empty
  std::vector<std::string> netdevs;  // network interfaces it has (directly or through virtio)
};

// True for "SS" or "SS/DD/..." (1-8 levels of two lower-case hex digits, slots 00-1f).
bool ValidPciPath(const std::string& path);

// The device at `path` under `sysRoot` (default /sys), or nothing if it is not there (yet).
std::optional<PciDevice> FindPciDevice(const std::string& path, const std::string& sysRoot = "/sys");

}  // namespace agent
