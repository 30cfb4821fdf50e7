/**
 * The sandbox's shared filesystem as a {@link SandboxResource}: a host directory exported by
 * virtiofsd (`-device vhost-user-fs-pci,tag=vmpod`) and mounted by the agent in the guest.
 * Containers' rootfs and bind sources are bind-mounted into it while the sandbox runs (see
 * shared-dir.ts for why that propagates without restarting virtiofsd).
 *
 * @internal
 * @module
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { signalProcess, waitForProcessExit } from '../hypervisor/process.js';
import { Virtiofsd, type VirtiofsdHandle } from '../hypervisor/virtiofsd.js';
import { removeTree } from '../state/remove.js';
import type { GuestContext, ResourceContext, SandboxResource, VmContribution } from './resource.js';
import { prepareSharedDir, releaseMounts } from './shared-dir.js';

/** The virtio-fs tag of the sandbox's shared directory. */
export const SHARED_FS_TAG = 'vmpod';

interface SharedFsState {
  /** Mount points made (the shared dir's self-bind). */
  mounts: string[];
  virtiofsd?: VirtiofsdHandle;
}

function stateOf(ctx: ResourceContext): SharedFsState {
  const s = ctx.state as Partial<SharedFsState> | undefined;
  const state: SharedFsState = { mounts: Array.isArray(s?.mounts) ? s.mounts.filter((m) => typeof m === 'string') : [] };
  if (s?.virtiofsd && typeof s.virtiofsd.pid === 'number') state.virtiofsd = s.virtiofsd;
  return state;
}

/** The host directory shared with the guest. */
export function sharedDirOf(dir: string): string {
  return path.join(dir, 'shared');
}

/** Where the agent mounts the share in the guest. */
export function guestSharedDir(guestStateDir: string): string {
  return `${guestStateDir}/shared`;
}

export class SharedFsResource implements SandboxResource {
  readonly kind = 'sharedFs';

  async prepare(ctx: ResourceContext): Promise<VmContribution> {
    const state = stateOf(ctx);
    const sharedDir = sharedDirOf(ctx.dir);
    await prepareSharedDir(sharedDir, async (point) => {
      state.mounts.push(point);
      await ctx.save(state);
    });
    const socket = path.join(ctx.dir, 'virtiofsd.sock');
    const virtiofsd = await Virtiofsd.start({
      sharedDir,
      socket,
      logFile: path.join(ctx.dir, 'virtiofsd.log'),
      announceSubmounts: true,
      cache: ctx.config.sharedFsCache ?? 'auto',
      ...(ctx.signal ? { signal: ctx.signal } : {}),
    });
    state.virtiofsd = virtiofsd.handle;
    await ctx.save(state);
    return { devices: [{ kind: 'vhost-user-fs', id: 'sharedfs', socket, tag: SHARED_FS_TAG }], sharedMemory: true };
  }

  async attach(ctx: GuestContext): Promise<void> {
    await ctx.agent.mount(
      { type: 'virtiofs', source: SHARED_FS_TAG, target: guestSharedDir(ctx.guestStateDir) },
      ctx.signal ? { signal: ctx.signal } : {},
    );
  }

  async release(ctx: ResourceContext): Promise<void> {
    const state = stateOf(ctx);
    const failures: unknown[] = [];
    const virtiofsd = state.virtiofsd;
    if (virtiofsd) {
      try {
        // virtiofsd exits with its VM; this is for a VM that never connected, or a crash.
        if (signalProcess(virtiofsd, 'SIGTERM') && !(await waitForProcessExit(virtiofsd, 5_000))) {
          signalProcess(virtiofsd, 'SIGKILL');
          await waitForProcessExit(virtiofsd, 5_000);
        }
        await fs.rm(virtiofsd.socket, { force: true });
        delete state.virtiofsd;
      } catch (error) {
        failures.push(error);
      }
    }
    try {
      const released = await releaseMounts(state.mounts);
      state.mounts = state.mounts.filter((m) => !released.includes(m));
    } catch (error) {
      failures.push(error);
    }
    await ctx.save(state);
    if (state.mounts.length === 0) await removeTree(sharedDirOf(ctx.dir));
    if (failures.length > 0) throw failures[0];
  }
}
