/**
 * Host PCI devices passed through to a sandbox with VFIO, as a {@link SandboxResource}. At
 * prepare each device is bound, with every device of its IOMMU group, to vfio-pci (original
 * drivers recorded in the sandbox record BEFORE the first sysfs write; an up netdev refused
 * unless `force`), then given to QEMU as `-device vfio-pci,host=ADDR,id=ID,bus=rpN` on a PCIe
 * root port of its own. Once the guest runs, the device's guest PCI path is recorded (see
 * pci-path.ts). Release (stop, delete, or a failed start) puts the original drivers back.
 *
 * Hotplug into a running sandbox: bind, then QMP `device_add` on a free root port; unplug:
 * `device_del`, wait for the guest, restore the drivers.
 *
 * @internal
 * @module
 */
import { InvalidArgumentError, NotFoundError } from '../errors.js';
import type { VfioPassthroughDevice } from '../hypervisor/hypervisor.js';
import { bindVfio, checkVfioGroup, releaseVfio, type VfioBindingRecord } from '../devices/vfio.js';
import type { GuestContext, ResourceContext, SandboxResource, VmContribution } from '../sandbox/resource.js';
import { locateInGuest, placeInGuest } from './pci-path.js';
import type { GuestDevice } from '../agent/messages.js';

/** Key of this resource's state in the sandbox record. */
export const PCI_DEVICES_KIND = 'devices';

/** A passed-through device of a sandbox. */
export interface PciDeviceInfo {
  /** Device id in the VM. */
  id: string;
  /** Host PCI address. */
  address: string;
  /** What was bound to vfio-pci and the drivers to restore (the whole IOMMU group). */
  binding: VfioBindingRecord;
  /** Guest PCI path (`SS/00`), once the VM runs. */
  pciPath?: string;
  /** What the guest made of it (address, driver, interfaces), once it found it. */
  guest?: GuestDevice;
  hotplugged: boolean;
}

interface PciDevicesState {
  devices: PciDeviceInfo[];
}

function stateOf(ctx: { state: unknown }): PciDevicesState {
  const s = ctx.state as Partial<PciDevicesState> | undefined;
  return { devices: Array.isArray(s?.devices) ? s.devices : [] };
}

/**
 * Binds one device's IOMMU group to vfio-pci, recording it in `state` (saved) before the first
 * write. The record is what `bindVfio` will do: the drivers as they are now.
 */
async function bind(
  ctx: ResourceContext,
  state: PciDevicesState,
  device: { address: string; id: string; force: boolean },
  hotplugged: boolean,
): Promise<PciDeviceInfo> {
  if (state.devices.some((d) => d.address === device.address)) {
    throw new InvalidArgumentError('address', `${device.address} is already passed to this sandbox`);
  }
  const sysfs = ctx.config.sysfs;
  const { device: dev, iommuGroup, members } = await checkVfioGroup(device.address, { sysfs, force: device.force });
  const info: PciDeviceInfo = {
    id: device.id,
    address: dev.address,
    binding: {
      address: dev.address,
      iommuGroup,
      devices: members.map((m) => ({
        address: m.address,
        originalDriver: m.driver,
        originalDriverOverride: m.driverOverride,
        alreadyBound: m.driver === 'vfio-pci',
      })),
    },
    hotplugged,
  };
  state.devices.push(info);
  await ctx.save(state);
  try {
    info.binding = (await bindVfio(device.address, { sysfs, force: device.force })).record;
  } catch (error) {
    // bindVfio restored what it changed; if it could not, the record stays for release.
    if ((error as { restored?: boolean }).restored !== false) state.devices = state.devices.filter((d) => d !== info);
    await ctx.save(state);
    throw error;
  }
  await ctx.save(state);
  return info;
}

/** The VM device of a passed-through PCI device. */
export function vfioDevice(info: { id: string; address: string }): VfioPassthroughDevice {
  return { kind: 'vfio-pci', id: info.id, host: info.address, rootPort: true };
}

export class PciDevicesResource implements SandboxResource {
  readonly kind = PCI_DEVICES_KIND;

  async prepare(ctx: ResourceContext): Promise<VmContribution> {
    const wanted = ctx.config.devices ?? []; // records of older versions lack the field
    if (wanted.length === 0) return {};
    const state = stateOf(ctx);
    const bound: PciDeviceInfo[] = [];
    for (const device of wanted) bound.push(await bind(ctx, state, device, false));
    return { devices: bound.map(vfioDevice) };
  }

  async attach(ctx: GuestContext): Promise<void> {
    const state = stateOf(ctx);
    if (state.devices.length === 0) return;
    // No netdev wait: the guest may have no driver for the device (the VNF brings its own).
    for (const d of state.devices) Object.assign(d, await placeInGuest(ctx, d.id, false));
    await ctx.save(state);
  }

  /** Restores every group's drivers (the VM is gone); keeps the records that could not be restored. */
  async release(ctx: ResourceContext): Promise<void> {
    const state = stateOf(ctx);
    const failures: unknown[] = [];
    for (const d of [...state.devices].reverse()) {
      try {
        await releaseVfio(d.binding, { sysfs: ctx.config.sysfs });
        state.devices = state.devices.filter((x) => x !== d);
      } catch (error) {
        failures.push(error);
      }
    }
    await ctx.save(state);
    if (failures.length > 0) throw failures[0];
  }
}

/** Binds and hot plugs a device into a running sandbox; on failure the drivers are restored. */
export async function hotplugPci(ctx: GuestContext, device: { address: string; id: string; force: boolean }): Promise<PciDeviceInfo> {
  const state = stateOf(ctx);
  if (state.devices.some((d) => d.id === device.id)) throw new InvalidArgumentError('id', `the sandbox already has a device "${device.id}"`);
  const info = await bind(ctx, state, device, true);
  let plugged = false;
  try {
    const placed = await ctx.vm.hotplug({ kind: 'vfio-pci', id: info.id, host: info.address }, ctx.signal ? { signal: ctx.signal } : {});
    plugged = true;
    info.pciPath = placed.pciPath;
    const guest = await locateInGuest(ctx, placed.pciPath, false);
    if (guest) info.guest = guest;
  } catch (error) {
    try {
      if (plugged) await ctx.vm.unplug(info.id, ctx.signal ? { signal: ctx.signal } : {});
      await releaseVfio(info.binding, { sysfs: ctx.config.sysfs });
    } catch (rollback) {
      // Keep the record (release retries it) and say both what failed and what could not be undone.
      await ctx.save(state);
      throw Object.assign(error as Error, { rollbackError: rollback });
    }
    state.devices = state.devices.filter((d) => d !== info);
    await ctx.save(state);
    throw error;
  }
  await ctx.save(state);
  return info;
}

/** Unplugs a passed-through device (once the guest let go of it) and restores its drivers. */
export async function unplugPci(ctx: GuestContext, id: string): Promise<void> {
  const state = stateOf(ctx);
  const info = state.devices.find((d) => d.id === id);
  if (!info) throw new NotFoundError('passed-through device', id);
  await ctx.vm.unplug(id, ctx.signal ? { signal: ctx.signal } : {});
  await releaseVfio(info.binding, { sysfs: ctx.config.sysfs });
  state.devices = state.devices.filter((d) => d !== info);
  await ctx.save(state);
}

/** The passed-through devices a sandbox's record lists. */
export function pciDevices(state: unknown): PciDeviceInfo[] {
  return stateOf({ state }).devices;
}
