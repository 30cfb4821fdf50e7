/**
 * PCI discovery from sysfs: devices with their ids, driver, IOMMU group, NUMA node, network
 * interfaces and SR-IOV relations, and the host state of their netdevs. Read-only.
 *
 * Sysfs: `bus/pci/devices/<address>/` (`vendor`, `device`, `class`, `driver` ->,
 * `driver_override`, `iommu_group` ->, `numa_node`, `net/<ifname>/`, `sriov_totalvfs`,
 * `sriov_numvfs`, `virtfn<N>` ->, `physfn` ->) and `kernel/iommu_groups/<N>/devices/`. A
 * device's netdevs are under its `net/` or, for virtio-net, under `virtio<N>/net/`.
 *
 * @module
 */
import os from 'node:os';
import { NotFoundError } from '../errors.js';
import { pciAddress } from '../validate.js';
import { sysfsOf, type Sysfs, type SysfsOptions } from './sysfs.js';

/** SR-IOV capability of a physical function. */
export interface SriovCapability {
  /** Most VFs the device supports (`sriov_totalvfs`). */
  totalVfs: number;
  /** VFs currently enabled (`sriov_numvfs`). */
  numVfs: number;
  /** Enabled VFs by index (`virtfn<index>` links). */
  vfs: { index: number; address: string }[];
}

/** A PCI device as sysfs describes it. Ids are lower-case hex without `0x` (`lspci -n` style). */
export interface PciDevice {
  /** `DDDD:BB:DD.F`. */
  address: string;
  vendor: string;
  device: string;
  /** Class code, 6 hex digits (e.g. `020000` Ethernet, `060400` PCI bridge). */
  class: string;
  subsystemVendor: string | null;
  subsystemDevice: string | null;
  /** Bound driver, e.g. `ixgbe`, `vfio-pci`; null when unbound. */
  driver: string | null;
  /** `driver_override`; null when unset. */
  driverOverride: string | null;
  /** IOMMU group number; null when the IOMMU is off or the device is not behind one. */
  iommuGroup: number | null;
  /** NUMA node; null when unknown (`numa_node` is -1). */
  numaNode: number | null;
  /** Network interfaces of the device (`net/`). */
  netdevs: string[];
  /** Whether the device is a PCI-to-PCI bridge (class 0x0604). */
  isBridge: boolean;
  /** SR-IOV capability, when the device is a PF. */
  sriov: SriovCapability | null;
  /** The PF's address, when the device is a VF. */
  physfn: string | null;
}

/** Sysfs directory of a device, relative to the root. */
export const devicePath = (address: string): string => `bus/pci/devices/${address}`;

/** `0x8086` -> `8086`, padded to `digits`; null when absent or not hex. */
function hexId(text: string | undefined, digits: number): string | null {
  if (text === undefined) return null;
  const m = /^(?:0x)?([0-9a-fA-F]+)$/u.exec(text.trim());
  return m?.[1] === undefined ? null : m[1].toLowerCase().padStart(digits, '0');
}

