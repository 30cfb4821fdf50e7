/**
 * SR-IOV: enabling virtual functions on a physical function (sysfs `sriov_numvfs`), finding a VF's
 * PF and index, and setting a VF's MAC address and VLAN through rtnetlink on the PF.
 *
 * @module
 */
import { InvalidArgumentError, NotFoundError, SystemError } from '../errors.js';
import { native } from '../native.js';
import { systemError } from '../native-call.js';
import { integer, interfaceName, macAddress, pciAddress } from '../validate.js';
import { DeviceBusyError, FeatureUnavailableError, SysfsReadbackError } from './errors.js';
import { devicePath, pciDevice, type PciDevice, type SriovCapability } from './pci.js';
import { sysfsOf, type SysfsOptions } from './sysfs.js';

/** The SR-IOV capability of a PF; {@link FeatureUnavailableError} when the device has none. */
export async function sriovCapability(pf: string, options: SysfsOptions = {}): Promise<SriovCapability> {
  const device = await pciDevice(pf, options);
  return requireSriov(device);
}

function requireSriov(device: PciDevice): SriovCapability {
  if (device.sriov === null) {
    throw new FeatureUnavailableError('SR-IOV', `PCI device ${device.address} is not an SR-IOV physical function (no sriov_totalvfs)`);
  }
  return device.sriov;
}

/** Options of {@link setNumVfs}. */
export interface SetNumVfsOptions extends SysfsOptions {
  /** Change the VF count even if some VFs are bound to vfio-pci (probably in use by VMs). */
  force?: boolean | undefined;
}

/**
 * Sets the number of VFs of a PF; returns the capability read back and the previous count (to
 * restore later). Changing a non-zero count writes 0 first, as the kernel requires. If the new
 * count cannot be set, the previous one is put back before the error is thrown.
 *
 * Equivalent: `echo 0 > /sys/bus/pci/devices/PF/sriov_numvfs; echo N > .../sriov_numvfs`.
 */
export async function setNumVfs(
  pf: string,
  count: number,
  options: SetNumVfsOptions = {},
): Promise<{ previous: number; sriov: SriovCapability }> {
  const addr = pciAddress(pf, 'pf');
  const sysfs = sysfsOf(options);
  const device = await pciDevice(addr, { sysfs });
  const cap = requireSriov(device);
  const n = integer(count, 'count', 0, cap.totalVfs);
  const previous = cap.numVfs;
  if (n === previous) return { previous, sriov: cap };
  if (previous > 0 && !options.force) {
    const held: string[] = [];
    for (const vf of cap.vfs) {
      if ((await sysfs.linkName(`${devicePath(vf.address)}/driver`)) === 'vfio-pci') held.push(vf.address);
    }
    if (held.length > 0) throw new DeviceBusyError(addr, [`VFs ${held.join(', ')} are bound to vfio-pci (in use by VMs?)`]);
  }
  const file = `${devicePath(addr)}/sriov_numvfs`;
  const write = async (value: number): Promise<void> => {
    await sysfs.write(file, String(value));
    const back = await sysfs.readInt(file);
    if (back !== value) throw new SysfsReadbackError(sysfs.path(file), String(value), String(back));
  };
  try {
    if (previous > 0) await write(0);
    if (n > 0) await write(n);
  } catch (error) {
    const now = await sysfs.readInt(file).catch(() => undefined);
    if (now !== previous) {
      if (now !== 0) await sysfs.write(file, '0').catch(() => undefined);
      if (previous > 0) await sysfs.write(file, String(previous)).catch(() => undefined);
    }
    throw error;
  }
  return { previous, sriov: requireSriov(await pciDevice(addr, { sysfs })) };
}

