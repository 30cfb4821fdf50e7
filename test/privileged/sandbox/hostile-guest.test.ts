/**
 * A compromised guest against the host, on a real VM. The attacker is a root process in the guest
 * that sees the whole shared filesystem (a container made through the raw agent API with the
 * guest's mount of the share bound in, which is what root in the guest has): between the host's
 * steps it renames every folder the host made in the share and puts a symlink to a host canary
 * directory in its place, over and over. The host must never act on the canary (no unmount, no
 * bind, no deletion there), the user's data must stay as it was, and the sandbox must still
 * delete cleanly with nothing left. Once through the public API, with a swap between every two
 * host steps; once through the CLI (separate `vmpod` processes), with the attacker swapping
 * without pause while `vmpod run`, `exec`, `kill` and `delete -f` do their work.
 */
import fsSync from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../../src/sandbox/sandbox.js';
import { busyboxRootfs, expectNothingLeft, forceCleanup, makeStateDir, skipReason, vmpod } from './fixture.js';

/**
 * The attacker: a round moves every folder up to 4 levels down the share aside and puts a symlink
 * to the canary in its place, then says how many it swapped. `lockstep`: a round for each line
 * on stdin; else rounds without pause until the VM goes.
 */
function attackScript(canary: string, lockstep: boolean): string {
  return `
n=0
round() {
  n=$((n+1)); swapped=0; failed=0
  for d in /share/* /share/*/* /share/*/*/* /share/*/*/*/*; do
    [ -d "$d" ] || continue
    [ -L "$d" ] && continue
    case "$d" in *.moved.*) continue;; esac
    if mv "$d" "$d.moved.$n" 2>/dev/null && ln -s '${canary}' "$d" 2>/dev/null; then swapped=$((swapped+1)); else failed=$((failed+1)); fi
  done
  echo "round $n swapped $swapped failed $failed"
}
${lockstep ? 'while read cmd; do round; done' : 'while :; do round; done'}`;
}

