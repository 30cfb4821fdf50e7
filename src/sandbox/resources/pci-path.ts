/**
 * Where a device landed in the guest: its PCI path, Kata's form `SS/00` (slot of the PCIe root
 * port on bus 0, then the slot on the port's bus). The guest finds the device under
 * `/sys/bus/pci/devices/0000:00:SS.0/0000:BB:00.0/` (BB being the bus number the guest gave the
 * port), e.g. for a NIC `.../virtio*\/net/IFNAME`. See docs/sriov-vfio.md.
 *
 * @internal
 * @module
 */
import type { GuestDevice } from '../../agent/messages.js';
import type { VirtualMachine } from '../../hypervisor/hypervisor.js';
import type { GuestContext } from './resource.js';
import { rootPortPciPath } from '../../hypervisor/qemu/cmdline.js';
import { QemuVm } from '../../hypervisor/qemu/vm.js';

/**
 * The guest PCI path of device `id` when it sits on a root port, from QEMU's QOM tree
 * (`qom-get /machine/peripheral/ID parent_bus` -> `/machine/peripheral/rpN/rpN`); undefined on
 * the root complex, on microvm, or with another hypervisor.
 */
export async function guestPciPath(vm: VirtualMachine, id: string, signal?: AbortSignal): Promise<string | undefined> {
  const qmp = vm instanceof QemuVm && vm.handle.machine === 'q35' ? vm.qmp : undefined;
  if (!qmp) return undefined;
  const bus = await qmp.execute<string>('qom-get', { path: `/machine/peripheral/${id}`, property: 'parent_bus' }, signal ? { signal } : {});
  const port = /\/machine\/peripheral\/(rp\d+)\/\1$/u.exec(bus)?.[1];
  return port === undefined ? undefined : rootPortPciPath(port);
}

/** The guest sysfs directory of the root port of `pciPath` (`12/00` -> `/sys/bus/pci/devices/0000:00:12.0`). */
export function guestPortDir(pciPath: string): string {
  const slot = pciPath.split('/')[0] ?? '';
  return `/sys/bus/pci/devices/0000:00:${slot}.0`;
}

/**
 * Tells the agent where a device landed and waits until the guest has it (with `netdev`, until
 * it has a network interface): what the guest calls it. Undefined when the device has no PCI
 * path (microvm, the root complex) or the agent predates `find-device`.
 */
export async function locateInGuest(ctx: GuestContext<unknown>, pciPath: string | undefined, netdev: boolean): Promise<GuestDevice | undefined> {
  if (pciPath === undefined || !ctx.agent.info.features.includes('find-device')) return undefined;
  return ctx.agent.findDevice({ pciPath, netdev, timeoutMs: 30_000 }, ctx.signal ? { signal: ctx.signal } : {});
}

/** Where device `id` landed after a cold plug: its guest PCI path (from QEMU) and what the guest made of it. */
export async function placeInGuest(ctx: GuestContext<unknown>, id: string, netdev: boolean): Promise<{ pciPath?: string; guest?: GuestDevice }> {
  const pciPath = await guestPciPath(ctx.vm, id, ctx.signal);
  const guest = await locateInGuest(ctx, pciPath, netdev);
  return { ...(pciPath === undefined ? {} : { pciPath }), ...(guest ? { guest } : {}) };
}
