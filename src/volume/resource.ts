/**
 * The volumes of a sandbox as a {@link SandboxResource}: those of its config are prepared
 * before each boot and mounted once the agent answers; volumes added to a running sandbox
 * (and containers' rootfs images) join the same state. On stop and delete every host side is
 * released from the state alone; hot-added volumes are forgotten at stop.
 *
 * @internal
 * @module
 */
import { InvalidArgumentError, NotFoundError } from '../errors.js';
import type { VmDevice } from '../hypervisor/hypervisor.js';
import type { GuestContext, ResourceContext, SandboxResource, VmContribution } from '../sandbox/resource.js';
import { blockDriver } from './block.js';
import { directoryDriver } from './directory.js';
import type { VolumeDriver, VolumeState } from './driver.js';
import { hugepagesDriver } from './hugepages.js';
import type { VolumeSpec } from './spec.js';
import { tmpfsDriver } from './tmpfs.js';

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

/** The volumes state of a resource context (a fresh object; save it with `ctx.save`). */
export function volumesState(state: unknown): VolumesState {
  const s = state as Partial<VolumesState> | undefined;
  return { volumes: Array.isArray(s?.volumes) ? s.volumes : [] };
}

function saver(ctx: ResourceContext, state: VolumesState): () => Promise<void> {
  return () => ctx.save(state);
}

export class VolumesResource implements SandboxResource {
  readonly kind = VOLUMES_KIND;

  async prepare(ctx: ResourceContext): Promise<VmContribution> {
    const specs = ctx.config.volumes ?? []; // records of older versions lack the field
    if (specs.length === 0) return {};
    const state = volumesState(ctx.state);
    const save = saver(ctx, state);
    const devices: VmDevice[] = [];
    for (const spec of specs) {
      const volume: VolumeState = { spec, hostMounts: [], hotplugged: false };
      state.volumes.push(volume);
      await save();
      devices.push(...(await DRIVERS[spec.kind].prepare(ctx, volume, save)));
    }
    return { devices };
  }

  async attach(ctx: GuestContext): Promise<void> {
    const state = volumesState(ctx.state);
    const save = saver(ctx, state);
    for (const volume of state.volumes) await DRIVERS[volume.spec.kind].attach(ctx, volume, save);
  }

  async release(ctx: ResourceContext): Promise<void> {
    const state = volumesState(ctx.state);
    const save = saver(ctx, state);
    let failure: unknown;
    for (const volume of [...state.volumes].reverse()) {
      try {
        await DRIVERS[volume.spec.kind].release(ctx, volume, save);
        state.volumes = state.volumes.filter((v) => v !== volume);
      } catch (error) {
        failure ??= error;
      }
    }
    await save();
    if (failure !== undefined) throw failure;
  }
}

/** Adds a volume to a running sandbox (under its lock, through `withResource`). */
export async function hotplugVolume(ctx: GuestContext, spec: VolumeSpec, container?: string, madeFile?: string): Promise<VolumeState> {
  const state = volumesState(ctx.state);
  if (state.volumes.some((v) => v.spec.name === spec.name)) throw new InvalidArgumentError('volume.name', `the sandbox already has a volume "${spec.name}"`);
  const volume: VolumeState = { spec, hostMounts: [], hotplugged: true };
  if (container !== undefined) volume.container = container;
  if (madeFile !== undefined) volume.madeFile = madeFile;
  state.volumes.push(volume);
  const save = saver(ctx, state);
  await save();
  try {
    await DRIVERS[spec.kind].hotplug(ctx, volume, save);
  } catch (error) {
    await DRIVERS[spec.kind].release(ctx, volume, save).catch(() => undefined);
    if (volume.hostMounts.length === 0) state.volumes = state.volumes.filter((v) => v !== volume);
    await save();
    throw error;
  }
  return volume;
}

/** Removes a volume from a running sandbox: guest side, device, host side. */
export async function detachVolume(ctx: GuestContext, name: string): Promise<void> {
  const state = volumesState(ctx.state);
  const volume = state.volumes.find((v) => v.spec.name === name);
  if (!volume) throw new NotFoundError('volume', name);
  await DRIVERS[volume.spec.kind].detach(ctx, volume, saver(ctx, state));
  state.volumes = state.volumes.filter((v) => v !== volume);
  await ctx.save(state);
}
