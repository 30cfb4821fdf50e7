/**
 * Events across processes: CLI processes (`vmpod run -d`, `vmpod exec`, `vmpod delete -f`) drive
 * a real sandbox while this process follows it with `Sandbox.watch()` and a `vmpod events`
 * process follows it too; both see it created, running, its container created, started and
 * exited with its code, then everything deleted, in that order. And a sandbox's volumes, as
 * devices, from its real record.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { buildGuestAssets } from '../../../src/guest/build.js';
import { Sandbox } from '../../../src/sandbox/sandbox.js';
import { Volume } from '../../../src/volume/volume.js';
import type { WatchEvent } from '../../../src/sandbox/watch.js';
import { expectNothingLeft, forceCleanup, makeStateDir, skipReason, spawnVmpod, vmpod } from './fixture.js';

/** An event as a short line: `sandbox running`, `container exited c 3`, `device added volume=v hotplugged=true`, `error`. */
function brief(e: { type: string; action?: string; container?: string; exitStatus?: { exitCode: number }; device?: { kind: string; id: string; hotplugged?: boolean } }): string {
  if (e.type === 'container') return `container ${e.action} ${e.container}${e.exitStatus ? ` ${e.exitStatus.exitCode}` : ''}`;
  if (e.type === 'device') return `device ${e.action} ${e.device!.kind}=${e.device!.id} hotplugged=${e.device!.hotplugged}`;
  return e.action === undefined ? e.type : `${e.type} ${e.action}`;
}

/** Checks that `wanted` appear in `seen` in this order (other lines may come between them). */
function expectInOrder(seen: readonly string[], wanted: readonly string[], who: string): void {
  let at = 0;
  for (const line of wanted) {
    const found = seen.indexOf(line, at);
    expect(found, `${who}: "${line}" after position ${at} of ${JSON.stringify(seen)}`).toBeGreaterThanOrEqual(0);
    at = found + 1;
  }
}

async function until(what: string, check: () => boolean, timeoutMs = 150_000): Promise<void> {
  for (const end = Date.now() + timeoutMs; !check(); await new Promise((resolve) => setTimeout(resolve, 50))) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
  }
}

