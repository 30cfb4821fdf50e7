/**
 * A compromised guest against the host, on a real VM. The attacker is a root process in the guest
 * that sees the whole shared filesystem (a container made through the raw agent API with the
 * guest's mount of the share bound in, which is what root in the guest has): between the host's
 * steps it renames every folder the host made in the share and puts a symlink to a host canary
 * directory in its place, over and over. The host must never act on the canary (no unmount, no
 * bind, no deletion there), the user's data must stay as it was, and the sandbox must still
 * delete cleanly with nothing left.
 */
import fsSync from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../../src/sandbox/sandbox.js';
import { busyboxRootfs, collect, expectNothingLeft, forceCleanup, makeStateDir, skipReason } from './fixture.js';

/**
 * The attacker: for each line on stdin, every folder up to 4 levels down the share is moved aside
 * and a symlink to the canary put in its place; then it says how many it swapped.
 */
function attackScript(canary: string): string {
  return `
n=0
while read cmd; do
  n=$((n+1)); swapped=0; failed=0
  for d in /share/* /share/*/* /share/*/*/* /share/*/*/*/*; do
    [ -d "$d" ] || continue
    [ -L "$d" ] && continue
    case "$d" in *.moved.*) continue;; esac
    if mv "$d" "$d.moved.$n" 2>/dev/null && ln -s '${canary}' "$d" 2>/dev/null; then swapped=$((swapped+1)); else failed=$((failed+1)); fi
  done
  echo "round $n swapped $swapped failed $failed"
done`;
}

describe.skipIf(skipReason)(`a compromised guest${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let stateDir: string;
  let work: string;
  let canary: string;
  let sandbox: Sandbox;

  beforeAll(async () => {
    stateDir = await makeStateDir();
    work = await fs.mkdtemp(path.join(stateDir, 'work-'));
    canary = await fs.mkdtemp(path.join(os.tmpdir(), 'vt-canary-'));
    await fs.mkdir(path.join(canary, 'mounts', '0'), { recursive: true });
    await fs.writeFile(path.join(canary, 'keep'), 'canary');
    // What the host would make (or remove) there if it followed the guest's symlinks.
    for (const id of ['victim0', 'victim1']) {
      await fs.mkdir(path.join(canary, id, 'mounts', '0'), { recursive: true });
      await fs.writeFile(path.join(canary, id, 'keep'), 'canary');
    }
    sandbox = await Sandbox.create({ stateDir, cpus: 1, memoryMiB: 256 });
    await sandbox.start();
  });

  afterAll(async () => {
    try {
      await fs.rm(canary, { recursive: true, force: true });
      await fs.rm(work, { recursive: true, force: true });
    } finally {
      await forceCleanup(stateDir);
    }
  });

  it('cannot make the host unmount, bind or delete anything outside the share', async () => {
    // The victim: a bundle container with a rootfs and a bind mount of host data.
    const bundle = path.join(work, 'bundle');
    const rootfs = await busyboxRootfs(bundle);
    const data = path.join(work, 'data');
    await fs.mkdir(data);
    await fs.writeFile(path.join(data, 'precious'), 'user data');
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

    // The attacker: root in the guest with the share (as the agent mounted it) at /share.
    const agent = await sandbox.agent();
    const guestShare = `${agent.info.stateDir}/shared`;
    await agent.createContainer({
      id: 'attacker',
      rootfs: 'builtin',
      config: {
        ociVersion: '1.0.2',
        process: { args: ['sh', '-c', attackScript(canary)], cwd: '/', env: ['PATH=/bin'] },
        root: { path: 'rootfs' },
        mounts: [
          { destination: '/proc', type: 'proc', source: 'proc' },
          { destination: '/share', type: 'bind', source: guestShare, options: ['rbind', 'rw'] },
        ],
        linux: { namespaces: [{ type: 'pid' }, { type: 'mount' }] },
      },
      stdio: { stdin: true, stdout: true, stderr: true },
    });
    const attackerIo = await agent.openStdio('attacker', { stdin: true, stdout: true, stderr: true });
    const attackerOut = collect(attackerIo.stdout);
    void collect(attackerIo.stderr);
    await agent.startContainer('attacker');
    let lines = 0;
    let seen = '';
    attackerIo.stdout!.on('data', (d: Buffer) => (seen += d.toString()));
    const swap = async (): Promise<void> => {
      lines++;
      attackerIo.stdin!.write('swap\n');
      const deadline = Date.now() + 30_000;
      while ((seen.match(/^round \d+/gmu) ?? []).length < lines) {
        if (Date.now() > deadline) throw new Error(`the attacker did not answer: ${seen}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    };

    // Anything the host does in the canary shows up here.
    const touched: string[] = [];
    const watcher = fsSync.watch(canary, { recursive: true }, (event, name) => touched.push(`${event} ${String(name)}`));

    // Every host step is followed by a swap of everything the guest can reach.
    for (let round = 0; round < 2; round++) {
      await swap();
      const victim = await sandbox.createContainer({ id: `victim${round}`, bundle }).catch((e: unknown) => e as Error);
      await swap();
      if (victim instanceof Error) continue; // refusing is fine; acting on the canary is not
      await victim.start().catch(() => undefined);
      await swap();
      await victim.delete({ force: true }).catch(() => undefined);
      await swap();
    }
    attackerIo.stdin!.end();
    await new Promise((r) => setTimeout(r, 200));
    watcher.close();
    await agent.wait('attacker').catch(() => undefined);
    const log = (await attackerOut).toString();
    await agent.deleteContainer('attacker', { force: true }).catch(() => undefined);

    // The canary and the user's data are intact, and the attacker really ran (it reports its rounds).
    expect(await fs.readFile(path.join(canary, 'keep'), 'utf8').catch((e: unknown) => String(e))).toBe('canary');
    expect(touched).toEqual([]);
    expect((await fs.readdir(canary)).sort()).toEqual(['keep', 'mounts', 'victim0', 'victim1']);
    for (const id of ['victim0', 'victim1']) expect((await fs.readdir(path.join(canary, id))).sort()).toEqual(['keep', 'mounts']);
    expect(await fs.readdir(path.join(canary, 'mounts'))).toEqual(['0']);
    expect(await fs.readdir(path.join(canary, 'mounts', '0'))).toEqual([]);
    expect(await fs.readFile(path.join(data, 'precious'), 'utf8')).toBe('user data');
    expect((await fs.readdir(rootfs)).sort()).toContain('bin');
    // Nothing is mounted outside the sandbox's folder because of the guest.
    const mounts = (await fs.readFile('/proc/self/mountinfo', 'utf8')).split('\n').map((l) => l.split(' ')[4] ?? '');
    expect(mounts.filter((m) => m.startsWith(canary))).toEqual([]);
    expect(log).toMatch(/round \d+ swapped/u);

    // And the sandbox still deletes cleanly.
    await sandbox.delete({ force: true });
    await expectNothingLeft(stateDir);
  });
});