/** The PF and VF index of a virtual function; {@link NotFoundError} when the device is not a VF. */
export async function vfIndex(vf: string, options: SysfsOptions = {}): Promise<{ pf: string; index: number }> {
  const addr = pciAddress(vf, 'vf');
  const sysfs = sysfsOf(options);
  const device = await pciDevice(addr, { sysfs });
  if (device.physfn === null) throw new NotFoundError('SR-IOV virtual function', addr);
  const cap = requireSriov(await pciDevice(device.physfn, { sysfs }));
  const entry = cap.vfs.find((v) => v.address === addr);
  if (!entry) throw new NotFoundError(`virtfn link of ${device.physfn} for`, addr);
  return { pf: device.physfn, index: entry.index };
}

/** VF settings applied through the PF. */
export interface VfSettings {
  /** MAC address the VF gets (`ip link set PF vf N mac M`). */
  mac?: string | undefined;
  /** 802.1Q VLAN id, 0 to clear (`vlan V`). */
  vlan?: number | undefined;
  /** 802.1p priority with the VLAN, 0-7 (`qos Q`). */
  qos?: number | undefined;
}

function checkSettings(vf: number, settings: VfSettings): { vf: number; mac: Buffer | null; vlan: number | null; qos: number } {
  const index = integer(vf, 'vf', 0, 65535);
  const mac = settings.mac === undefined ? null : Buffer.from(macAddress(settings.mac, 'mac').split(':').map((h) => parseInt(h, 16)));
  const vlan = settings.vlan === undefined ? null : integer(settings.vlan, 'vlan', 0, 4095);
  const qos = settings.qos === undefined ? 0 : integer(settings.qos, 'qos', 0, 7);
  if (mac === null && vlan === null) throw new InvalidArgumentError('settings', 'give mac, vlan or both');
  if (vlan === null && qos !== 0) throw new InvalidArgumentError('qos', 'qos needs a vlan');
  return { vf: index, mac, vlan, qos };
}

/**
 * The rtnetlink request {@link setVf} sends, as bytes: RTM_SETLINK (NLM_F_REQUEST|NLM_F_ACK) on
 * `ifindex`, with IFLA_VFINFO_LIST { IFLA_VF_INFO { IFLA_VF_MAC { vf, mac[32] }, IFLA_VF_VLAN
 * { vf, vlan, qos } } }. Exposed so the encoding can be checked without SR-IOV hardware.
 */
export function vfSettingsMessage(ifindex: number, vf: number, settings: VfSettings, seq = 0): Buffer {
  const s = checkSettings(vf, settings);
  integer(ifindex, 'ifindex', 1, 2 ** 31 - 1);
  integer(seq, 'seq', 0, 2 ** 32 - 1);
  return native().sriovVfMessage(ifindex, s.vf, s.mac, s.vlan, s.qos, seq);
}

/**
 * Sets a VF's MAC address and/or VLAN through its PF's netdev, in vmpod's network namespace.
 * {@link NotFoundError} when the PF netdev does not exist; {@link FeatureUnavailableError} when
 * its driver cannot configure VFs (EOPNOTSUPP); {@link SystemError} otherwise (e.g. EINVAL for
 * a VF index beyond `sriov_numvfs`).
 *
 * Equivalent: `ip link set PF vf N mac M vlan V qos Q`.
 */
export async function setVf(pfNetdev: string, vf: number, settings: VfSettings): Promise<void> {
  const name = interfaceName(pfNetdev, 'pfNetdev');
  const s = checkSettings(vf, settings);
  try {
    await native().sriovSetVf(name, s.vf, s.mac, s.vlan, s.qos);
  } catch (cause) {
    const error = systemError(cause);
    if (error instanceof SystemError && error.errnoName === 'ENODEV') throw new NotFoundError('interface', name, { cause: error });
    if (error instanceof SystemError && error.errnoName === 'EOPNOTSUPP') {
      throw new FeatureUnavailableError('SR-IOV VF configuration', `${name} cannot configure VFs (its driver has no ndo_set_vf_mac/vlan: not an SR-IOV PF)`, { cause: error });
    }
    throw error;
  }
}
