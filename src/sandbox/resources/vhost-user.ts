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
import { InvalidArgumentError, NotFoundError } from '../../errors.js';
import type { VhostUserNetDevice } from '../../hypervisor/hypervisor.js';
import { resolveNfvConfig, type ResolvedVhostUserNic, type VhostUserNic } from '../../nfv/config.js';
import { VhostUserSocketError } from '../../nfv/errors.js';
import type { GuestDevice } from '../../agent/messages.js';
import type { ResolvedSandboxConfig } from '../config.js';
import { newOwner } from '../record.js';
import { callOptions, unplugEntry, type GuestContext, type PendingEntry, type ResourceContext, type SandboxResource, type VmContribution } from './resource.js';
import { locateInGuest, placeInGuest } from './pci-path.js';

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

type NicEntry = VhostUserNicInfo & PendingEntry;

export interface VhostUserState {
  /** Server-mode sockets QEMU will create (removed on release). */
  serverSockets: string[];
  nics: NicEntry[];
}

function parseState(value: unknown): VhostUserState {
  const s = value as Partial<VhostUserState> | undefined;
  return {
    serverSockets: Array.isArray(s?.serverSockets) ? s.serverSockets.filter((x) => typeof x === 'string' && x.startsWith('/')) : [],
    nics: Array.isArray(s?.nics) ? s.nics.filter((n): n is NicEntry => typeof n === 'object' && n !== null && typeof n.id === 'string' && typeof n.socket === 'string') : [],
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

/** Removes a server-mode socket QEMU made, if it is still a socket. */
async function removeServerSocket(socket: string): Promise<void> {
  const stat = await fs.lstat(socket).catch(() => undefined);
  if (stat?.isSocket()) await fs.rm(socket, { force: true });
}

export class VhostUserResource implements SandboxResource<VhostUserState> {
  readonly kind = VHOST_USER_KIND;

  parse(value: unknown): VhostUserState {
    return parseState(value);
  }

  async prepare(ctx: ResourceContext<VhostUserState>): Promise<VmContribution> {
    const nics = ctx.config.vhostUser ?? []; // records of older versions lack the field
    if (nics.length === 0) return {};
    await ctx.update(async (state) => {
      for (const nic of nics) await checkVhostUserSocket(nic, state.serverSockets);
      const servers = nics.filter((n) => n.mode === 'server').map((n) => n.socket);
      state.serverSockets = [...new Set([...state.serverSockets, ...servers])];
      state.nics = nics.map((n) => ({ id: n.id, socket: n.socket, mode: n.mode, hotplugged: false }));
    });
    return { devices: nics.map(vhostUserDevice), sharedMemory: true };
  }

  async attach(ctx: GuestContext<VhostUserState>): Promise<void> {
    const nics = ctx.state.nics;
    if (nics.length === 0) return;
    const placed = new Map<string, Awaited<ReturnType<typeof placeInGuest>>>();
    for (const nic of nics) placed.set(nic.id, await placeInGuest(ctx, nic.id, true));
    await ctx.update((state) => {
      for (const nic of state.nics) Object.assign(nic, placed.get(nic.id) ?? {});
    });
  }

  async release(ctx: ResourceContext<VhostUserState>): Promise<void> {
    await ctx.update(async (state) => {
      for (const socket of state.serverSockets) await removeServerSocket(socket);
      state.serverSockets = [];
      state.nics = [];
    });
  }
}

/** Checks `nic` (its id defaults to `vhuN`, N the count of NICs so far) and hot plugs it with {@link hotplugNic}. */
export async function addNic(ctx: GuestContext<VhostUserState>, nic: VhostUserNic): Promise<VhostUserNicInfo> {
  const count = vhostUserNics(ctx.state).length + (ctx.config.vhostUser ?? []).length;
  const [resolved] = resolveNfvConfig(
    { vhostUser: [{ ...nic, id: nic.id ?? `vhu${count}` }] },
    { memoryMiB: ctx.config.memoryMiB, machine: ctx.config.machine, sharedMemory: false, volumePages: 0 },
  ).vhostUser;
  return hotplugNic(ctx, { ...resolved!, rootPort: false });
}

/**
 * Hot plugs a NIC into a running sandbox's VM (q35): recorded under the sandbox lock, plugged
 * (QMP) and found in the guest without it; a NIC the guest never shows is taken back.
 */
export async function hotplugNic(ctx: GuestContext<VhostUserState>, nic: ResolvedVhostUserNic): Promise<VhostUserNicInfo> {
  if (!hasSharedMemory(ctx.config)) {
    throw new InvalidArgumentError(
      'nic',
      'the guest RAM of this sandbox is private, and a vhost-user backend must map it: create the sandbox with sharedFs, hugepages or a vhost-user NIC',
    );
  }
  await ctx.update(async (state) => {
    if (state.nics.some((n) => n.id === nic.id) || ctx.config.extraDevices.some((d) => d.id === nic.id)) {
      throw new InvalidArgumentError('nic.id', `the sandbox already has a device "${nic.id}"`);
    }
    await checkVhostUserSocket(nic, state.serverSockets);
    if (nic.mode === 'server') state.serverSockets.push(nic.socket);
    state.nics.push({ id: nic.id, socket: nic.socket, mode: nic.mode, hotplugged: true, pending: newOwner() });
  });
  let plugged = false;
  try {
    const placed = await ctx.vm.hotplug(vhostUserDevice(nic), callOptions(ctx));
    plugged = true;
    const guest = await locateInGuest(ctx, placed.pciPath, true);
    return await ctx.update((state) => {
      const entry = state.nics.find((n) => n.id === nic.id);
      if (!entry) throw new NotFoundError('vhost-user NIC', nic.id);
      entry.pciPath = placed.pciPath;
      if (guest) entry.guest = guest;
      delete entry.pending;
      return { ...entry };
    });
  } catch (error) {
    // The guest never saw it, or the plug failed: take it back.
    if (plugged) await ctx.vm.unplug(nic.id, callOptions(ctx)).catch(() => undefined);
    await ctx.update(async (state) => {
      state.nics = state.nics.filter((n) => n.id !== nic.id);
      if (nic.mode === 'server') {
        await removeServerSocket(nic.socket);
        state.serverSockets = state.serverSockets.filter((s) => s !== nic.socket);
      }
    });
    throw error;
  }
}

/** Removes a NIC from a running sandbox's VM once the guest released it. */
export async function unplugNic(ctx: GuestContext<VhostUserState>, id: string): Promise<void> {
  await unplugEntry(ctx, id, 'vhost-user NIC', (state) => state.nics, async (state, nic) => {
    state.nics = state.nics.filter((n) => n !== nic);
    if (nic.mode === 'server') {
      await removeServerSocket(nic.socket);
      state.serverSockets = state.serverSockets.filter((s) => s !== nic.socket);
    }
  });
}

/** The vhost-user NICs a sandbox's record lists. */
export function vhostUserNics(state: unknown): VhostUserNicInfo[] {
  return parseState(state).nics.map(({ pending: _pending, ...n }) => n);
}
