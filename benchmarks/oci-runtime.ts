/**
 * oci-runtime: vmpod-runtime driven by a real caller, against the runtimes that caller would
 * otherwise use, in the same run.
 *
 * Variants, interleaved after one warm-up round:
 * - podman-vmpod / podman-runc / podman-crun: `podman run --rm --pull never IMAGE true` (Debian's
 *   podman 4.3, `--runtime ABS`, its own storage and config as the tests have it:
 *   test/privileged/helpers/podman.ts; `--network none`), spawn to exit. The image (the tests'
 *   busybox image, from its OCI layout) is pulled once before the rounds, so no variant copies
 *   layers. crun is probed first: on a host with hybrid cgroups (v1 controllers with a v2 mount)
 *   it refuses every container, and the JSON line says so instead of timing it;
 * - state-vmpod / state-runc: `RUNTIME --root R state ID` of a container each runtime created
 *   before the rounds (created, not started), spawn to exit: the cost of every caller's polling;
 * - breakdown (where podman-vmpod's time goes): `node-start` (`node -e 0`: Node's own start),
 *   `vmpod-runtime-run` (`vmpod-runtime --root R run --bundle B ID` of the same `true`, no podman:
 *   Node + the VM's boot + the agent + the container), `runc-run` (the same with runc), and
 *   `vm-ready` (`Sandbox.create()` + `start()` in this process: the VM's boot to the agent's
 *   answer, with the sandbox options vmpod-runtime uses; its deletion is timed apart as
 *   `vm-delete`). podman's own share is podman-X minus X-run.
 *
 * Usage: npm run bench -- oci-runtime [RUNS]   (default 5; build dist/ first: npm run build:ts)
 */
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { busyboxImage, removeTestImages } from '../test/privileged/helpers/oci-images.js';
import { makePodman, type Podman } from '../test/privileged/helpers/podman.js';
import { VMPOD_RUNTIME_PATH } from '../test/privileged/helpers/oci-runtimes.js';
import { busyboxBundle, RUNC } from './lib/bundle.js';
import { withCleanup } from './lib/cleanup.js';
import { benchArgs, interleave } from './lib/interleave.js';
import { machineFacts } from './lib/machine.js';
import { ratios, report } from './lib/report.js';
import { benchStateDir } from './lib/sandbox.js';
import { Sandbox } from '../src/sandbox/index.js';

const exec = promisify(execFile);
const USAGE = 'usage: npm run bench -- oci-runtime [RUNS]';
const CRUN = '/usr/bin/crun';

/** Spawns to exit; throws unless it exits 0. Returns the milliseconds it took. */
function timed(file: string, args: string[], signal: AbortSignal, env?: NodeJS.ProcessEnv): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(file, args, { stdio: ['ignore', 'ignore', 'pipe'], signal, ...(env ? { env } : {}) });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('exit', (code, sig) => {
      const ms = performance.now() - t0;
      if (code === 0) resolve(ms);
      else reject(new Error(`${path.basename(file)} ${args.slice(-4).join(' ')}: ${sig ?? `exit ${code}`}: ${stderr.trim().slice(-800)}`));
    });
  });
}

