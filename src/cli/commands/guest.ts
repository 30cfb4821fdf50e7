/** `vmpod guest build`: build the guest kernel and initramfs. */
import path from 'node:path';
import { buildGuestAssets } from '../../guest/build.js';
import { GUEST_FEATURES, type GuestFeature } from '../../guest/features.js';
import { COMMON_OPTIONS, type Command } from '../command.js';
import { printJson, UsageError } from '../io.js';

export const guestBuild: Command = {
  words: ['guest', 'build'],
  summary: 'build the guest kernel and initramfs (once; skipped when nothing changed)',
  usage: `Usage: vmpod guest build [--cache-dir DIR] [--kernel-package PKG] [--feature 9p]... [--force] [--json]

Fetches Debian's cloud kernel (or --kernel-package, e.g. linux-image-amd64) with apt-get
download, extracts an uncompressed vmlinux, and writes an initramfs with busybox, the kernel
modules, the vmpod agent and the builtin rootfs into the cache (default /var/cache/vmpod/guest).
--feature 9p loads the 9p modules (the cloud kernel has no 9p: use linux-image-amd64).
Skipped when nothing changed.`,
  spec: {
    options: [
      ...COMMON_OPTIONS,
      { long: 'cache-dir', type: 'string' },
      { long: 'force', type: 'boolean' },
      { long: 'kernel-package', type: 'string' },
      { long: 'feature', type: 'string', multiple: true },
      { long: 'update-apt', type: 'boolean' },
    ],
  },
  async run(parsed) {
    const o = parsed.options;
    const json = o['json'] === true;
    const started = Date.now();
    const features = (o['feature'] as string[] | undefined) ?? [];
    for (const f of features) {
      if (!GUEST_FEATURES.includes(f as GuestFeature)) throw new UsageError(`--feature ${f}: must be one of ${GUEST_FEATURES.join(', ')}`);
    }
    const result = await buildGuestAssets({
      ...(typeof o['cache-dir'] === 'string' ? { cacheDir: path.resolve(o['cache-dir']) } : {}),
      ...(o['force'] ? { force: true } : {}),
      ...(typeof o['kernel-package'] === 'string' ? { kernelPackage: o['kernel-package'] } : {}),
      ...(features.length > 0 ? { features: features as GuestFeature[] } : {}),
      ...(o['update-apt'] ? { updateAptLists: true } : {}),
      onProgress: (p) => {
        if (!json) process.stderr.write(`[${((Date.now() - started) / 1000).toFixed(1).padStart(5)}s] ${p.message}\n`);
      },
    });
    const { assets } = result;
    if (json) {
      printJson({
        built: result.built,
        id: assets.id,
        dir: assets.dir,
        kernel: assets.kernel,
        initramfs: assets.initramfs,
        kernelRelease: assets.manifest?.kernelRelease,
        features: assets.manifest?.features,
      });
    } else {
      const has = assets.manifest?.features?.join(', ') ?? '?';
      process.stdout.write(`${result.built ? 'built' : 'up to date'}: ${assets.dir} (kernel ${assets.manifest?.kernelRelease ?? '?'}; shares: ${has})\n`);
    }
    return 0;
  },
};
