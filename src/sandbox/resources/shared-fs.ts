/**
 * The shared filesystem as a sandbox resource: at each boot the share's tree is set up (see
 * share.ts) and virtiofsd started on its read-only view (`-device vhost-user-fs-pci,tag=vmpod`);
 * the agent mounts it in the guest; at stop virtiofsd and the tree go.
 *
 * @internal
 * @module
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { runAll } from '../../cleanup.js';
import { InvalidArgumentError } from '../../errors.js';
import { terminate } from '../../host/process.js';
import { Virtiofsd } from '../../hypervisor/virtiofsd.js';
import { makeReachable } from '../../state/store.js';
import type { GuestContext, ResourceContext, SandboxResource, VmContribution } from './resource.js';
import { guestSharedDir, parseSharedFsState, Share, SHARED_FS_KIND, SHARED_FS_TAG, sharedDirOf, type SharedFsState } from './share.js';

export class SharedFsResource implements SandboxResource<SharedFsState> {
  readonly kind = SHARED_FS_KIND;

  parse(value: unknown): SharedFsState {
    return parseSharedFsState(value);
  }

  async prepare(ctx: ResourceContext<SharedFsState>): Promise<VmContribution> {
    if (!ctx.boot) throw new InvalidArgumentError('boot', 'the share is prepared for a boot');
    const share = shareOf(ctx);
    if (ctx.state.tree || ctx.state.virtiofsd) await this.release(ctx); // what a crashed boot left
    const user = ctx.config.sharedFsUser;
    // The unprivileged daemon reaches DIR/shared by path (checked before anything is mounted).
    if (user) await makeReachable(ctx.dir, user);
    await share.setUp(user);
    const socket = path.join(ctx.boot.dir, 'virtiofsd.sock');
    await Virtiofsd.start({
      sharedDir: sharedDirOf(ctx.dir),
      socket,
      logFile: path.join(ctx.dir, 'virtiofsd.log'),
      announceSubmounts: true,
      cache: ctx.config.sharedFsCache ?? 'auto',
      ...(user ? { user } : {}),
      // QEMU connects while still root; the socket is given to the user it drops to anyway (it is
      // in the boot folder, root's 0700), so that no part of the share needs QEMU to be root.
      ...(user && ctx.config.runAs ? { socketOwner: ctx.config.runAs } : {}),
      onSpawn: (handle) => ctx.update((s) => void (s.virtiofsd = handle)),
      ...(ctx.signal ? { signal: ctx.signal } : {}),
    });
    return { devices: [{ kind: 'vhost-user-fs', id: 'sharedfs', socket, tag: SHARED_FS_TAG }], sharedMemory: true };
  }

  async attach(ctx: GuestContext<SharedFsState>): Promise<void> {
    await ctx.agent.mount({ type: 'virtiofs', source: SHARED_FS_TAG, target: guestSharedDir(ctx.guestStateDir) }, ctx.signal ? { signal: ctx.signal } : {});
  }

  /** The share goes with each boot: virtiofsd (it exits with its VM; this is for a VM that never connected), the binds, the tree. */
  async release(ctx: ResourceContext<SharedFsState>): Promise<void> {
    const share = shareOf(ctx);
    await runAll(
      [
        [
          'virtiofsd',
          async () => {
            const daemon = ctx.state.virtiofsd;
            if (!daemon) return;
            if (!(await terminate(daemon, 2000))) throw new Error(`virtiofsd (pid ${daemon.pid}) did not exit`);
            await fs.rm(daemon.socket, { force: true });
            await ctx.update((s) => void delete s.virtiofsd);
          },
        ],
        ['share', () => share.tearDown()],
      ],
      'could not release the shared filesystem',
    );
  }
}

/** The share's own context as a {@link Share}. */
function shareOf(ctx: ResourceContext<SharedFsState>): Share {
  return new Share(ctx.dir, (fn) => ctx.update(fn));
}
