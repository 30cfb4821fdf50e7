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
import { randomUUID } from 'node:crypto';
import { runAll } from '../../cleanup.js';
import { InvalidArgumentError, NotFoundError } from '../../errors.js';
import type { VfioPassthroughDevice } from '../../hypervisor/hypervisor.js';
import { bindVfio, checkVfioGroup, releaseVfio, type VfioBindingRecord } from '../../devices/vfio.js';
import type { GuestDevice } from '../../agent/messages.js';
import { resolveNfvConfig, type PciPassthrough } from '../../nfv/config.js';
import { newOwner } from '../record.js';
import { callOptions, unplugEntry, type GuestContext, type PendingEntry, type ResourceContext, type SandboxResource, type VmContribution } from './resource.js';
import { locateInGuest, placeInGuest } from './pci-path.js';

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

type DeviceEntry = PciDeviceInfo & PendingEntry;

export interface PciDevicesState {
  devices: DeviceEntry[];
}

function parseState(value: unknown): PciDevicesState {
  const s = value as Partial<PciDevicesState> | undefined;
  const devices = Array.isArray(s?.devices) ? s.devices : [];
  return {
    devices: devices.filter(
      (d): d is DeviceEntry =>
        typeof d === 'object' && d !== null && typeof d.id === 'string' && typeof d.address === 'string' &&
        typeof d.binding === 'object' && d.binding !== null && Array.isArray(d.binding.devices),
    ),
  };
}

/**
 * What `bindVfio` will do, as a record: the group's drivers as they are now, and the host-wide
 * claim on the group the binding will take (so a release after a crash gives back exactly this
 * binding's group, and another sandbox's claim is never touched).
 */
async function plannedBinding(sysfs: string, device: { address: string; force: boolean }, claim: { claimId: string; owner: string }): Promise<VfioBindingRecord> {
  const { device: dev, iommuGroup, members } = await checkVfioGroup(device.address, { sysfs, force: device.force });
  return {
    address: dev.address,
    iommuGroup,
    devices: members.map((m) => ({ address: m.address, originalDriver: m.driver, originalDriverOverride: m.driverOverride, alreadyBound: m.driver === 'vfio-pci' })),
    ...claim,
  };
}

/**
 * Binds one device's IOMMU group to vfio-pci inside `update`: recorded (with the drivers to
 * restore) before the first sysfs write, the binding's own record after.
 */
async function bind(
  ctx: ResourceContext<PciDevicesState>,
  device: { address: string; id: string; force: boolean },
  hotplugged: boolean,
): Promise<PciDeviceInfo> {
  const sysfs = ctx.config.sysfs;
  return ctx.update(async (state, save) => {
    if (state.devices.some((d) => d.address === device.address)) throw new InvalidArgumentError('address', `${device.address} is already passed to this sandbox`);
    if (state.devices.some((d) => d.id === device.id) || ctx.config.extraDevices.some((d) => d.id === device.id)) {
      throw new InvalidArgumentError('id', `the sandbox already has a device "${device.id}"`);
    }
    const claim = { claimId: randomUUID(), owner: `sandbox ${ctx.sandboxId}` };
    const info: DeviceEntry = { id: device.id, address: device.address, binding: await plannedBinding(sysfs, device, claim), hotplugged };
    if (hotplugged) info.pending = newOwner();
    state.devices.push(info);
    await save();
    try {
      info.binding = (await bindVfio(device.address, { sysfs, force: device.force, ...claim })).record;
    } catch (error) {
      // bindVfio restored what it changed; if it could not, the record stays for release.
      if ((error as { restored?: boolean }).restored !== false) state.devices = state.devices.filter((d) => d !== info);
      await save();
      throw error;
    }
    return info;
  });
}

/** The VM device of a passed-through PCI device. */
export function vfioDevice(info: { id: string; address: string }): VfioPassthroughDevice {
  return { kind: 'vfio-pci', id: info.id, host: info.address, rootPort: true };
}

export class PciDevicesResource implements SandboxResource<PciDevicesState> {
  readonly kind = PCI_DEVICES_KIND;

  parse(value: unknown): PciDevicesState {
    return parseState(value);
  }