export default async function main(args: string[]): Promise<void> {
  const { runs } = benchArgs(args, 5, {}, USAGE);
  const facts = await machineFacts();
  await fs.access(VMPOD_RUNTIME_PATH, fs.constants.X_OK).catch(() => {
    throw new Error(`no executable vmpod-runtime at ${VMPOD_RUNTIME_PATH}: npm run build:ts`);
  });
  const versions = {
    podman: (await exec('podman', ['--version'])).stdout.trim(),
    runc: (await exec(RUNC, ['--version'])).stdout.split('\n')[0],
    crun: (await exec(CRUN, ['--version']).catch(() => ({ stdout: 'absent' }))).stdout.split('\n')[0],
    vmpodRuntime: (await exec(VMPOD_RUNTIME_PATH, ['--version'])).stdout.split('\n')[0],
  };

  await withCleanup(async (cleanup) => {
    const { signal } = cleanup;
    const tag = randomBytes(3).toString('hex');
    const work = await fs.mkdtemp(path.join(os.tmpdir(), 'vb-oci-'));
    cleanup.add(`work dir ${work}`, () => fs.rm(work, { recursive: true, force: true }));
    cleanup.add('test image', () => removeTestImages());
    const image = await busyboxImage();

    async function podmanFor(runtime: string): Promise<{ pm: Podman; id: string }> {
      const pm = await makePodman(runtime);
      cleanup.add(`podman ${pm.dir}`, () => pm.destroy());
      const pulled = await pm.podman(['pull', image.ociRef]);
      if (pulled.code !== 0) throw new Error(`podman pull: ${pulled.stderr}`);
      return { pm, id: pulled.stdout.trim().split('\n').pop()! };
    }
    const podmans = { vmpod: await podmanFor(VMPOD_RUNTIME_PATH), runc: await podmanFor(RUNC) };
    const podmanRun = ({ pm, id }: { pm: Podman; id: string }) => () =>
      timed('/usr/bin/podman', [...pm.globalArgs, 'run', '--rm', '--pull', 'never', ...pm.containerArgs, id, 'true'], signal, pm.env);

    // crun: probed once; included only if it runs a container here.
    let crun: { pm: Podman; id: string } | undefined;
    let crunRefused: string | undefined;
    if (versions.crun !== 'absent') {
      const candidate = await podmanFor(CRUN);
      try {
        await podmanRun(candidate)();
        crun = candidate;
      } catch (error) {
        crunRefused = (error as Error).message.split('\n').pop();
      }
    } else crunRefused = 'crun is not installed';

    // Bundles and roots for the direct runs and the state calls.
    const bundle = await busyboxBundle(path.join(work, 'bundle'), (spec) => {
      spec.process.args = ['true'];
    });
    const sleeper = await busyboxBundle(path.join(work, 'sleeper'), (spec) => {
      spec.process.args = ['sleep', '3600'];
    });
    const roots = { vmpod: path.join(work, 'vmpod-root'), runc: path.join(work, 'runc-root') };
    for (const r of Object.values(roots)) await fs.mkdir(r);
    const runtimes = { vmpod: VMPOD_RUNTIME_PATH, runc: RUNC };
    for (const [name, root] of Object.entries(roots) as Array<[keyof typeof roots, string]>) {
      cleanup.add(`${name} containers`, async () => {
        const list = await exec(runtimes[name], ['--root', root, 'list', '-q']).catch(() => ({ stdout: '' }));
        for (const id of list.stdout.split('\n').filter(Boolean)) await exec(runtimes[name], ['--root', root, 'delete', '--force', id]).catch(() => undefined);
      });
    }
    const stateIds = { vmpod: `vb-oci-${tag}-state-vmpod`, runc: `vb-oci-${tag}-state-runc` };
    for (const name of ['vmpod', 'runc'] as const) {
      await timed(runtimes[name], ['--root', roots[name], 'create', '--bundle', sleeper, stateIds[name]], signal);
    }
    let n = 0;
    const directRun = (name: 'vmpod' | 'runc') => () => timed(runtimes[name], ['--root', roots[name], 'run', '--bundle', bundle, `vb-oci-${tag}-${name}-${n++}`], signal);
    const state = (name: 'vmpod' | 'runc') => () => timed(runtimes[name], ['--root', roots[name], 'state', stateIds[name]], signal);
    const stateDir = await benchStateDir(cleanup);
    async function vmReady(): Promise<Record<string, number>> {
      const t0 = performance.now();
      const sandbox = await Sandbox.create({ stateDir, agentPorts: 16 }, { signal });
      const undo = cleanup.add(`sandbox ${sandbox.id}`, () => sandbox.delete({ force: true }));
      await sandbox.start({ signal });
      const t1 = performance.now();
      await sandbox.delete({ force: true, signal });
      undo();
      return { 'vm-ready': t1 - t0, 'vm-delete': performance.now() - t1 };
    }

    const samples = await interleave(
      runs,
      [
        ['podman-vmpod', podmanRun(podmans.vmpod)],
        ['podman-runc', podmanRun(podmans.runc)],
        ...(crun ? ([['podman-crun', podmanRun(crun)]] as const) : []),
        ['vmpod-runtime-run', directRun('vmpod')],
        ['runc-run', directRun('runc')],
        ['vm-ready', vmReady],
        ['state-vmpod', state('vmpod')],
        ['state-runc', state('runc')],
        ['node-start', () => timed(process.execPath, ['-e', '0'], signal)],
      ],
      { signal },
    );
    const results = samples.results();
    report(
      'oci-runtime',
      'ms',
      runs,
      results,
      ratios(results, [
        ['podman-vmpod', 'podman-runc'],
        ['podman-vmpod', 'podman-crun'],
        ['podman-runc', 'runc-run'],
        ['podman-vmpod', 'vmpod-runtime-run'],
        ['vmpod-runtime-run', 'runc-run'],
        ['state-vmpod', 'state-runc'],
        ['state-vmpod', 'node-start'],
        ['vm-ready', 'vmpod-runtime-run'],
      ]),
      { machine: facts, versions, ...(crunRefused ? { crun: `refused: ${crunRefused}` } : {}) },
    );
  });
}
