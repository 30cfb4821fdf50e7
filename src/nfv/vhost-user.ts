/**
 * vhost-user NICs of a sandbox as a {@link SandboxResource}: a virtio-net device whose data
 * plane is a vhost-user backend (DPDK testpmd with a `net_vhost` vdev, OVS-DPDK, VPP), cold
 * plugged at start or hot plugged into a running sandbox. Such a NIC makes the guest RAM a
 * shared mapping (the backend maps it), which the sandbox then gets (memfd, or hugepages).
 *
 * QEMU equivalent (client mode, q35 under TCG):
 * ```
 * -chardev socket,id=chr-vhu0,path=SOCK -netdev vhost-user,id=net-vhu0,chardev=chr-vhu0 \
 * -device virtio-net-pci,id=vhu0,netdev=net-vhu0,vectors=0,bus=rpN
 * ```
 * (`vectors=0`: QEMU 7.2 under TCG segfaults when the guest driver enables MSI-X on it.)
 * Hotplug: QMP `chardev-add`, `netdev_add`, `device_add`.
 *
 * @internal
 * @module
 */
import fs from 'node:fs/promises';
import { InvalidArgumentError, NotFoundError } from '../errors.js';
import type { VhostUserNetDevice } from '../hypervisor/hypervisor.js';
import type { GuestContext, ResourceContext, SandboxResource, VmContribution } from '../sandbox/resource.js';
import type { ResolvedSandboxConfig } from '../sandbox/config.js';
import type { ResolvedVhostUserNic } from './config.js';
import { VhostUserSocketError } from './errors.js';
import { locateInGuest, placeInGuest } from './pci-path.js';
import type { GuestDevice } from '../agent/messages.js';

/** Key of this resource's state in the sandbox record. */
export const VHOST_USER_KIND = 'vhostUser';

/** A vhost-user NIC of a running sandbox. */
export interface VhostUserNicInfo {
  id: string;
  socket: string;
  mode: 'client' | 'server';
  /** Guest PCI path (`SS/00`) when the NIC sits on a root port. */
  pciPath?: string;
  /** What the guest made of it (address, driver, interface name), once it found it. */
  guest?: GuestDevice;
  /** Added to the running sandbox (dropped at stop), rather than from its config. */
  hotplugged: boolean;
}

interface VhostUserState {
  /** Server-mode sockets QEMU will create (removed on release). */
  serverSockets: string[];
  nics: VhostUserNicInfo[];
}

function stateOf(ctx: ResourceContext): VhostUserState {
  const s = ctx.state as Partial<VhostUserState> | undefined;
  return {
    serverSockets: Array.isArray(s?.serverSockets) ? s.serverSockets.filter((x) => typeof x === 'string') : [],
    nics: Array.isArray(s?.nics) ? s.nics : [],
  };
}

/** The VM device of a NIC. */
export function vhostUserDevice(nic: ResolvedVhostUserNic): VhostUserNetDevice {
  return {
    kind: 'vhost-user-net',
    id: nic.id,
    socket: nic.socket,
    mode: nic.mode,
    ...(nic.rootPort ? { rootPort: true } : {}),
    ...(nic.mac === undefined ? {} : { mac: nic.mac }),
    ...(nic.queues === undefined ? {} : { queues: nic.queues }),
    ...(nic.mtu === undefined ? {} : { mtu: nic.mtu }),
  };
}

/**
 * Checks the socket of a NIC before the VM is started: in client mode the backend must listen
 * there ({@link VhostUserSocketError} `missing`/`not-a-socket`); in server mode nothing may be
 * there but a socket this sandbox left (`in-use`).
 */
export async function checkVhostUserSocket(nic: { socket: string; mode: 'client' | 'server' }, ours: readonly string[] = []): Promise<void> {
  const stat = await fs.lstat(nic.socket).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined;
    throw error;
  });
  if (nic.mode === 'client') {
    if (!stat) throw new VhostUserSocketError(nic.socket, 'missing');
    if (!stat.isSocket()) throw new VhostUserSocketError(nic.socket, 'not-a-socket');
    return;
  }
  if (stat) {
    if (!stat.isSocket() || !ours.includes(nic.socket)) throw new VhostUserSocketError(nic.socket, 'in-use');
    await fs.rm(nic.socket, { force: true });
  }
}