const PCI_NAME = /^[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$/u;

/**
 * Addresses of all PCI devices, sorted.
 *
 * Equivalent: `ls /sys/bus/pci/devices` (`lspci -D`).
 */
export async function listPciDevices(options: SysfsOptions = {}): Promise<string[]> {
  return (await sysfsOf(options).list('bus/pci/devices')).filter((name) => PCI_NAME.test(name));
}

/**
 * Describes one PCI device; {@link NotFoundError} when there is none at that address.
 *
 * Equivalent: `lspci -D -nn -k -s ADDRESS` plus `readlink .../iommu_group`.
 */
export async function pciDevice(address: string, options: SysfsOptions = {}): Promise<PciDevice> {
  const addr = pciAddress(address, 'address');
  const sysfs = sysfsOf(options);
  const dir = devicePath(addr);
  const vendor = hexId(await sysfs.readOptional(`${dir}/vendor`), 4);
  if (vendor === null) throw new NotFoundError('PCI device', addr);
  const cls = hexId(await sysfs.readOptional(`${dir}/class`), 6) ?? '000000';
  const override = await sysfs.readOptional(`${dir}/driver_override`);
  const group = await sysfs.linkName(`${dir}/iommu_group`);
  const numa = await sysfs.readInt(`${dir}/numa_node`);
  const physfn = await sysfs.linkName(`${dir}/physfn`);
  return {
    address: addr,
    vendor,
    device: hexId(await sysfs.readOptional(`${dir}/device`), 4) ?? '0000',
    class: cls,
    subsystemVendor: hexId(await sysfs.readOptional(`${dir}/subsystem_vendor`), 4),
    subsystemDevice: hexId(await sysfs.readOptional(`${dir}/subsystem_device`), 4),
    driver: (await sysfs.linkName(`${dir}/driver`)) ?? null,
    driverOverride: override === undefined || override === '(null)' || override === '' ? null : override,
    iommuGroup: group === undefined ? null : Number(group),
    numaNode: numa === undefined || numa < 0 ? null : numa,
    netdevs: (await netdevDirs(sysfs, addr)).map((n) => n.name),
    isBridge: cls.startsWith('0604'),
    sriov: await sriovCapability(sysfs, dir),
    physfn: physfn ?? null,
  };
}

async function sriovCapability(sysfs: Sysfs, dir: string): Promise<SriovCapability | null> {
  const totalVfs = await sysfs.readInt(`${dir}/sriov_totalvfs`);
  if (totalVfs === undefined) return null;
  const vfs: { index: number; address: string }[] = [];
  for (const entry of await sysfs.list(dir)) {
    const index = /^virtfn(\d+)$/u.exec(entry)?.[1];
    if (index === undefined) continue;
    const address = await sysfs.linkName(`${dir}/${entry}`);
    if (address !== undefined) vfs.push({ index: Number(index), address });
  }
  vfs.sort((a, b) => a.index - b.index);
  return { totalVfs, numVfs: (await sysfs.readInt(`${dir}/sriov_numvfs`)) ?? 0, vfs };
}

/**
 * Addresses of the devices in an IOMMU group, sorted.
 *
 * Equivalent: `ls /sys/kernel/iommu_groups/N/devices`.
 */
export async function iommuGroupDevices(group: number, options: SysfsOptions = {}): Promise<string[]> {
  if (!Number.isInteger(group) || group < 0) throw new NotFoundError('IOMMU group', String(group));
  return (await sysfsOf(options).list(`kernel/iommu_groups/${group}/devices`)).filter((name) => PCI_NAME.test(name));
}

/**
 * The network interfaces of a device: `net/<name>` of the device itself (most NICs) or of a child
 * device one level down (virtio-net: `virtio<N>/net/<name>`).
 */
async function netdevDirs(sysfs: Sysfs, address: string): Promise<{ name: string; dir: string }[]> {
  const dir = devicePath(address);
  const found: { name: string; dir: string }[] = [];
  for (const parent of [dir, ...(await sysfs.subdirectories(dir)).filter((d) => d !== 'net').map((d) => `${dir}/${d}`)]) {
    for (const name of await sysfs.list(`${parent}/net`)) found.push({ name, dir: `${parent}/net/${name}` });
  }
  return found;
}

/** Where a netdev's addresses come from; injectable so that tests need no real interface. */
export type AddressSource = (ifname: string) => Promise<readonly string[]> | readonly string[];

/** The addresses of a host interface in vmpod's network namespace (`ip -br addr show dev NAME`). */
export const hostAddresses: AddressSource = (ifname) =>
  (os.networkInterfaces()[ifname] ?? []).map((a) => a.cidr ?? a.address);

/** Host state of a device's network interface. */
export interface NetdevState {
  name: string;
  /** `operstate`: `up`, `down`, `unknown`, ... */
  operstate: string;
  /** Administratively up (IFF_UP in `flags`). */
  adminUp: boolean;
  addresses: readonly string[];
}

const IFF_UP = 0x1;

/**
 * The state of every netdev of a device: `operstate` and `flags` from sysfs, addresses from
 * `addresses` (default: the host's, via `os.networkInterfaces()`).
 *
 * Equivalent: `ip -br addr show dev NAME` for each name under `.../ADDRESS/net/`.
 */
export async function netdevStates(
  address: string,
  options: SysfsOptions & { addresses?: AddressSource | undefined } = {},
): Promise<NetdevState[]> {
  const addr = pciAddress(address, 'address');
  const sysfs = sysfsOf(options);
  const source = options.addresses ?? hostAddresses;
  return Promise.all(
    (await netdevDirs(sysfs, addr)).map(async ({ name, dir }) => {
      const flags = Number((await sysfs.readOptional(`${dir}/flags`)) ?? '0');
      return {
        name,
        operstate: (await sysfs.readOptional(`${dir}/operstate`)) ?? 'unknown',
        adminUp: Number.isInteger(flags) && (flags & IFF_UP) !== 0,
        addresses: await source(name),
      };
    }),
  );
}

/** Why a device counts as in use on the host, or an empty list: up netdevs, addresses, enabled VFs. */
export async function inUseReasons(
  device: PciDevice,
  options: SysfsOptions & { addresses?: AddressSource | undefined } = {},
): Promise<string[]> {
  const reasons: string[] = [];
  for (const n of await netdevStates(device.address, options)) {
    if (n.adminUp || n.operstate === 'up') reasons.push(`netdev ${n.name} is up`);
    if (n.addresses.length > 0) reasons.push(`netdev ${n.name} has addresses ${n.addresses.join(', ')}`);
  }
  if (device.sriov !== null && device.sriov.numVfs > 0) {
    reasons.push(`${device.sriov.numVfs} SR-IOV VFs are enabled (set sriov_numvfs to 0 first)`);
  }
  return reasons;
}
