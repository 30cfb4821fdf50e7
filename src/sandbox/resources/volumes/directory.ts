/**
 * Directory volumes. Through virtio-fs: the host directory is bound into the sandbox's share
 * (`mount --rbind -o ro,nosuid,nodev SOURCE SHARED/volumes/NAME.RANDOM`, read-only all the way
 * down when asked; see ../share.ts); the bind propagates into the running virtiofsd and
 * appears in the guest under the share at once: no device, no restart. Read-only is enforced by
 * the host bind (the guest gets EROFS), since the C virtiofsd has no read-only mode.
 *
 * Through 9p: a `virtio-9p` device per volume (`-fsdev local,path=SOURCE[,readonly=on]
 * -device virtio-9p-pci,mount_tag=vol-NAME`; cold plug only: QEMU 7.2 has no QMP `fsdev_add`),
 * mounted by the agent (`mount -t 9p -o trans=virtio,version=9p2000.L TAG DIR`). Read-only is
 * enforced by QEMU (`readonly=on`) and the guest mount. Only guest builds whose kernel has 9p
 * can (manifest `features`, e.g. Debian's generic kernel with `--feature 9p`); Debian's cloud
 * kernel has none, and that is reported before anything is made.
 *
 * @internal
 * @module
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { AgentError } from '../../../agent/errors.js';
import { InvalidArgumentError } from '../../../errors.js';
import { FeatureUnavailableError } from '../../../devices/errors.js';
import { resolveGuestAssets } from '../../../guest/assets.js';
import { guestFeatures } from '../../../guest/features.js';
import { parseKernelConfig } from '../../../guest/kernel.js';
import type { Virtio9pDevice } from '../../../hypervisor/hypervisor.js';
import type { DirectoryVolume } from '../../../volume/spec.js';
import { callOptions, type GuestContext, type ResourceContext } from '../resource.js';
import { guestSharedDir } from '../share.js';
import { guestVolumeDir, type VolumeDriver, type VolumeState } from './driver.js';
import { checkHostPath } from './host-path.js';

function specOf(volume: VolumeState): DirectoryVolume {
  return volume.spec as DirectoryVolume;
}

/** The mount tag (and VM device id) of 9p volume `name`. */
export function ninepTag(name: string): string {
  return `vol-${name}`;
}

const USE_VIRTIOFS = 'use transport "virtiofs", or build the guest with 9p ("vmpod guest build --kernel-package linux-image-amd64 --feature 9p")';

/**
 * Refuses a 9p volume when the guest build the sandbox boots cannot mount 9p, from facts: the
 * build's manifest `features` (or, for builds older than that field, its kernel config and the
 * modules /init loads). A kernel given by path is the user's call: the agent's mount then says.
 */
async function check9p(ctx: ResourceContext<unknown>): Promise<void> {
  if (ctx.config.guest.kernel !== undefined) return;
  const assets = await resolveGuestAssets({
    cacheDir: ctx.config.guest.cacheDir,
    verify: 'size',
    ...(ctx.config.guest.initramfs === undefined ? {} : { initramfs: ctx.config.guest.initramfs }),
  });
  const manifest = assets.manifest;
  if (assets.dir === undefined || manifest === undefined) return;
  const config = parseKernelConfig(await fs.readFile(path.join(assets.dir, manifest.files.config.name), 'utf8'));
  if ((manifest.features ?? guestFeatures(config, manifest.modules.load)).includes('9p')) return;
  const modular = ['CONFIG_NET_9P', 'CONFIG_NET_9P_VIRTIO', 'CONFIG_9P_FS'].every((o) => config.get(o) === 'y' || config.get(o) === 'm');
  throw new FeatureUnavailableError(
    '9p',
    modular
      ? `the guest kernel ${manifest.kernelRelease} has 9p as modules, but the guest build does not load them: rebuild it with features: ['9p'] ("vmpod guest build --feature 9p"), or use transport "virtiofs"`
      : `the guest kernel ${manifest.kernelRelease} has no 9p filesystem (CONFIG_9P_FS/CONFIG_NET_9P_VIRTIO are off; Debian's cloud kernel lacks them): ${USE_VIRTIOFS}`,
  );
}

/** The VM device of a 9p volume. */
function ninepDevice(spec: DirectoryVolume): Virtio9pDevice {
  const tag = ninepTag(spec.name);
  return { kind: 'virtio-9p', id: tag, path: spec.source, tag, securityModel: 'none', ...(spec.readOnly ? { readOnly: true } : {}) };
}

export const directoryDriver: VolumeDriver = {
  async prepareHost(ctx, volume, save, hotplug) {
    const spec = specOf(volume);
    await checkHostPath(spec.name, spec.source, 'directory', spec.readOnly === true);
    if (spec.transport === '9p') {
      if (hotplug) throw new InvalidArgumentError('transport', '9p devices cannot be hot plugged: give the volume in the sandbox config');
      await check9p(ctx);
      volume.device = ninepTag(spec.name);
      await save();
      return [ninepDevice(spec)];
    }
    if (!ctx.share) throw new InvalidArgumentError('volumes', `volume "${spec.name}" needs the sandbox's shared filesystem (sharedFs: true)`);
    // Bound (recursively read-only when asked) into the share; the bind records itself first.
    volume.share = await ctx.share.bind({ top: 'volumes', prefix: spec.name, source: spec.source, readOnly: spec.readOnly === true });
    await save();
    return [];
  },

  async attachGuest(ctx, volume) {
    const spec = specOf(volume);
    if (spec.transport !== '9p') return `${guestSharedDir(ctx.guestStateDir)}/${volume.share!.path}`;
    const target = guestVolumeDir(ctx.guestStateDir, spec.name);
    try {
      await ctx.agent.mount({ type: '9p', source: ninepTag(spec.name), target, readOnly: spec.readOnly === true }, callOptions(ctx));
    } catch (error) {
      if (error instanceof AgentError && error.agentCode === 'FAILED_PRECONDITION' && error.errnoName === 'ENODEV') {
        throw new FeatureUnavailableError('9p', `volume "${spec.name}": the guest kernel cannot mount 9p: ${USE_VIRTIOFS}`, { cause: error });
      }
      throw error;
    }
    return target;
  },

  async detachGuest(ctx: GuestContext<unknown>, volume) {
    // A 9p volume is unmounted in the guest; its device stays until the VM stops (no unplug).
    if (specOf(volume).transport === '9p' && volume.guestPath !== undefined) await ctx.agent.unmount(volume.guestPath, callOptions(ctx));
  },

  async releaseHost(ctx, volume, save) {
    if (volume.share) {
      await ctx.share?.unbind(volume.share.name);
      delete volume.share;
    }
    delete volume.device;
    delete volume.guestPath;
    await save();
  },
};
