/** `vmpod guest build`: build the guest kernel and initramfs. */
import path from 'node:path';
import { buildGuestAssets } from '../../guest/build.js';
import { COMMON_OPTIONS, type Command } from '../command.js';
import { printJson } from '../io.js';

export const guestBuild: Command = {
  words: ['guest', 'build'],
  summary: 'build the guest kernel and initramfs (once; skipped when nothing changed)',
  usage: `Usage: vmpod guest build [--cache-dir DIR] [--force] [--json]

Fetches Debian's cloud kernel with apt-get download, extracts an uncompressed vmlinux, and
writes an initramfs with busybox, the kernel modules, the vmpod agent and the builtin rootfs
into the cache (default /var/cache/vmpod/guest). Skipped when nothing changed.`,
  spec: {
    options: [
      ...COMMON_OPTIONS,
      { long: 'cache-dir', type: 'string' },
      { long: 'force', type: 'boolean' },
      { long: 'update-apt', type: 'boolean' },
    ],
  },
  async run(parsed) {
    const o = parsed.options;
    const json = o['json'] === true;
    const started = Date.now();
    const result = await buildGuestAssets({
      ...(typeof o['cache-dir'] === 'string' ? { cacheDir: path.resolve(o['cache-dir']) } : {}),
      ...(o['force'] ? { force: true } : {}),
      ...(o['update-apt'] ? { updateAptLists: true } : {}),
      onProgress: (p) => {
        if (!json) process.stderr.write(`[${((Date.now() - started) / 1000).toFixed(1).padStart(5)}s] ${p.message}\n`);
      },
    });
    const { assets } = result;
    if (json) {
      printJson({ built: result.built, id: assets.id, dir: assets.dir, kernel: assets.kernel, initramfs: assets.initramfs, kernelRelease: assets.manifest?.kernelRelease });
    } else {
      process.stdout.write(`${result.built ? 'built' : 'up to date'}: ${assets.dir} (kernel ${assets.manifest?.kernelRelease ?? '?'})\n`);
    }
    return 0;
  },
};
