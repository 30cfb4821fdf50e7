/**
 * Directory volumes. Through virtio-fs: the host directory is bind-mounted into the sandbox's
 * shared directory (`mount --bind [-o ro] SOURCE SHARED/volumes/NAME`); the shared directory is
 * a shared mount, so the bind propagates into the running virtiofsd and appears in the guest
 * under the share at once: no device, no restart. Read-only is enforced by the host bind
 * (the guest gets EROFS), since the C virtiofsd has no read-only mode.
 *
 * Through 9p: a `virtio-9p` device (cold plug only) — where the guest kernel has 9p; Debian's
 * cloud kernel has not, and that is reported before anything is made.
 *
 * @internal
 * @module
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { InvalidArgumentError } from '../errors.js';
import { FeatureUnavailableError } from '../devices/errors.js';
import { resolveGuestAssets } from '../guest/assets.js';
import { bindIntoSharedDir, releaseMounts } from '../sandbox/shared-dir.js';
import { guestSharedDir, sharedDirOf } from '../sandbox/shared-fs.js';
import type { GuestContext, ResourceContext } from '../sandbox/resource.js';
import { removeTree } from '../state/remove.js';
import type { SaveVolume, VolumeDriver, VolumeState } from './driver.js';
import { checkHostPath } from './host-path.js';
import type { DirectoryVolume } from './spec.js';

function specOf(state: VolumeState): DirectoryVolume {
  return state.spec as DirectoryVolume;
}

/** Host path of the volume inside the shared directory. */
function hostTarget(ctx: ResourceContext, name: string): string {
  return path.join(sharedDirOf(ctx.dir), 'volumes', name);
}

/**
 * Whether the guest kernel the sandbox boots has 9p over virtio, from the kernel config the
 * guest build keeps next to it (`CONFIG_9P_FS`, `CONFIG_NET_9P_VIRTIO`).
 */
async function check9p(ctx: ResourceContext): Promise<void> {
  const assets = await resolveGuestAssets({
    cacheDir: ctx.config.guest.cacheDir,
    verify: 'size',
    ...(ctx.config.guest.kernel === undefined ? {} : { kernel: ctx.config.guest.kernel }),
    ...(ctx.config.guest.initramfs === undefined ? {} : { initramfs: ctx.config.guest.initramfs }),
  }).catch(() => undefined);
  const configFile = assets?.dir !== undefined && ctx.config.guest.kernel === undefined ? path.join(assets.dir, 'config') : undefined;
  const kconfig = configFile === undefined ? undefined : await fs.readFile(configFile, 'utf8').catch(() => undefined);
  const release = assets?.manifest?.kernelRelease ?? 'the guest kernel';
  if (kconfig !== undefined && !(/^CONFIG_9P_FS=[ym]$/mu.test(kconfig) && /^CONFIG_NET_9P_VIRTIO=[ym]$/mu.test(kconfig))) {
    throw new FeatureUnavailableError(
      '9p',
      `the guest kernel ${release} has no 9p filesystem (CONFIG_9P_FS/CONFIG_NET_9P_VIRTIO are off; Debian's cloud kernel lacks them): use transport "virtiofs"`,
    );
  }
  throw new FeatureUnavailableError(
    '9p',
    `${kconfig === undefined ? 'the guest kernel was given by path, so whether it has 9p is unknown, and ' : ''}the vmpod guest agent mounts virtio-fs, not 9p: use transport "virtiofs"`,
  );
}

async function bindShare(ctx: ResourceContext, state: VolumeState, save: SaveVolume): Promise<void> {
  const spec = specOf(state);
  if (!ctx.config.sharedFs) {
    throw new InvalidArgumentError('volumes', `volume "${spec.name}" needs the sandbox's shared filesystem (sharedFs: true)`);
  }
  await checkHostPath(spec.name, spec.source, 'directory', spec.readOnly === true);
  await bindIntoSharedDir(spec.source, hostTarget(ctx, spec.name), {
    readOnly: spec.readOnly === true,
    record: async (point) => {
      state.hostMounts.push(point);
      await save();
    },
  });
}

export const directoryDriver: VolumeDriver = {
  async prepare(ctx, state, save) {
    const spec = specOf(state);
    if (spec.transport === '9p') await check9p(ctx);
    await bindShare(ctx, state, save);
    return [];
  },

  async attach(ctx: GuestContext, state, save) {
    state.guestPath = `${guestSharedDir(ctx.guestStateDir)}/volumes/${specOf(state).name}`;
    await save();
  },

  async hotplug(ctx, state, save) {
    if (specOf(state).transport === '9p') {
      throw new InvalidArgumentError('transport', '9p devices cannot be hot plugged: give the volume in the sandbox config');
    }
    await bindShare(ctx, state, save);
    await directoryDriver.attach(ctx, state, save);
  },

  async detach(ctx, state, save) {
    await directoryDriver.release(ctx, state, save);
  },

  async release(ctx, state, save) {
    const released = await releaseMounts(state.hostMounts);
    state.hostMounts = state.hostMounts.filter((m) => !released.includes(m));
    delete state.guestPath;
    await save();
    if (state.hostMounts.length === 0) await removeTree(hostTarget(ctx, specOf(state).name));
  },
};