/** Starts the attacker in `sandbox` through its raw agent (root in the guest, the share at /share). */
async function startAttacker(sandbox: Sandbox, canary: string, lockstep: boolean) {
  const agent = await sandbox.agent();
  const guestShare = `${agent.info.stateDir}/shared`;
  await agent.createContainer({
    id: 'attacker',
    rootfs: 'builtin',
    config: {
      ociVersion: '1.0.2',
      process: { args: ['sh', '-c', attackScript(canary, lockstep)], cwd: '/', env: ['PATH=/bin'] },
      root: { path: 'rootfs' },
      mounts: [
        { destination: '/proc', type: 'proc', source: 'proc' },
        { destination: '/share', type: 'bind', source: guestShare, options: ['rbind', 'rw'] },
      ],
      linux: { namespaces: [{ type: 'pid' }, { type: 'mount' }] },
    },
    stdio: { stdin: true, stdout: true, stderr: true },
  });
  const io = await agent.openStdio('attacker', { stdin: true, stdout: true, stderr: true });
  let seen = '';
  io.stdout!.on('data', (d: Buffer) => (seen += d.toString()));
  io.stderr!.resume();
  // The attacker's streams end with its VM, as they may (the CLI deletes it under our feet).
  for (const stream of [io.stdin, io.stdout, io.stderr]) stream?.on('error', () => undefined);
  await agent.startContainer('attacker');
  const rounds = (): number => (seen.match(/^round \d+/gmu) ?? []).length;
  return {
    agent,
    stdin: io.stdin!,
    output: () => seen,
    rounds,
    /** Waits until the attacker has done `n` rounds. */
    async until(n: number): Promise<void> {
      const deadline = Date.now() + 30_000;
      while (rounds() < n) {
        if (Date.now() > deadline) throw new Error(`the attacker did not answer: ${seen}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
  };
}

/** A canary tree: what the host would make (or remove) there if it followed the guest's symlinks. */
async function makeCanary(victims: string[]): Promise<string> {
  const canary = await fs.mkdtemp(path.join(os.tmpdir(), 'vt-canary-'));
  await fs.mkdir(path.join(canary, 'mounts', '0'), { recursive: true });
  await fs.writeFile(path.join(canary, 'keep'), 'canary');
  for (const id of victims) {
    await fs.mkdir(path.join(canary, id, 'mounts', '0'), { recursive: true });
    await fs.writeFile(path.join(canary, id, 'keep'), 'canary');
  }
  return canary;
}

/** Asserts the canary is as made and that nothing is mounted in it. */
async function expectCanaryIntact(canary: string, victims: string[], touched: string[]): Promise<void> {
  expect(await fs.readFile(path.join(canary, 'keep'), 'utf8').catch((e: unknown) => String(e))).toBe('canary');
  expect(touched).toEqual([]);
  expect((await fs.readdir(canary)).sort()).toEqual(['keep', 'mounts', ...victims].sort());
  for (const id of victims) expect((await fs.readdir(path.join(canary, id))).sort()).toEqual(['keep', 'mounts']);
  expect(await fs.readdir(path.join(canary, 'mounts'))).toEqual(['0']);
  expect(await fs.readdir(path.join(canary, 'mounts', '0'))).toEqual([]);
  const mounts = (await fs.readFile('/proc/self/mountinfo', 'utf8')).split('\n').map((l) => l.split(' ')[4] ?? '');
  expect(mounts.filter((m) => m.startsWith(canary))).toEqual([]);
}

/** An OCI bundle whose container sleeps with host folder `data` bound at /data. */
async function victimBundle(dir: string, data: string): Promise<{ bundle: string; rootfs: string }> {
  const bundle = path.join(dir, 'bundle');
  const rootfs = await busyboxRootfs(bundle);
  await fs.writeFile(
    path.join(bundle, 'config.json'),
    JSON.stringify({
      ociVersion: '1.0.2',
      process: { args: ['sleep', '1000'], cwd: '/', env: ['PATH=/bin'] },
      root: { path: 'rootfs' },
      mounts: [
        { destination: '/proc', type: 'proc', source: 'proc' },
        { destination: '/data', type: 'bind', source: data, options: ['rbind', 'rw'] },
      ],
      linux: { namespaces: [{ type: 'pid' }, { type: 'mount' }] },
    }),
  );
  return { bundle, rootfs };
}

describe.skipIf(skipReason)(`a compromised guest${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let stateDir: string;
  let work: string;
  const canaries: string[] = [];

  beforeAll(async () => {
    stateDir = await makeStateDir();
    work = await fs.mkdtemp(path.join(os.tmpdir(), 'vt-hostile-'));
  });

  afterAll(async () => {
    try {
      for (const canary of canaries) await fs.rm(canary, { recursive: true, force: true });
      await fs.rm(work, { recursive: true, force: true });
    } finally {
      await forceCleanup(stateDir);
    }
  });

  it('cannot make the host unmount, bind or delete anything outside the share (public API, a swap between every two host steps)', async () => {
    const victims = ['victim0', 'victim1'];
    const canary = await makeCanary(victims);
    canaries.push(canary);
    const data = path.join(work, 'data-api');
    await fs.mkdir(data);
    await fs.writeFile(path.join(data, 'precious'), 'user data');
    const { bundle, rootfs } = await victimBundle(path.join(work, 'api'), data);
    const sandbox = await Sandbox.create({ stateDir, cpus: 1, memoryMiB: 256 });
    await sandbox.start();
    const attacker = await startAttacker(sandbox, canary, true);
    const swap = async (): Promise<void> => {
      const n = attacker.rounds() + 1;
      attacker.stdin.write('swap\n');
      await attacker.until(n);
    };

    // Anything the host does in the canary shows up here.
    const touched: string[] = [];
    const watcher = fsSync.watch(canary, { recursive: true }, (event, name) => touched.push(`${event} ${String(name)}`));

    // Every host step is followed by a swap of everything the guest can reach.
    for (const id of victims) {
      await swap();
      const victim = await sandbox.createContainer({ id, bundle }).catch((e: unknown) => e as Error);
      await swap();
      if (victim instanceof Error) continue; // refusing is fine; acting on the canary is not
      await victim.start().catch(() => undefined);
      await swap();
      await victim.delete({ force: true }).catch(() => undefined);
      await swap();
    }
    attacker.stdin.end();
    await new Promise((r) => setTimeout(r, 200));
    watcher.close();
    await attacker.agent.wait('attacker').catch(() => undefined);
    await attacker.agent.deleteContainer('attacker', { force: true }).catch(() => undefined);

    // The canary and the user's data are intact, and the attacker really ran (it reports its rounds).
    await expectCanaryIntact(canary, victims, touched);
    expect(await fs.readFile(path.join(data, 'precious'), 'utf8')).toBe('user data');
    expect((await fs.readdir(rootfs)).sort()).toContain('bin');
    expect(attacker.output()).toMatch(/round \d+ swapped/u);

    // And the sandbox still deletes cleanly.
    await sandbox.delete({ force: true });
    await expectNothingLeft(stateDir);
  });

  it('cannot through the CLI either: vmpod run, exec, kill and delete -f while the guest swaps without pause', async () => {
    const canary = await makeCanary([]);
    canaries.push(canary);
    const data = path.join(work, 'data-cli');
    await fs.mkdir(data);
    await fs.writeFile(path.join(data, 'precious'), 'user data');
    const volume = path.join(work, 'volume-cli');
    await fs.mkdir(volume);
    await fs.writeFile(path.join(volume, 'kept'), 'volume data');
    const { bundle, rootfs } = await victimBundle(path.join(work, 'cli'), data);
    const touched: string[] = [];
    const watcher = fsSync.watch(canary, { recursive: true }, (event, name) => touched.push(`${event} ${String(name)}`));
    let sandbox: Sandbox | undefined;
    try {
      // The victim sandbox, made by the CLI: a bundle container with a bind of host data, and a volume.
      const run = await vmpod(stateDir, ['run', '-d', '--name', 'hgcli', '-v', `${volume}:/vol:ro`, bundle]);
      expect(run.stderr).toBe('');
      expect(run.code).toBe(0);
      const exec = await vmpod(stateDir, ['exec', 'hgcli', '--', 'cat', '/data/precious', '/vol/kept']);
      expect(exec).toMatchObject({ code: 0, stdout: 'user datavolume data' });
      // Root in that guest starts swapping (also inside the container's read-write rootfs, which is
      // the guest's to wreck); the test process is only its way in.
      sandbox = await Sandbox.attach('hgcli', { stateDir });
      const attacker = await startAttacker(sandbox, canary, false);
      await attacker.until(3);
      expect(await vmpod(stateDir, ['kill', 'hgcli', 'KILL'])).toMatchObject({ code: 0, stderr: '' });
      // The signal reached the container: it ended by SIGKILL.
      let victim = (await sandbox.containers()).find((c) => c.id === 'hgcli');
      for (const deadline = Date.now() + 30_000; victim?.status !== 'stopped' && Date.now() < deadline; ) {
        await new Promise((r) => setTimeout(r, 100));
        victim = (await sandbox.containers()).find((c) => c.id === 'hgcli');
      }
      expect(victim).toMatchObject({ status: 'stopped', exit: { exitCode: 137, signal: 9 } });
      sandbox.detach();
      // The host releases the binds, the share and the VM while the guest still swaps.
      const deleted = await vmpod(stateDir, ['delete', '-f', 'hgcli']);
      expect(deleted).toMatchObject({ code: 0, stderr: '' });
      expect(attacker.output()).toMatch(/round \d+ swapped \d+ failed [1-9]/u); // the host's folders held
    } finally {
      sandbox?.detach(); // (again, on failure: no watch of ours may write its record while it is cleaned up)
      await new Promise((r) => setTimeout(r, 200));
      watcher.close();
    }
    await expectCanaryIntact(canary, [], touched);
    expect(await fs.readFile(path.join(data, 'precious'), 'utf8')).toBe('user data');
    expect(await fs.readFile(path.join(volume, 'kept'), 'utf8')).toBe('volume data');
    expect((await fs.readdir(rootfs)).sort()).toContain('bin');
    await expectNothingLeft(stateDir);
  });
});
