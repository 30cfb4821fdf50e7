/**
 * kill -9 of the orchestrating process at every step, then delete from another process: nothing
 * may be left. A child process runs a sandbox's whole life (test/privileged/crash-scenario.ts:
 * create, start, two containers of one bundle through the share, volumes added and removed,
 * container delete, stop, start again, delete) and kills itself with SIGKILL at the N-th write of
 * the record, just before it (`write:N`) or just after it (`written:N`), or right after spawning a
 * daemon (`spawned:NAME`) — every host object is recorded before it is made, so these points walk
 * every step. After each crash this process deletes the sandbox (`Sandbox.remove`) and takes a
 * census: no process, mount, boot folder, sandbox folder or hugepage claim left;
 * the shared host directory and the bundle untouched.
 *
 * Most points run on the stand-in hypervisor (the real agent on the host, in its own mount
 * namespace and cgroup: ~1 s a life). Then `write:N` through a start on real QEMU with a CNI
 * bridge network and hugepage-backed RAM (namespaces, links, host-local reservations, CNI cache).
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../src/sandbox/sandbox.js';
import { hugepageClaims, hugepagePool } from '../../src/devices/hugepages.js';
import { mountTable } from '../../src/host/tree.js';
import { StandInHypervisor, cleanupStandIn, standInFiles } from './stand-in-hypervisor.js';
import { busyboxRootfs, forceCleanup, processesMentioning } from './sandbox/fixture.js';
import { World, skipReason as networkSkip } from './network-sandbox/fixture.js';
import type { ScenarioArgs } from './crash-scenario.js';

const root = process.getuid?.() === 0;
const SCENARIO = path.resolve('test/privileged/crash-scenario.ts');
const haveHugepages = await hugepagePool('2M').then(
  () => true,
  () => false,
);

interface Life {
  /** How the child ended: `done`, or the signal that killed it. */
  ended: string;
  writes: number;
  stderr: string;
}

/** Runs the scenario with `failpoint` (or none). */
function live(args: ScenarioArgs, failpoint: string | undefined): Promise<Life> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', SCENARIO, JSON.stringify(args)], {
      env: { ...process.env, VMPOD_STAND_IN_DIR: standInFiles().dir, ...(failpoint ? { VMPOD_FAILPOINT: failpoint } : {}) },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d));
    child.stderr.on('data', (d: Buffer) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code, signal) => {
      const writes = Number(/record writes: (\d+)/u.exec(stderr)?.[1] ?? -1);
      resolve({ ended: stdout.includes('done') && code === 0 ? 'done' : (signal ?? `exit ${code}: ${stderr.slice(-2000)}`), writes, stderr });
    });
  });
}