  async prepare(ctx: ResourceContext<PciDevicesState>): Promise<VmContribution> {
    const wanted = ctx.config.devices ?? []; // records of older versions lack the field
    const bound: PciDeviceInfo[] = [];
    for (const device of wanted) bound.push(await bind(ctx, device, false));
    return bound.length === 0 ? {} : { devices: bound.map(vfioDevice) };
  }

  async attach(ctx: GuestContext<PciDevicesState>): Promise<void> {
    const devices = ctx.state.devices;
    if (devices.length === 0) return;
    // No netdev wait: the guest may have no driver for the device (the VNF brings its own).
    const placed = new Map<string, Awaited<ReturnType<typeof placeInGuest>>>();
    for (const d of devices) placed.set(d.id, await placeInGuest(ctx, d.id, false));
    await ctx.update((state) => {
      for (const d of state.devices) Object.assign(d, placed.get(d.id) ?? {});
    });
  }

  /** Restores every group's drivers (the VM is gone); keeps the records that could not be restored. */
  async release(ctx: ResourceContext<PciDevicesState>): Promise<void> {
    await ctx.update(async (state, save) => {
      await runAll(
        [...state.devices].reverse().map((d) => [
          `device ${d.id} (${d.address})`,
          async () => {
            await releaseVfio(d.binding, { sysfs: ctx.config.sysfs });
            state.devices = state.devices.filter((x) => x !== d);
            await save();
          },
        ] as const),
        'could not give passed-through devices back to their drivers',
      );
    });
  }
}

/** Checks `device` (its id defaults to `hostdevN`, N the count of devices so far) and hot plugs it with {@link hotplugPci}. */
export async function addPciDevice(ctx: GuestContext<PciDevicesState>, device: PciPassthrough): Promise<PciDeviceInfo> {
  const count = pciDevices(ctx.state).length + (ctx.config.devices ?? []).length;
  const [resolved] = resolveNfvConfig(
    { devices: [{ ...device, id: device.id ?? `hostdev${count}` }] },
    { memoryMiB: ctx.config.memoryMiB, machine: ctx.config.machine, sharedMemory: false, volumePages: 0 },
  ).devices;
  return hotplugPci(ctx, resolved!);
}

/**
 * Binds and hot plugs a device into a running sandbox. The binding is recorded and made under
 * the sandbox lock; the hotplug and the guest's finding it run without it; on failure the device
 * is unplugged and the drivers restored.
 */
export async function hotplugPci(ctx: GuestContext<PciDevicesState>, device: { address: string; id: string; force: boolean }): Promise<PciDeviceInfo> {
  const info = await bind(ctx, device, true);
  let plugged = false;
  try {
    const placed = await ctx.vm.hotplug({ kind: 'vfio-pci', id: info.id, host: info.address }, callOptions(ctx));
    plugged = true;
    const guest = await locateInGuest(ctx, placed.pciPath, false);
    return await ctx.update((state) => {
      const entry = state.devices.find((d) => d.id === info.id);
      if (!entry) throw new NotFoundError('passed-through device', info.id);
      entry.pciPath = placed.pciPath;
      if (guest) entry.guest = guest;
      delete entry.pending;
      return { ...entry };
    });
  } catch (error) {
    try {
      if (plugged) await ctx.vm.unplug(info.id, callOptions(ctx));
      await ctx.update(async (state) => {
        const entry = state.devices.find((d) => d.id === info.id);
        if (!entry) return;
        await releaseVfio(entry.binding, { sysfs: ctx.config.sysfs });
        state.devices = state.devices.filter((d) => d !== entry);
      });
    } catch (rollback) {
      // The record stays (release retries it); say both what failed and what could not be undone.
      throw Object.assign(error as Error, { rollbackError: rollback });
    }
    throw error;
  }
}

/** Unplugs a passed-through device (once the guest let go of it) and restores its drivers. */
export async function unplugPci(ctx: GuestContext<PciDevicesState>, id: string): Promise<void> {
  await unplugEntry(ctx, id, 'passed-through device', (state) => state.devices, async (state, entry) => {
    await releaseVfio(entry.binding, { sysfs: ctx.config.sysfs });
    state.devices = state.devices.filter((d) => d !== entry);
  });
}

/** The passed-through devices a sandbox's record lists. */
export function pciDevices(state: unknown): PciDeviceInfo[] {
  return parseState(state).devices.map(({ pending: _pending, ...d }) => d);
}
