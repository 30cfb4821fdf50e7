/**
 * container-start: starting a short container in a sandbox that already runs, against `runc
 * run` of the same bundle on the host.
 *
 * The bundle is a busybox-static rootfs with the config.json of `runc spec` (Debian's runc),
 * `terminal: false`, args `/bin/true`. Variants, interleaved after one warm-up round:
 * - vmpod: `createContainer({ bundle })` + `start()` + `wait()` in a running sandbox (stdout
 *   and stderr open and drained, as `runc run` hands its stdio to the container); then
 *   `delete()`, timed on its own (vmpod-delete) and together (vmpod-with-delete: `runc run`
 *   deletes its container before it exits, so this is the like-for-like total);
 * - vmpod-builtin: the same with the builtin rootfs (`process.args` only, no bundle): the bundle's
 *   cost is the bind of its rootfs into the virtio-fs share plus the guest's lookups through it;
 * - vmpod-cache-always: `vmpod` in a second sandbox whose shared filesystem is cached by the
 *   guest (`sharedFsCache: 'always'`): containers of the bundle share one bind of its rootfs, so
 *   from the second one on, busybox comes from the guest's page cache;
 * - runc-run: `runc --root TMP run --bundle BUNDLE ID`, spawned from Node.
 * The sandboxes boot once before the rounds (not timed). Everything lives in temporary
 * directories, removed at the end even on failure.
 *
 * Usage: npm run bench -- container-start [RUNS] [--cache GUEST_CACHE_DIR]   (default 30)
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { Sandbox, type ContainerConfig } from '../src/sandbox/index.js';
import { busyboxBundle, RUNC } from './lib/bundle.js';
import { withCleanup } from './lib/cleanup.js';
import { benchArgs, interleave } from './lib/interleave.js';
import { machineFacts } from './lib/machine.js';
import { ratios, report } from './lib/report.js';
import { benchStateDir } from './lib/sandbox.js';

const exec = promisify(execFile);
const USAGE = 'usage: npm run bench -- container-start [RUNS] [--cache GUEST_CACHE_DIR]';

export default async function main(args: string[]): Promise<void> {
  const { runs, options } = benchArgs(args, 30, { cache: '' }, USAGE);
  const facts = await machineFacts();
  const { stdout: runcVersion } = await exec(RUNC, ['--version']);

  await withCleanup(async (cleanup) => {
    const { signal } = cleanup;
    const tag = randomBytes(2).toString('hex');
    const work = await fs.mkdtemp(path.join(os.tmpdir(), 'vb-ctr-'));
    cleanup.add(`work dir ${work}`, () => fs.rm(work, { recursive: true, force: true }));
    const bundle = await busyboxBundle(path.join(work, 'bundle'), (spec) => {
      spec.process.args = ['/bin/true'];
    });
    const runcRoot = path.join(work, 'runc');
    await fs.mkdir(runcRoot);
    cleanup.add('runc containers', async () => {
      const { stdout } = await exec(RUNC, ['--root', runcRoot, 'list', '-q']);
      for (const id of stdout.split('\n').filter(Boolean)) await exec(RUNC, ['--root', runcRoot, 'delete', '--force', id]);
    });

    const stateDir = await benchStateDir(cleanup);
    const sandbox = await Sandbox.create({ stateDir, ...(options.cache ? { guest: { cacheDir: options.cache } } : {}) }, { signal });
    cleanup.add(`sandbox ${sandbox.id}`, () => sandbox.delete({ force: true }));
    await sandbox.start({ signal });
    const cached = await Sandbox.create({ stateDir, sharedFsCache: 'always', ...(options.cache ? { guest: { cacheDir: options.cache } } : {}) }, { signal });
    cleanup.add(`sandbox ${cached.id}`, () => cached.delete({ force: true }));
    await cached.start({ signal });

    async function inSandbox(prefix: string, from: ContainerConfig, where = sandbox): Promise<Record<string, number>> {
      const t0 = performance.now();
      const container = await where.createContainer({ ...from, signal });
      container.stdout?.resume();
      container.stderr?.resume();
      await container.start({ signal });
      const status = await container.wait({ signal });
      const t1 = performance.now();
      if (status.exitCode !== 0 || status.signal !== 0) throw new Error(`${prefix}: /bin/true ended with ${JSON.stringify(status)}`);
      await container.delete({ signal });
      const t2 = performance.now();
      return { [prefix]: t1 - t0, [`${prefix}-delete`]: t2 - t1, [`${prefix}-with-delete`]: t2 - t0 };
    }

    let n = 0;
    async function runcRun(): Promise<number> {
      const id = `vb${tag}-${n++}`;
      const t0 = performance.now();
      await exec(RUNC, ['--root', runcRoot, 'run', '--bundle', bundle, id], { signal });
      return performance.now() - t0;
    }

    const samples = await interleave(
      runs,
      [
        ['vmpod', () => inSandbox('vmpod', { bundle })],
        ['vmpod-builtin', () => inSandbox('vmpod-builtin', { process: { args: ['/bin/true'] } })],
        ['vmpod-cache-always', () => inSandbox('vmpod-cache-always', { bundle }, cached)],
        ['runc-run', runcRun],
      ],
      { signal },
    );
    const results = samples.results();
    report(
      'container-start',
      'ms',
      runs,
      results,
      ratios(results, [
        ['vmpod', 'runc-run'],
        ['vmpod-with-delete', 'runc-run'],
        ['vmpod-builtin', 'runc-run'],
        ['vmpod-cache-always', 'runc-run'],
        ['vmpod', 'vmpod-builtin'],
        ['vmpod-cache-always', 'vmpod'],
      ]),
      { machine: facts, runc: /runc version (\S+)/u.exec(runcVersion)?.[1], vm: { machine: sandbox.config.machine, cpus: 1, memory_mib: sandbox.config.memoryMiB } },
    );
  });
}
