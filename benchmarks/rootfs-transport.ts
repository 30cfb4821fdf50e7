/**
 * rootfs-transport: how a container's root filesystem reaches the guest, timed from
 * `createContainer` to its exit and `delete()`, in one running sandbox:
 * - virtiofs: the rootfs directory bind-mounted into the sandbox's virtio-fs share (the default);
 * - block: an ext4 image made from the same directory (`mkfs.ext4 -d`), hot plugged as a
 *   virtio-blk disk on a free PCIe root port, mounted by the agent; unplugged and removed on delete.
 * The rootfs is busybox-static with its applet links; the container runs `/bin/true`. Interleaved
 * after one warm-up round.
 *
 * Usage: npm run bench -- rootfs-transport [RUNS] [--cache GUEST_CACHE_DIR]   (default 10)
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Sandbox } from '../src/sandbox/index.js';
import { busyboxBundle } from './lib/bundle.js';
import { withCleanup } from './lib/cleanup.js';
import { benchArgs, interleave } from './lib/interleave.js';
import { machineFacts } from './lib/machine.js';
import { ratios, report } from './lib/report.js';
import { benchStateDir } from './lib/sandbox.js';

const USAGE = 'usage: npm run bench -- rootfs-transport [RUNS] [--cache GUEST_CACHE_DIR]';

export default async function main(args: string[]): Promise<void> {
  const { runs, options } = benchArgs(args, 10, { cache: '' }, USAGE);
  const facts = await machineFacts();
  await withCleanup(async (cleanup) => {
    const { signal } = cleanup;
    const work = await fs.mkdtemp(path.join(os.tmpdir(), 'vb-rootfs-'));
    cleanup.add(`work dir ${work}`, () => fs.rm(work, { recursive: true, force: true }));
    const rootfs = path.join(await busyboxBundle(path.join(work, 'bundle')), 'rootfs');
    const stateDir = await benchStateDir(cleanup);
    const sandbox = await Sandbox.create({ stateDir, ...(options.cache ? { guest: { cacheDir: options.cache } } : {}) }, { signal });
    cleanup.add(`sandbox ${sandbox.id}`, () => sandbox.delete({ force: true }));
    await sandbox.start({ signal });
    const once = (transport: 'virtiofs' | 'block') => async (): Promise<number> => {
      const t0 = performance.now();
      const c = await sandbox.createContainer({ rootfs, rootfsTransport: transport, process: { args: ['/bin/true'] }, stdio: { stdout: false, stderr: false }, signal });
      await c.start();
      const status = await c.wait();
      await c.delete();
      if (status.exitCode !== 0) throw new Error(`${transport}: /bin/true exited ${status.exitCode}`);
      return performance.now() - t0;
    };
    const samples = await interleave(runs, [['virtiofs', once('virtiofs')], ['block', once('block')]], { signal });
    const results = samples.results();
    const rootfsBytes = (await fs.readdir(path.join(rootfs, 'bin'))).length;
    report('rootfs-transport', 'ms', runs, results, ratios(results, [['block', 'virtiofs']]), { rootfs: `busybox-static, ${rootfsBytes} entries in /bin`, ...facts });
  });
}
