/**
 * What each kind of volume implements (one module per kind), and the persisted state of one
 * volume of a sandbox. Host parts run inside a record transaction (they record what they make
 * first); guest parts talk to the agent or the hypervisor and run without the lock.
 *
 * @internal
 * @module
 */
import type { MountRequest } from '../../../agent/messages.js';
import type { VmDevice } from '../../../hypervisor/hypervisor.js';
import type { VolumeSpec } from '../../../volume/spec.js';
import { callOptions, type GuestContext, type PendingEntry, type ResourceContext } from '../resource.js';

/** One volume of a sandbox, as its record keeps it. */
export interface VolumeState extends PendingEntry {
  spec: VolumeSpec;
  /** The share bind of a virtio-fs directory volume (its name, and path below the share). */
  share?: { name: string; path: string };
  /** Where it is in the guest (mounted there, or visible through the share). */
  guestPath?: string;
  /** VM device id, when it has one. */
  device?: string;
  /** Added to the running sandbox (dropped at stop), rather than from its config. */
  hotplugged: boolean;
  /** Belongs to this container (its rootfs image): released with it. */
  container?: string;
  /** A file vmpod made for it (a rootfs image), removed on release. */
  madeFile?: string;
}

/** Persists the volumes' state now (inside the transaction that runs a host part). */
export type SaveVolume = () => Promise<void>;

/** One kind of volume. */
export interface VolumeDriver {
  /**
   * Host side, inside a transaction: what the volume needs on the host, recorded before it is
   * made; returns the VM devices to cold plug (at start). `hotplug` says the VM already runs.
   */
  prepareHost(ctx: ResourceContext<unknown>, volume: VolumeState, save: SaveVolume, hotplug: boolean): Promise<VmDevice[]>;
  /** Guest side, without the lock: plugs the device (hotplug) and mounts it; returns the guest path. */
  attachGuest(ctx: GuestContext<unknown>, volume: VolumeState, hotplug: boolean): Promise<string>;
  /** Guest side of a removal from a running sandbox, without the lock: unmounts it, unplugs its device. */
  detachGuest(ctx: GuestContext<unknown>, volume: VolumeState): Promise<void>;
  /** Host side after the VM is gone or the volume was detached, inside a transaction, from the state alone; idempotent. */
  releaseHost(ctx: ResourceContext<unknown>, volume: VolumeState, save: SaveVolume): Promise<void>;
}

/** Where the agent mounts volumes in the guest. */
export function guestVolumeDir(guestStateDir: string, name: string): string {
  return `${guestStateDir}/volumes/${name}`;
}

/**
 * The driver of a volume that lives in guest memory only (tmpfs, hugetlbfs): the agent mounts
 * what `mount` says at the volume's guest directory; the host has nothing to prepare or release.
 * `checkHotplug` refuses a volume that cannot be added to the running sandbox, before any mount.
 */
export function guestMemoryDriver(
  mount: (spec: VolumeSpec) => Pick<MountRequest, 'type' | 'options'>,
  checkHotplug: (ctx: ResourceContext<unknown>, volume: VolumeState, others: readonly VolumeState[]) => void = () => undefined,
): VolumeDriver & { checkHotplug: typeof checkHotplug } {
  return {
    checkHotplug,
    async prepareHost() {
      return [];
    },
    async attachGuest(ctx, volume) {
      const target = guestVolumeDir(ctx.guestStateDir, volume.spec.name);
      await ctx.agent.mount({ ...mount(volume.spec), target }, callOptions(ctx));
      return target;
    },
    async detachGuest(ctx, volume) {
      if (volume.guestPath !== undefined) await ctx.agent.unmount(volume.guestPath, callOptions(ctx));
    },
    async releaseHost() {},
  };
}