describe.skipIf(skipReason)(`events across processes${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  it('Sandbox.watch and vmpod events follow what CLI processes do to a sandbox, in order', async () => {
    await buildGuestAssets(); // up to date first, so that the timings below are the VM's own
    const stateDir = await makeStateDir();
    const id = `ev-${randomBytes(3).toString('hex')}`;
    const since = new Date().toISOString();
    const watcher = Sandbox.watch({ stateDir, waitExits: true, rescanMs: 500 });
    const lib: WatchEvent[] = [];
    watcher.on('event', (e) => lib.push(e));
    // `vmpod events` replays from `since`: what happened before its first read is not lost.
    const cli = spawnVmpod(stateDir, ['events', '--format', 'json', '--since', since, '--filter', `sandbox=${id}`]);
    let cliOut = '';
    cli.child.stdout!.on('data', (d: Buffer) => (cliOut += d.toString()));
    const cliEvents = (): { type: string; action?: string; container?: string; sandbox?: string; exitStatus?: { exitCode: number } }[] =>
      cliOut.split('\n').filter(Boolean).map((l) => JSON.parse(l));
    try {
      try {
        await watcher.ready;
        const mine = (): WatchEvent[] => lib.filter((e) => e.sandbox === id);
        // The container waits for a file that `vmpod exec` makes, then exits 3 (a moment later: the
        // exec's process, in the container's pid namespace, must have ended by then).
        const run = await vmpod(stateDir, ['run', '-d', '--name', id, '--', 'sh', '-c', 'while [ ! -e /go ]; do sleep 0.1; done; sleep 1; exit 3']);
        expect(run, run.stderr).toMatchObject({ code: 0, stdout: `${id}\n` });
        await until('the container started', () => mine().some((e) => e.type === 'container' && e.action === 'started'));
        const exec = await vmpod(stateDir, ['exec', id, 'touch', '/go']);
        expect(exec, exec.stderr).toMatchObject({ code: 0 });
        // Nobody else waits for the container: the watcher (waitExits) does, and records the exit.
        await until('the exit', () => mine().some((e) => e.type === 'container' && e.action === 'exited'));
        const removed = await vmpod(stateDir, ['delete', '-f', id]);
        expect(removed, removed.stderr).toMatchObject({ code: 0, stderr: '' });
        await until('the deletion (library)', () => mine().some((e) => e.type === 'sandbox' && e.action === 'deleted'));
        await until('the deletion (vmpod events)', () => cliEvents().some((e) => e.type === 'sandbox' && e.action === 'deleted'));
      } finally {
        watcher.close();
        cli.child.kill('SIGINT');
        await vmpod(stateDir, ['delete', '-f', id]).catch(() => undefined);
      }
      const cliResult = await cli.result;
      expect(cliResult.code, cliResult.stderr).toBe(0);
      expect(cliResult.stderr).toBe('');
      const wanted = [
        'sandbox created',
        'sandbox running',
        `container created ${id}`,
        `container started ${id}`,
        `container exited ${id} 3`,
        `container deleted ${id}`,
        'sandbox deleted',
      ];
      const libLines = lib.filter((e) => e.sandbox === id).map(brief);
      expectInOrder(libLines, wanted, 'Sandbox.watch');
      const cliSeen = cliEvents().map(brief);
      expectInOrder(cliSeen, wanted, 'vmpod events');
      // Each change once: no line repeats right after itself, and the exit is there once.
      for (const seen of [libLines, cliSeen]) {
        for (let i = 1; i < seen.length; i++) expect(seen[i], JSON.stringify(seen)).not.toBe(seen[i - 1]);
        expect(seen.filter((l) => l.startsWith('container exited'))).toHaveLength(1);
      }
      expect(lib.filter((e) => e.type === 'error')).toEqual([]);
      expect(cliEvents().every((e) => e.sandbox === id)).toBe(true);
      await expectNothingLeft(stateDir);
    } finally {
      if (cli.child.exitCode === null && cli.child.signalCode === null) cli.child.kill('SIGKILL');
      await forceCleanup(stateDir);
    }
  });

  it('reports a sandbox\'s volumes as devices (from its config at start, hot plugged, removed, gone with it), and the exits of containers run to completion and deleted at once', async () => {
    const stateDir = await makeStateDir();
    const id = `evd-${randomBytes(3).toString('hex')}`;
    const watcher = Sandbox.watch({ stateDir, rescanMs: 500 });
    const lib: WatchEvent[] = [];
    watcher.on('event', (e) => lib.push(e));
    try {
      await watcher.ready;
      const sandbox = await Sandbox.create({ stateDir, id, volumes: [Volume.tmpfs('cold', { sizeMiB: 4 })] });
      try {
        await sandbox.start();
        // A container run to completion and deleted at once (start, wait, delete; no waitExits):
        // its exit is in the record before its entry leaves it.
        for (let i = 0; i < 3; i++) {
          const job = await sandbox.createContainer({ id: `job${i}`, process: { args: ['sh', '-c', `exit ${5 + i}`] } });
          await job.start();
          expect((await job.wait()).exitCode).toBe(5 + i);
          await job.delete();
        }
        await sandbox.addVolume(Volume.tmpfs('hot', { sizeMiB: 2 }));
        await until('hot added', () => lib.some((e) => e.type === 'device' && e.action === 'added' && e.device.id === 'hot'));
        await sandbox.removeVolume('hot');
        await until('hot removed', () => lib.some((e) => e.type === 'device' && e.action === 'removed' && e.device.id === 'hot'));
      } finally {
        await sandbox.delete({ force: true });
      }
      await until('the deletion', () => lib.some((e) => e.type === 'sandbox' && e.action === 'deleted'));
      const seen = lib.filter((e) => e.sandbox === id).map(brief);
      expectInOrder(seen, ['sandbox created', 'device added volume=cold hotplugged=false', 'sandbox running', 'device added volume=hot hotplugged=true', 'device removed volume=hot hotplugged=true', 'sandbox deleted'], 'Sandbox.watch');
      expectInOrder(seen, ['device removed volume=cold hotplugged=false', 'sandbox deleted'], 'Sandbox.watch');
      expect(seen.filter((l) => l.startsWith('device added volume=cold'))).toHaveLength(1);
      for (let i = 0; i < 3; i++) expectInOrder(seen, [`container started job${i}`, `container exited job${i} ${5 + i}`, `container deleted job${i}`], `Sandbox.watch, job${i}`);
      expect(lib.filter((e) => e.type === 'error')).toEqual([]);
      watcher.close();
      await expectNothingLeft(stateDir);
    } finally {
      watcher.close();
      await forceCleanup(stateDir);
    }
  });
});
