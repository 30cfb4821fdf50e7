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
 * @module
 */
import { InvalidArgumentError, NotFoundError } from '../errors.js';
import { pciAddress } from '../validate.js';
import { DeviceBindError, DeviceBusyError, FeatureUnavailableError, IommuGroupNotViableError } from './errors.js';
import { devicePath, inUseReasons, iommuGroupDevices, pciDevice, type AddressSource, type PciDevice } from './pci.js';
import { sysfsOf, type Sysfs, type SysfsOptions } from './sysfs.js';

const VFIO = 'vfio-pci';

/** Options of {@link bindVfio}. */
export interface VfioBindOptions extends SysfsOptions {
  /** Take devices whose netdev is up or has addresses, or that have VFs enabled. */
  force?: boolean | undefined;
  /** Where netdev addresses come from (default: the host's). */
  addresses?: AddressSource | undefined;
}

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
}

/** A device group bound to vfio-pci; {@link release} restores the original drivers. */
export class VfioBinding {
  private released = false;

  constructor(
    readonly record: VfioBindingRecord,
    private readonly sysfs: Sysfs,
  ) {}

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
    await releaseVfio(this.record, { sysfs: this.sysfs });
    this.released = true;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.release();
  }
}

/**
 * Checks, without writing anything, that a device's IOMMU group can be bound to vfio-pci:
 * vfio-pci is loaded, the device has a group, no member is a bridge, every bound member's
 * driver can be unbound, and no member is in use (unless `force`). Returns the members.
 */
export async function checkVfioGroup(
  address: string,
  options: VfioBindOptions = {},
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
 * Equivalent, per device: `echo vfio-pci > /sys/bus/pci/devices/ADDR/driver_override;
 * echo ADDR > /sys/bus/pci/drivers/ORIG/unbind; echo ADDR > /sys/bus/pci/drivers_probe`.
 */
export async function bindVfio(address: string, options: VfioBindOptions = {}): Promise<VfioBinding> {
  const sysfs = sysfsOf(options);
  const { device, iommuGroup, members } = await checkVfioGroup(address, { ...options, sysfs });
  const record: VfioBindingRecord = {
    address: device.address,
    iommuGroup,
    devices: members.map((m) => ({
      address: m.address,
      originalDriver: m.driver,
      originalDriverOverride: m.driverOverride,
      alreadyBound: m.driver === VFIO,
    })),
  };
  const touched: VfioDeviceRecord[] = [];
  try {
    for (const d of record.devices) {
      if (d.alreadyBound) continue;
      touched.push(d);
      const dir = devicePath(d.address);
      await sysfs.write(`${dir}/driver_override`, VFIO);
      if (d.originalDriver !== null) await sysfs.write(`bus/pci/drivers/${d.originalDriver}/unbind`, d.address);
      await sysfs.write('bus/pci/drivers_probe', d.address);
      const now = await sysfs.linkName(`${dir}/driver`);
      if (now !== VFIO) {
        throw new Error(`${d.address} is ${now === undefined ? 'unbound' : `bound to ${now}`} after drivers_probe, not to ${VFIO}`);
      }
    }
  } catch (cause) {
    const failures = await restoreDevices(sysfs, touched.reverse());
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
  return new VfioBinding(record, sysfs);
}

/**
 * Puts every device of a binding back on its original driver and `driver_override`; devices that
 * were already on vfio-pci stay bound. Reads the current state first, so it is idempotent and
 * finishes an interrupted release. Throws {@link DeviceBindError} listing what could not be
 * restored, after trying every device.
 *
 * Equivalent, per device: `echo ADDR > /sys/bus/pci/drivers/vfio-pci/unbind;
 * echo > /sys/bus/pci/devices/ADDR/driver_override; echo ADDR > /sys/bus/pci/drivers/ORIG/bind`.
 */
export async function releaseVfio(record: VfioBindingRecord, options: SysfsOptions = {}): Promise<void> {
  const sysfs = sysfsOf(options);
  const devices = checkRecord(record);
  const failures = await restoreDevices(sysfs, [...devices].reverse().filter((d) => !d.alreadyBound));
  if (failures.length > 0) {
    throw new DeviceBindError(record.address, `restoring IOMMU group ${record.iommuGroup} failed: ${failures.join('; ')}`, false, failures);
  }
}

/** A record read back from disk is input too: check every address and driver name. */
function checkRecord(record: VfioBindingRecord): VfioDeviceRecord[] {
  pciAddress(record?.address, 'record.address');
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