/** Whether a sandbox's guest RAM is a shared mapping (vhost-user backends need that). */
export function hasSharedMemory(config: ResolvedSandboxConfig): boolean {
  return config.sharedFs || (config.vhostUser ?? []).length > 0 || config.hugepages?.backRam === true;
}

export class VhostUserResource implements SandboxResource {
  readonly kind = VHOST_USER_KIND;

  async prepare(ctx: ResourceContext): Promise<VmContribution> {
    const nics = ctx.config.vhostUser ?? []; // records of older versions lack the field
    if (nics.length === 0) return {};
    const state = stateOf(ctx);
    for (const nic of nics) await checkVhostUserSocket(nic, state.serverSockets);
    const servers = nics.filter((n) => n.mode === 'server').map((n) => n.socket);
    state.serverSockets = [...new Set([...state.serverSockets, ...servers])];
    state.nics = nics.map((n) => ({ id: n.id, socket: n.socket, mode: n.mode, hotplugged: false }));
    await ctx.save(state);
    return { devices: nics.map(vhostUserDevice), sharedMemory: true };
  }

  async attach(ctx: GuestContext): Promise<void> {
    const state = stateOf(ctx);
    if (state.nics.length === 0) return;
    for (const nic of state.nics) Object.assign(nic, await placeInGuest(ctx, nic.id, true));
    await ctx.save(state);
  }

  async release(ctx: ResourceContext): Promise<void> {
    const state = stateOf(ctx);
    for (const socket of state.serverSockets) await fs.rm(socket, { force: true });
    await ctx.save({ serverSockets: [], nics: [] });
  }
}

/** Hot plugs a NIC into a running sandbox's VM (q35); see {@link hotplugVhostUserNic}. */
export async function hotplugNic(ctx: GuestContext, nic: ResolvedVhostUserNic): Promise<VhostUserNicInfo> {
  if (!hasSharedMemory(ctx.config)) {
    throw new InvalidArgumentError(
      'nic',
      'the guest RAM of this sandbox is private, and a vhost-user backend must map it: create the sandbox with sharedFs, hugepages or a vhost-user NIC',
    );
  }
  const state = stateOf(ctx);
  if (state.nics.some((n) => n.id === nic.id) || ctx.config.extraDevices.some((d) => d.id === nic.id)) {
    throw new InvalidArgumentError('nic.id', `the sandbox already has a device "${nic.id}"`);
  }
  await checkVhostUserSocket(nic, state.serverSockets);
  if (nic.mode === 'server') {
    state.serverSockets.push(nic.socket);
    await ctx.save(state);
  }
  const placed = await ctx.vm.hotplug(vhostUserDevice(nic), ctx.signal ? { signal: ctx.signal } : {});
  const info: VhostUserNicInfo = { id: nic.id, socket: nic.socket, mode: nic.mode, pciPath: placed.pciPath, hotplugged: true };
  state.nics.push(info);
  await ctx.save(state);
  try {
    const guest = await locateInGuest(ctx, placed.pciPath, true);
    if (guest) info.guest = guest;
  } catch (error) {
    await unplugNic(ctx, nic.id).catch(() => undefined); // the guest never saw it: take it back
    throw error;
  }
  await ctx.save(state);
  return info;
}

/** Removes a NIC from a running sandbox's VM once the guest released it. */
export async function unplugNic(ctx: GuestContext, id: string): Promise<void> {
  const state = stateOf(ctx);
  const nic = state.nics.find((n) => n.id === id);
  if (!nic) throw new NotFoundError('vhost-user NIC', id);
  await ctx.vm.unplug(id, ctx.signal ? { signal: ctx.signal } : {});
  state.nics = state.nics.filter((n) => n !== nic);
  if (nic.mode === 'server') {
    await fs.rm(nic.socket, { force: true });
    state.serverSockets = state.serverSockets.filter((s) => s !== nic.socket);
  }
  await ctx.save(state);
}

/** The vhost-user NICs a sandbox's record lists. */
export function vhostUserNics(state: unknown): VhostUserNicInfo[] {
  return stateOf({ state } as ResourceContext).nics;
}