describe.skipIf(!root)('crash points: kill -9 anywhere, then delete from another process (needs root)', () => {
  let dir: string;
  let args: ScenarioArgs;
  let poolBefore: number | undefined;

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vt-crash-'));
    const data = path.join(dir, 'data');
    await fs.mkdir(data);
    await fs.writeFile(path.join(data, 'keep'), 'user data');
    const bundle = path.join(dir, 'bundle');
    await busyboxRootfs(bundle);
    await fs.mkdir(path.join(bundle, 'rootfs', 'data'), { recursive: true });
    await fs.writeFile(
      path.join(bundle, 'config.json'),
      JSON.stringify({
        ociVersion: '1.0.2',
        process: { args: ['sleep', '300'], cwd: '/', env: ['PATH=/bin'] },
        root: { path: 'rootfs' },
        mounts: [
          { destination: '/proc', type: 'proc', source: 'proc' },
          { destination: '/data', type: 'bind', source: data, options: ['rbind', 'rw'] },
        ],
        linux: { namespaces: [{ type: 'pid' }, { type: 'mount' }] },
      }),
    );
    args = { stateDir: path.join(dir, 'state'), id: 'crash', bundle, data, hugepages: haveHugepages, qemu: false };
    poolBefore = haveHugepages ? (await hugepagePool('2M')).total : undefined;
    standInFiles(); // the busybox rootfs the stand-in agents share, made once here
  });

  afterAll(async () => {
    await Sandbox.remove('crash', { stateDir: args.stateDir, force: true, hypervisor: new StandInHypervisor() }).catch(() => undefined);
    await cleanupStandIn();
    await forceCleanup(args.stateDir);
    await fs.rm(dir, { recursive: true, force: true });
  });

  /** Deletes what a crash left, from this process, and checks that nothing is left. */
  async function deleteAndCensus(failpoint: string): Promise<void> {
    const warnings = await Sandbox.remove(args.id, { stateDir: args.stateDir, force: true, ...(args.qemu ? {} : { hypervisor: new StandInHypervisor() }) }).catch((error: unknown) => {
      if ((error as { code?: string }).code === 'ERR_VMPOD_NOT_FOUND') return []; // crashed before the folder existed
      throw new Error(`delete after ${failpoint} failed: ${(error as Error).message}`, { cause: error });
    });
    const left: string[] = [...warnings.map((w) => `warning: ${w}`)];
    for (const pid of await processesMentioning(args.stateDir)) left.push(`process ${pid}`);
    for (const m of await mountTable()) if (m.mountPoint.startsWith(args.stateDir)) left.push(`mount ${m.mountPoint}`);
    for (const name of await fs.readdir(path.join(args.stateDir, 'sandboxes')).catch(() => [])) left.push(`sandbox folder ${name}`);
    for (const name of await fs.readdir(path.join(args.stateDir, 'boots')).catch(() => [])) left.push(`boot folder ${name}`);
    if (haveHugepages) {
      const pool = (await hugepagePool('2M')).total;
      if (pool !== poolBefore) left.push(`hugepage pool ${pool}, was ${poolBefore}`);
      for (const c of await hugepageClaims({ size: '2M' })) if (c.owner.includes(args.id)) left.push(`hugepage claim ${c.claimId}`);
    }
    expect(await fs.readFile(path.join(args.data, 'keep'), 'utf8')).toBe('user data');
    expect((await fs.readdir(path.join(args.bundle, 'rootfs'))).sort()).toContain('bin');
    expect({ failpoint, left }).toEqual({ failpoint, left: [] });
  }

  it('gets through once without a crash, and counts its record writes', async () => {
    const life = await live(args, undefined);
    expect(life.ended).toBe('done');
    expect(life.writes).toBeGreaterThan(50);
    await deleteAndCensus('none');
  });

  for (const kind of ['write', 'written'] as const) {
    it(`${kind}:N for every record write N: the next delete leaves nothing`, { timeout: 1_800_000 }, async () => {
      const crashed: number[] = [];
      for (let n = 1; ; n++) {
        const life = await live(args, `${kind}:${n}`);
        if (life.ended === 'done') break; // past the last write
        expect(life.ended, `${kind}:${n}`).toBe('SIGKILL');
        crashed.push(n);
        await deleteAndCensus(`${kind}:${n}`);
      }
      expect(crashed.length).toBeGreaterThan(50);
      console.log(`${kind}:N: ${crashed.length} crash points, each deleted by another process with nothing left`);
    });
  }

  it('spawned:NAME (a daemon spawned, not yet recorded): the next delete finds and kills it', async () => {
    for (const name of ['unshare', 'virtiofsd', 'vmpod-logger']) {
      const life = await live(args, `spawned:${name}`);
      expect(life.ended, name).toBe('SIGKILL');
      await deleteAndCensus(`spawned:${name}`);
    }
  });

  describe.skipIf(networkSkip)(`on real QEMU, with a CNI bridge network and hugepage-backed RAM${networkSkip ? ` (skipped: ${networkSkip})` : ''}`, () => {
    let world: World;
    beforeAll(async () => {
      world = await new World().init();
    });
    afterAll(async () => {
      await world.cleanup();
    });

    it('write:N for every record write of create, start and delete: nothing left, CNI DEL run', { timeout: 1_800_000 }, async () => {
      const net = world.bridgeNet();
      const saved = args;
      args = { ...args, qemu: true, startOnly: true, extra: { network: { cni: [{ config: net.config }] } } };
      try {
        let n = 1;
        for (; ; n++) {
          const life = await live(args, `write:${n}`);
          if (life.ended === 'done') break;
          expect(life.ended, `write:${n}`).toBe('SIGKILL');
          await deleteAndCensus(`write:${n} (qemu)`);
          await world.expectNothingLeft([args.id]);
        }
        expect(n).toBeGreaterThan(10);
        console.log(`write:N on QEMU: ${n - 1} crash points, each deleted by another process with nothing left`);
      } finally {
        args = saved;
      }
    });
  });
});
