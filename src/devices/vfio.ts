/**
 * Handing a PCI device to a VM through VFIO: the device and every other device of its IOMMU
 * group are bound to vfio-pci with `driver_override` + `unbind` + `drivers_probe`, their original
 * drivers are recorded in a persistable {@link VfioBindingRecord}, and {@link releaseVfio} puts
 * them back. A bind that fails midway is undone before the error is thrown, so the host ends as
 * it was. Also: the QEMU `vfio-pci` device for the command line and for QMP `device_add`.
 *
 * Sysfs writes, per device not yet on vfio-pci (kernel docs: ABI/testing/sysfs-bus-pci):
 * `devices/ADDR/driver_override` <- `vfio-pci`, `drivers/ORIG/unbind` <- ADDR,
 * `drivers_probe` <- ADDR. Release: `drivers/vfio-pci/unbind` <- ADDR,
 * `devices/ADDR/driver_override` <- the original (or `\n` to clear), `drivers/ORIG/bind` <- ADDR.
 *
 * The drivers of a group are host state shared by every sandbox: a bind and a release run under
 * the host lock of the group (`/run/lock/vmpod/vfio-group-N.lock`, see `host-lock.ts`), and a
 * bind leaves a claim on the group (`vfio-group-N.json` next to the lock) until its release, so a
 * second binding of the same group, from any process, is refused with
 * {@link IommuGroupInUseError} naming the holder, and a release never takes the group from the
 * binding that holds it now.
 *
 * @module
 */
import { randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { InvalidArgumentError, NotFoundError } from '../errors.js';
import { integer, pciAddress } from '../validate.js';
import {
  DeviceBindError,
  DeviceBusyError,
  FeatureUnavailableError,
  IommuGroupInUseError,
  IommuGroupNotViableError,
  type VfioGroupHolder,
} from './errors.js';
import { acquireHostLock, hostLockDir, keptLockOptions, type HostLockOptions } from './host-lock.js';
import { devicePath, inUseReasons, iommuGroupDevices, pciDevice, type AddressSource, type PciDevice } from './pci.js';
import { sysfsOf, type Sysfs, type SysfsOptions } from './sysfs.js';

const VFIO = 'vfio-pci';

/** Options of {@link bindVfio}. */
export interface VfioBindOptions extends SysfsOptions, HostLockOptions {
  /** Take devices whose netdev is up or has addresses, or that have VFs enabled. */
  force?: boolean | undefined;
  /** Where netdev addresses come from (default: the host's). */
  addresses?: AddressSource | undefined;
  /**
   * Who binds, e.g. a sandbox id: kept in the record and the group's claim, and named by
   * {@link IommuGroupInUseError} to whoever else asks for the group. Default `pid <this pid>`.
   * Up to 128 printable ASCII characters.
   */
  owner?: string | undefined;
  /**
   * The id of this binding's claim on the group (default: a random UUID). Give your own to put it
   * in a record you save before calling {@link bindVfio}: a release with that record then finds
   * its claim even after a crash in the middle of the bind. Up to 128 of `[A-Za-z0-9_.:-]`.
   */
  claimId?: string | undefined;
}

/** Options of {@link releaseVfio}. */
export interface VfioReleaseOptions extends SysfsOptions, HostLockOptions {}

/** What was done to one device of the group, and how to undo it. */
export interface VfioDeviceRecord {
  address: string;
  /** Driver before the bind; null when it was unbound. */
  originalDriver: string | null;
  /** `driver_override` before the bind; null when unset. */
  originalDriverOverride: string | null;
  /** Already on vfio-pci before the bind: left untouched, and left bound on release. */
  alreadyBound: boolean;
}

/** Persistable record of a bind: JSON-serialisable, enough for {@link releaseVfio} after a restart. */
export interface VfioBindingRecord {
  /** The device asked for. */
  address: string;
  iommuGroup: number;
  /** Every device of the group, sorted by address. */
  devices: VfioDeviceRecord[];
  /**
   * The id of the claim this binding holds on the group. Absent in records of vmpod versions
   * before host locks, and in records a caller builds before {@link bindVfio} returns without
   * passing `claimId`: see {@link releaseVfio} for how those are released.
   */
  claimId?: string;
  /** Who bound the group (the `owner` option, or `pid N`). */
  owner?: string;
}

/** A device group bound to vfio-pci; {@link release} restores the original drivers. */
export class VfioBinding {
  private released = false;
  private readonly lockOptions: HostLockOptions;

  constructor(
    readonly record: VfioBindingRecord,
    private readonly sysfs: Sysfs,
    /** The host lock to release under (`lockDir`, `lockTimeoutMs`); default: the sysfs tree's. */
    lockOptions: HostLockOptions = {},
  ) {
    this.lockOptions = keptLockOptions(lockOptions);
  }

  get address(): string {
    return this.record.address;
  }

  get iommuGroup(): number {
    return this.record.iommuGroup;
  }

  /** The group's character device that QEMU opens (with `/dev/vfio/vfio`). */
  get groupDevice(): string {
    return `/dev/vfio/${this.record.iommuGroup}`;
  }

  /** Restores the original drivers (see {@link releaseVfio}); idempotent. */
  async release(): Promise<void> {
    if (this.released) return;
    await releaseVfio(this.record, { ...this.lockOptions, sysfs: this.sysfs });
    this.released = true;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.release();
  }
}

/**
 * Checks, without writing anything, that a device's IOMMU group can be bound to vfio-pci:
 * vfio-pci is loaded, the device has a group, no member is a bridge, every bound member's
 * driver can be unbound, no member is in use (unless `force`), and no other binding holds the
 * group ({@link IommuGroupInUseError}; read without the lock, {@link bindVfio} checks again
 * under it). Returns the members.
 */
export async function checkVfioGroup(
  address: string,
  options: VfioBindOptions = {},
): Promise<{ device: PciDevice; iommuGroup: number; members: PciDevice[] }> {
  const found = await inspectGroup(address, options);
  const dir = await hostLockDir({ ...options, sysfs: sysfsOf(options) });
  const claim = await readClaim(dir, found.iommuGroup);
  if (claim !== undefined && claimHolds(claim, found.members)) {
    throw new IommuGroupInUseError(found.device.address, found.iommuGroup, claim.holder, claimPath(dir, found.iommuGroup));
  }
  return found;
}

/** The checks of {@link checkVfioGroup} on the devices, without the claim. */
async function inspectGroup(
  address: string,
  options: VfioBindOptions,
): Promise<{ device: PciDevice; iommuGroup: number; members: PciDevice[] }> {
  const addr = pciAddress(address, 'address');
  const sysfs = sysfsOf(options);
  const device = await pciDevice(addr, { sysfs });
  if (!(await sysfs.exists(`bus/pci/drivers/${VFIO}`))) {
    throw new FeatureUnavailableError(
      'vfio-pci driver',
      'the vfio-pci driver is not loaded (modprobe vfio-pci; the host needs an IOMMU: intel_iommu=on or amd_iommu=on)',
    );
  }
  if (device.iommuGroup === null) {
    throw new IommuGroupNotViableError(addr, undefined, 'the IOMMU is off or does not cover it (boot with intel_iommu=on or amd_iommu=on)');
  }
  const group = device.iommuGroup;
  const addresses = await iommuGroupDevices(group, { sysfs });
  if (!addresses.includes(addr)) addresses.push(addr);
  const members: PciDevice[] = [];
  for (const a of addresses.sort()) {
    const m = a === addr ? device : await pciDevice(a, { sysfs });
    if (m.isBridge) {
      throw new IommuGroupNotViableError(addr, group, `${a} is a PCI bridge, which vfio-pci cannot take (move the card to a slot behind an ACS-capable port)`);
    }
    if (!(await sysfs.exists(`${devicePath(a)}/driver_override`))) {
      throw new FeatureUnavailableError('driver_override', `${a} has no driver_override attribute (Linux 3.16 or later needed)`);
    }
    if (m.driver !== null && m.driver !== VFIO && !(await sysfs.exists(`bus/pci/drivers/${m.driver}/unbind`))) {
      throw new IommuGroupNotViableError(addr, group, `${a} is held by driver ${m.driver}, which cannot be unbound`);
    }
    if (!options.force && m.driver !== VFIO) {
      const reasons = await inUseReasons(m, { sysfs, addresses: options.addresses });
      if (reasons.length > 0) {
        if (a === addr) throw new DeviceBusyError(addr, reasons);
        throw new IommuGroupNotViableError(addr, group, `${a} shares the group and is in use: ${reasons.join('; ')}`, {
          cause: new DeviceBusyError(a, reasons),
        });
      }
    }
    members.push(m);
  }
  return { device, iommuGroup: group, members };
}

/**
 * Binds a device and every other device of its IOMMU group to vfio-pci, after
 * {@link checkVfioGroup}. Devices already on vfio-pci are accepted and left as they are. If any
 * step fails, the devices already changed are restored and {@link DeviceBindError} is thrown
 * (`restored` says whether that fully worked).
 *
 * Runs under the host lock of the group, and claims the group for this binding until
 * {@link releaseVfio}: while a claim of another binding is there and a member of the group is
 * still on vfio-pci, the bind is refused with {@link IommuGroupInUseError}, which names the
 * holder (a group goes to one VM at a time). A claim whose devices are all back as they were
 * before its bind (given back by hand, or left by a crash before the first write) is stale and
 * replaced.
 *
 * Equivalent, per device: `echo vfio-pci > /sys/bus/pci/devices/ADDR/driver_override;
 * echo ADDR > /sys/bus/pci/drivers/ORIG/unbind; echo ADDR > /sys/bus/pci/drivers_probe`, all
 * under `flock /run/lock/vmpod/vfio-group-N.lock`.
 */
export async function bindVfio(address: string, options: VfioBindOptions = {}): Promise<VfioBinding> {
  const addr = pciAddress(address, 'address');
  const owner = options.owner === undefined ? `pid ${process.pid}` : ownerOf(options.owner, 'owner');
  const claimId = options.claimId === undefined ? randomUUID() : claimIdOf(options.claimId, 'claimId');
  const sysfs = sysfsOf(options);
  // The group to lock; everything is read again under the lock.
  const group = (await pciDevice(addr, { sysfs })).iommuGroup;
  if (group === null) {
    await inspectGroup(addr, { ...options, sysfs }); // throws the reason (no vfio-pci, or no IOMMU)
    throw new IommuGroupNotViableError(addr, undefined, 'it has no IOMMU group');
  }
  const { dir, lock } = await acquireHostLock(groupLockName(group), { ...options, sysfs });
  try {
    const { device, iommuGroup, members } = await inspectGroup(addr, { ...options, sysfs });
    if (iommuGroup !== group) {
      throw new IommuGroupNotViableError(addr, iommuGroup, `its IOMMU group changed from ${group} while it was being bound`);
    }
    const held = await readClaim(dir, group);
    if (held !== undefined && claimHolds(held, members)) {
      throw new IommuGroupInUseError(device.address, group, held.holder, claimPath(dir, group));
    }
    const record: VfioBindingRecord = {
      address: device.address,
      iommuGroup,
      devices: members.map((m) => ({
        address: m.address,
        originalDriver: m.driver,
        originalDriverOverride: m.driverOverride,
        alreadyBound: m.driver === VFIO,
      })),
      claimId,
      owner,
    };
    // The claim first: whoever comes next (after a crash too) sees the group taken.
    await writeClaim(dir, group, { owner, pid: process.pid, since: new Date().toISOString(), address: record.address, claimId, record });
    const touched: VfioDeviceRecord[] = [];
    try {
      for (const d of record.devices) {
        if (d.alreadyBound) continue;
        touched.push(d);
        const devDir = devicePath(d.address);
        await sysfs.write(`${devDir}/driver_override`, VFIO);
        if (d.originalDriver !== null) await sysfs.write(`bus/pci/drivers/${d.originalDriver}/unbind`, d.address);
        await sysfs.write('bus/pci/drivers_probe', d.address);
        const now = await sysfs.linkName(`${devDir}/driver`);
        if (now !== VFIO) {
          throw new Error(`${d.address} is ${now === undefined ? 'unbound' : `bound to ${now}`} after drivers_probe, not to ${VFIO}`);
        }
      }
    } catch (cause) {
      const failures = await restoreDevices(sysfs, touched.reverse());
      // Fully undone: the group is free again. Otherwise the claim stays until a release of this
      // record (or of the one the caller saved before) puts the rest back.
      if (failures.length === 0) await removeClaim(dir, group).catch(() => undefined);
      const what = cause instanceof Error ? cause.message : String(cause);
      throw new DeviceBindError(
        device.address,
        `binding IOMMU group ${iommuGroup} of ${device.address} to ${VFIO} failed: ${what}; ` +
          (failures.length === 0 ? 'every device was put back on its driver' : `could not restore: ${failures.join('; ')}`),
        failures.length === 0,
        failures,
        { cause },
      );
    }
    return new VfioBinding(record, sysfs, options);
  } finally {
    await lock.release();
  }
}

/**
 * Puts every device of a binding back on its original driver and `driver_override`; devices that
 * were already on vfio-pci stay bound. Reads the current state first, so it is idempotent and
 * finishes an interrupted release. Throws {@link DeviceBindError} listing what could not be
 * restored, after trying every device (the claim then stays, and a retry finishes the job).
 *
 * Runs under the host lock of the group, and touches the group only while the binding still
 * holds it:
 * - a record with a `claimId` (made by this version) restores the devices when the group's
 *   claim is its own, then removes the claim; with another binding's claim, or none (it was
 *   released already), nothing is written: the devices belong to whoever holds them now;
 * - a record without one (from an older version, or built by a caller before `bindVfio`
 *   returned) restores the devices when there is no claim (as older versions did), or when the
 *   claim is for exactly this binding (same device, group, members and original drivers: the
 *   bind this record was saved for); with any other claim nothing is written.
 *
 * Equivalent, per device: `echo ADDR > /sys/bus/pci/drivers/vfio-pci/unbind;
 * echo > /sys/bus/pci/devices/ADDR/driver_override; echo ADDR > /sys/bus/pci/drivers/ORIG/bind`,
 * under `flock /run/lock/vmpod/vfio-group-N.lock`, then `rm /run/lock/vmpod/vfio-group-N.json`.
 */
export async function releaseVfio(record: VfioBindingRecord, options: VfioReleaseOptions = {}): Promise<void> {
  const sysfs = sysfsOf(options);
  const devices = checkRecord(record);
  const group = record.iommuGroup;
  const { dir, lock } = await acquireHostLock(groupLockName(group), { ...options, sysfs });
  try {
    const claim = await readClaim(dir, group);
    const ours =
      record.claimId !== undefined
        ? claim?.holder?.claimId === record.claimId
        : claim === undefined || (claim.record !== undefined && sameBinding(claim.record, record));
    if (!ours) return;
    const failures = await restoreDevices(sysfs, [...devices].reverse().filter((d) => !d.alreadyBound));
    if (failures.length > 0) {
      throw new DeviceBindError(record.address, `restoring IOMMU group ${group} failed: ${failures.join('; ')}`, false, failures);
    }
    if (claim !== undefined) await removeClaim(dir, group);
  } finally {
    await lock.release();
  }
}

/** Name of the host lock of an IOMMU group. */
function groupLockName(group: number): string {
  return `vfio-group-${group}`;
}

/** The claim file of a group, next to its lock. */
function claimPath(dir: string, group: number): string {
  return path.join(dir, `vfio-group-${group}.json`);
}

/** What a claim file holds. */
interface ClaimFile extends VfioGroupHolder {
  record: VfioBindingRecord;
}

/** A group's claim: its holder, and the record it was made with (both undefined when unreadable). */
interface Claim {
  holder: VfioGroupHolder | undefined;
  record: VfioBindingRecord | undefined;
}

async function readClaim(dir: string, group: number): Promise<Claim | undefined> {
  let text: string;
  try {
    text = await fs.readFile(claimPath(dir, group), 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  try {
    const c = JSON.parse(text) as Partial<ClaimFile>;
    const holder: VfioGroupHolder = {
      owner: ownerOf(c.owner, 'claim.owner'),
      pid: integer(c.pid, 'claim.pid', 0, 2 ** 31 - 1),
      since: String(c.since),
      address: pciAddress(c.address, 'claim.address'),
      claimId: claimIdOf(c.claimId, 'claim.claimId'),
    };
    checkRecord(c.record as VfioBindingRecord);
    return { holder, record: c.record as VfioBindingRecord };
  } catch {
    return { holder: undefined, record: undefined };
  }
}

/** Writes a group's claim at once (rename), readable by this user only. */
async function writeClaim(dir: string, group: number, claim: ClaimFile): Promise<void> {
  const file = claimPath(dir, group);
  const tmp = `${file}.${process.pid}.tmp`;
  await fs.writeFile(tmp, `${JSON.stringify(claim)}\n`, { mode: 0o600 });
  await fs.rename(tmp, file);
}

async function removeClaim(dir: string, group: number): Promise<void> {
  await fs.rm(claimPath(dir, group), { force: true });
}

/**
 * Whether a claim still holds its group: some member is on vfio-pci, or a device the claimed
 * binding changed is not back on its original driver and `driver_override` (a bind or a release
 * that stopped half-way). Otherwise the claim is left from a binding that is over (its devices
 * were given back by hand) or that never changed anything (a crash right after the claim), and
 * it is stale.
 */
function claimHolds(claim: Claim, members: readonly PciDevice[]): boolean {
  if (members.some((m) => m.driver === VFIO)) return true;
  return (claim.record?.devices ?? []).some((d) => {
    const m = members.find((x) => x.address === d.address);
    return m !== undefined && !d.alreadyBound && (m.driver !== d.originalDriver || m.driverOverride !== d.originalDriverOverride);
  });
}

/** Whether two records describe the same binding of the same group from the same state. */
function sameBinding(a: VfioBindingRecord, b: VfioBindingRecord): boolean {
  return (
    a.address === b.address &&
    a.iommuGroup === b.iommuGroup &&
    a.devices.length === b.devices.length &&
    a.devices.every((d, i) => {
      const e = b.devices[i]!;
      return (
        d.address === e.address &&
        d.originalDriver === e.originalDriver &&
        d.originalDriverOverride === e.originalDriverOverride &&
        d.alreadyBound === e.alreadyBound
      );
    })
  );
}

function ownerOf(value: unknown, field: string): string {
  if (typeof value !== 'string' || !/^[\x20-\x7e]{1,128}$/u.test(value)) {
    throw new InvalidArgumentError(field, `${JSON.stringify(value)} is not an owner (1 to 128 printable ASCII characters)`);
  }
  return value;
}

function claimIdOf(value: unknown, field: string): string {
  if (typeof value !== 'string' || !/^[A-Za-z0-9_.:-]{1,128}$/u.test(value)) {
    throw new InvalidArgumentError(field, `${JSON.stringify(value)} is not a claim id (1 to 128 of [A-Za-z0-9_.:-])`);
  }
  return value;
}

/** A record read back from disk is input too: check every address, driver name, the group and the claim. */
function checkRecord(record: VfioBindingRecord): VfioDeviceRecord[] {
  pciAddress(record?.address, 'record.address');
  integer(record.iommuGroup, 'record.iommuGroup', 0, 2 ** 31 - 1);
  if (record.claimId !== undefined) claimIdOf(record.claimId, 'record.claimId');
  if (record.owner !== undefined) ownerOf(record.owner, 'record.owner');
  if (!Array.isArray(record.devices)) throw new InvalidArgumentError('record.devices', 'must be an array');
  return record.devices.map((d, i) => {
    pciAddress(d.address, `record.devices[${i}].address`);
    for (const [key, value] of [['originalDriver', d.originalDriver], ['originalDriverOverride', d.originalDriverOverride]] as const) {
      if (value !== null && (typeof value !== 'string' || !/^[A-Za-z0-9_.:-]{1,64}$/u.test(value))) {
        throw new InvalidArgumentError(`record.devices[${i}].${key}`, `${JSON.stringify(value)} is not a driver name`);
      }
    }
    return d;
  });
}

/** Restores each device; returns what failed (empty on success). */
async function restoreDevices(sysfs: Sysfs, devices: readonly VfioDeviceRecord[]): Promise<string[]> {
  const failures: string[] = [];
  for (const d of devices) {
    try {
      await restoreDevice(sysfs, d);
    } catch (error) {
      failures.push(`${d.address}: ${error instanceof Error ? error.message : String(error)}`);
    }
  }
  return failures;
}

async function restoreDevice(sysfs: Sysfs, d: VfioDeviceRecord): Promise<void> {
  const dir = devicePath(d.address);
  if (!(await sysfs.exists(dir))) throw new NotFoundError('PCI device', d.address);
  let driver = await sysfs.linkName(`${dir}/driver`);
  if (driver !== undefined && driver !== VFIO && driver !== d.originalDriver) {
    throw new Error(`now bound to ${driver}, neither ${VFIO} nor its original driver: left alone`);
  }
  if (driver === VFIO) {
    await sysfs.write(`bus/pci/drivers/${VFIO}/unbind`, d.address);
    driver = undefined;
  }
  const override = await sysfs.readOptional(`${dir}/driver_override`);
  const current = override === undefined || override === '(null)' || override === '' ? null : override;
  if (current !== d.originalDriverOverride) {
    await sysfs.write(`${dir}/driver_override`, d.originalDriverOverride ?? '\n');
  }
  if (d.originalDriver !== null && driver !== d.originalDriver) {
    await sysfs.write(`bus/pci/drivers/${d.originalDriver}/bind`, d.address);
  }
  const now = (await sysfs.linkName(`${dir}/driver`)) ?? null;
  if (now !== d.originalDriver) {
    throw new Error(`is ${now === null ? 'unbound' : `bound to ${now}`} instead of ${d.originalDriver ?? 'unbound'}`);
  }
}

/** A QEMU `vfio-pci` device: `-device vfio-pci,host=...,id=...` or QMP `device_add`. */
export interface VfioPciDevice {
  driver: 'vfio-pci';
  /** Host PCI address `DDDD:BB:DD.F`. */
  host: string;
  /** QEMU device id (for `device_del` and events). */
  id: string;
  /** Bus to plug into, e.g. a `pcie-root-port` id; omitted: QEMU picks the root bus. */
  bus?: string;
  /** Slot[.function] on that bus, e.g. `0x0`. */
  addr?: string;
  multifunction?: boolean;
  /** 0 hides the option ROM BAR (`rombar=0`). */
  rombar?: 0 | 1;
}

const QEMU_ID = /^[A-Za-z][A-Za-z0-9_.-]{0,63}$/u;

/** Options of {@link vfioPciDevice}. */
export interface VfioPciDeviceOptions {
  id: string;
  bus?: string | undefined;
  addr?: string | undefined;
  multifunction?: boolean | undefined;
  rombar?: 0 | 1 | undefined;
}

/** Describes the QEMU device for a host PCI device (validated: QEMU ids, bus, slot address). */
export function vfioPciDevice(host: string, options: VfioPciDeviceOptions): VfioPciDevice {
  const device: VfioPciDevice = { driver: VFIO, host: pciAddress(host, 'host'), id: qemuId(options.id, 'id') };
  if (options.bus !== undefined) device.bus = qemuId(options.bus, 'bus');
  if (options.addr !== undefined) {
    if (typeof options.addr !== 'string' || !/^(?:0x)?[0-9a-fA-F]{1,2}(?:\.[0-7])?$/u.test(options.addr)) {
      throw new InvalidArgumentError('addr', `${JSON.stringify(options.addr)} is not a PCI slot address (e.g. 0x0 or 0x1.2)`);
    }
    device.addr = options.addr;
  }
  if (options.multifunction !== undefined) device.multifunction = options.multifunction;
  if (options.rombar !== undefined) {
    if (options.rombar !== 0 && options.rombar !== 1) throw new InvalidArgumentError('rombar', 'must be 0 or 1');
    device.rombar = options.rombar;
  }
  return device;
}

function qemuId(value: unknown, field: string): string {
  if (typeof value !== 'string' || !QEMU_ID.test(value)) {
    throw new InvalidArgumentError(field, `${JSON.stringify(value)} is not a QEMU id (a letter, then up to 63 of [A-Za-z0-9_.-])`);
  }
  return value;
}

/** The `-device` argument: `vfio-pci,host=0000:3b:00.1,id=hostdev0,bus=rp1`. */
export function vfioQemuArgument(device: VfioPciDevice): string {
  const parts = [device.driver, `host=${device.host}`, `id=${device.id}`];
  if (device.bus !== undefined) parts.push(`bus=${device.bus}`);
  if (device.addr !== undefined) parts.push(`addr=${device.addr}`);
  if (device.multifunction !== undefined) parts.push(`multifunction=${device.multifunction ? 'on' : 'off'}`);
  if (device.rombar !== undefined) parts.push(`rombar=${device.rombar}`);
  return parts.join(',');
}

/**
 * The arguments of QMP `device_add` for hotplug (typed JSON values, as QEMU's QMP expects):
 * `{"execute":"device_add","arguments":{"driver":"vfio-pci","host":"0000:3b:00.1","id":"hostdev0","bus":"rp1"}}`.
 */
export function vfioDeviceAddArguments(device: VfioPciDevice): Record<string, string | number | boolean> {
  const args: Record<string, string | number | boolean> = { driver: device.driver, host: device.host, id: device.id };
  if (device.bus !== undefined) args['bus'] = device.bus;
  if (device.addr !== undefined) args['addr'] = device.addr;
  if (device.multifunction !== undefined) args['multifunction'] = device.multifunction;
  if (device.rombar !== undefined) args['rombar'] = device.rombar;
  return args;
}
