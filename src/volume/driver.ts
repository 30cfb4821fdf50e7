/**
 * What each kind of volume implements (one module per kind), and the persisted state of one
 * volume of a sandbox.
 *
 * @internal
 * @module
 */
import type { MountRequest } from '../agent/messages.js';
import type { VmDevice } from '../hypervisor/hypervisor.js';
import type { GuestContext, ResourceContext } from '../sandbox/resource.js';
import type { VolumeSpec } from './spec.js';

/** One volume of a sandbox, as its record keeps it. */
export interface VolumeState {
  spec: VolumeSpec;
  /** Host mount points made for it (recorded before each mount). */
  hostMounts: string[];
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

/** Persists the volume's state (call it before each host object is made). */
export type SaveVolume = () => Promise<void>;

/** One kind of volume. */
export interface VolumeDriver {
  /** Host side before the VM starts (a config volume): returns the VM devices it needs. */
  prepare(ctx: ResourceContext, state: VolumeState, save: SaveVolume): Promise<VmDevice[]>;
  /** Guest side once the agent answered: mounts it, sets `guestPath`. */
  attach(ctx: GuestContext, state: VolumeState, save: SaveVolume): Promise<void>;
  /** Adds it to a running sandbox: host side, hotplug, guest side. */
  hotplug(ctx: GuestContext, state: VolumeState, save: SaveVolume): Promise<void>;
  /** Removes it from a running sandbox (guest side first), then releases the host side. */
  detach(ctx: GuestContext, state: VolumeState, save: SaveVolume): Promise<void>;
  /** Host side after the VM is gone, from the state alone; idempotent. */
  release(ctx: ResourceContext, state: VolumeState, save: SaveVolume): Promise<void>;
}

/** Where the agent mounts volumes in the guest. */
export function guestVolumeDir(guestStateDir: string, name: string): string {
  return `${guestStateDir}/volumes/${name}`;
}

/** `{ signal }` of a context, for agent and VM calls. */
export function callOptions(ctx: { signal?: AbortSignal }): { signal?: AbortSignal } {
  return ctx.signal ? { signal: ctx.signal } : {};
}

/**
 * The driver of a volume that lives in guest memory only (tmpfs, hugetlbfs): the agent mounts
 * what `mount` says at the volume's guest directory; the host has nothing to prepare or release.
 * `checkHotplug` refuses a volume that cannot be added to the running sandbox, before any mount.
 */
export function guestMemoryDriver(
  mount: (spec: VolumeSpec) => Pick<MountRequest, 'type' | 'options'>,
  checkHotplug: (ctx: GuestContext, state: VolumeState) => void = () => undefined,
): VolumeDriver {
  const driver: VolumeDriver = {
    async prepare() {
      return [];
    },
    async attach(ctx, state, save) {
      const target = guestVolumeDir(ctx.guestStateDir, state.spec.name);
      await ctx.agent.mount({ ...mount(state.spec), target }, callOptions(ctx));
      state.guestPath = target;
      await save();
    },
    async hotplug(ctx, state, save) {
      checkHotplug(ctx, state);
      await driver.attach(ctx, state, save);
    },
    async detach(ctx, state, save) {
      if (state.guestPath !== undefined) await ctx.agent.unmount(state.guestPath, callOptions(ctx));
      delete state.guestPath;
      await save();
    },
    async release(_ctx, state, save) {
      delete state.guestPath;
      await save();
    },
  };
  return driver;
}
