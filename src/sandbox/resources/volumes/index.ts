/**
 * The volumes of a sandbox as a {@link SandboxResource}: those of its config are prepared
 * before each boot and mounted once the agent answers; volumes added to a running sandbox
 * (and containers' rootfs images) join the same state. On stop and delete every host side is
 * released from the state alone; hot-added volumes are forgotten at stop.
 *
 * Adding a volume to a running sandbox records it (pending, under the sandbox lock) and makes its
 * host side; the device and the guest mount are done without the lock; then it is committed, or
 * undone when anything failed.
 *
 * @internal
 * @module
 */
import { runAll } from '../../../cleanup.js';
import { InvalidArgumentError, NotFoundError } from '../../../errors.js';
import type { VmDevice } from '../../../hypervisor/hypervisor.js';
import type { VolumeSpec } from '../../../volume/spec.js';
import { newOwner } from '../../record.js';
import { assertNotPending, type GuestContext, type ResourceContext, type SandboxResource, type VmContribution } from '../resource.js';
import { blockDriver } from './block.js';
import { directoryDriver } from './directory.js';
import type { VolumeDriver, VolumeState } from './driver.js';
import { hugepagesDriver } from './hugepages.js';
import { tmpfsDriver } from './tmpfs.js';

export type { VolumeState } from './driver.js';

/** Key of this resource's state in the sandbox record. */
export const VOLUMES_KIND = 'volumes';

const DRIVERS: Record<VolumeSpec['kind'], VolumeDriver> = {
  directory: directoryDriver,
  block: blockDriver,
  tmpfs: tmpfsDriver,
  hugepages: hugepagesDriver,
};

export interface VolumesState {
  volumes: VolumeState[];
}

/** The volumes state from a record (kinds this version knows). */
export function volumesState(value: unknown): VolumesState {
  const s = value as Partial<VolumesState> | undefined;
  const volumes = Array.isArray(s?.volumes) ? s.volumes : [];
  return {
    volumes: volumes.filter(
      (v): v is VolumeState => typeof v === 'object' && v !== null && typeof v.spec === 'object' && v.spec !== null && v.spec.kind in DRIVERS && typeof v.spec.name === 'string',
    ),
  };
}

export class VolumesResource implements SandboxResource<VolumesState> {
  readonly kind = VOLUMES_KIND;

  parse(value: unknown): VolumesState {
    return volumesState(value);
  }

  async prepare(ctx: ResourceContext<VolumesState>): Promise<VmContribution> {
    const specs = ctx.config.volumes ?? []; // records of older versions lack the field
    if (specs.length === 0) return {};
    return ctx.update(async (state, save) => {
      const devices: VmDevice[] = [];
      for (const spec of specs) {
        const volume: VolumeState = { spec, hotplugged: false };
        state.volumes.push(volume);
        await save();
        devices.push(...(await DRIVERS[spec.kind].prepareHost(ctx, volume, save, false)));
      }
      return { devices };
    });
  }

  async attach(ctx: GuestContext<VolumesState>): Promise<void> {
    const paths = new Map<string, string>();
    for (const volume of ctx.state.volumes) paths.set(volume.spec.name, await DRIVERS[volume.spec.kind].attachGuest(ctx, volume, false));
    await ctx.update((state) => {
      for (const volume of state.volumes) {
        const guestPath = paths.get(volume.spec.name);
        if (guestPath !== undefined) volume.guestPath = guestPath;
      }
    });
  }

  async release(ctx: ResourceContext<VolumesState>): Promise<void> {
    await ctx.update(async (state, save) => {
      await runAll(
        [...state.volumes].reverse().map((volume) => [
          `volume ${volume.spec.name}`,
          async () => {
            await DRIVERS[volume.spec.kind].releaseHost(ctx, volume, save);
            state.volumes = state.volumes.filter((v) => v !== volume);
            await save();
          },
        ] as const),
        'could not release the volumes',
      );
    });
  }
}

/**
 * Adds a volume to a running sandbox: recorded and prepared on the host under the lock, plugged
 * and mounted in the guest without it, committed (or undone) under the lock again.
 */
export async function hotplugVolume(ctx: GuestContext<VolumesState>, spec: VolumeSpec, options: { container?: string; madeFile?: string } = {}): Promise<VolumeState> {
  const driver = DRIVERS[spec.kind];
  await ctx.update(async (state, save) => {
    if (state.volumes.some((v) => v.spec.name === spec.name)) throw new InvalidArgumentError('volume.name', `the sandbox already has a volume "${spec.name}"`);
    const volume: VolumeState = { spec, hotplugged: true, pending: newOwner() };
    if (options.container !== undefined) volume.container = options.container;
    if (options.madeFile !== undefined) volume.madeFile = options.madeFile;
    (driver as { checkHotplug?: (c: unknown, v: VolumeState, all: VolumeState[]) => void }).checkHotplug?.(ctx, volume, state.volumes);
    state.volumes.push(volume);
    await save();
    try {
      await driver.prepareHost(ctx, volume, save, true);
    } catch (error) {
      await driver.releaseHost(ctx, volume, save).catch(() => undefined);
      state.volumes = state.volumes.filter((v) => v !== volume);
      await save();
      throw error;
    }
  });
  const prepared = ctx.state.volumes.find((v) => v.spec.name === spec.name)!;
  let guestPath: string;
  try {
    guestPath = await driver.attachGuest(ctx, prepared, true);
  } catch (error) {
    await ctx
      .update(async (state, save) => {
        const volume = state.volumes.find((v) => v.spec.name === spec.name);
        if (!volume) return;
        await driver.releaseHost(ctx, volume, save);
        state.volumes = state.volumes.filter((v) => v !== volume);
      })
      .catch((rollback: unknown) => Object.assign(error as Error, { rollbackError: rollback }));
    throw error;
  }
  return ctx.update((state) => {
    const volume = state.volumes.find((v) => v.spec.name === spec.name);
    if (!volume) throw new NotFoundError('volume', spec.name);
    volume.guestPath = guestPath;
    delete volume.pending;
    return { ...volume };
  });
}

/** Removes a volume from a running sandbox: guest side first (without the lock), then the host side. */
export async function detachVolume(ctx: GuestContext<VolumesState>, name: string): Promise<void> {
  const volume = await ctx.update((state) => {
    const found = state.volumes.find((v) => v.spec.name === name);
    if (!found) throw new NotFoundError('volume', name);
    assertNotPending(found, `volume "${name}"`);
    found.pending = newOwner();
    return { ...found };
  });
  const driver = DRIVERS[volume.spec.kind];
  try {
    await driver.detachGuest(ctx, volume);
  } catch (error) {
    await ctx.update((state) => void delete state.volumes.find((v) => v.spec.name === name)?.pending);
    throw error;
  }
  await ctx.update(async (state, save) => {
    const found = state.volumes.find((v) => v.spec.name === name);
    if (!found) return;
    await driver.releaseHost(ctx, found, save);
    state.volumes = state.volumes.filter((v) => v !== found);
  });
}
