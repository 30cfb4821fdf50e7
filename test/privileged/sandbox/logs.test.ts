/**
 * Container logs on real VMs (docs/logs.md): a detached run's output read by `vmpod logs` from
 * other processes (stdout and stderr apart, --tail, --timestamps, --since), `logs -f` following
 * a container that goes on writing, rotation bounding the disk use of a container that writes
 * more than the log keeps, the attached path logging what its reader gets (container.logs() from
 * another Sandbox object), `logs --console` escaping the console's control sequences, and
 * everything removed with the container and with the sandbox.
 */
import { type ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { buildGuestAssets } from '../../../src/guest/build.js';
import { Sandbox } from '../../../src/sandbox/sandbox.js';
import { logPaths } from '../../../src/container/log-file.js';
import { parseRecords } from '../../../src/container/log-format.js';
import { expectNothingLeft, forceCleanup, makeStateDir, processesMentioning, skipReason, spawnVmpod, vmpod, until } from './fixture.js';

/** Pids of the detached log writers (`vmpod-logger --cri`) whose command line names `dir`. */
async function logWriters(dir: string): Promise<number[]> {
  const pids: number[] = [];
  for (const pid of await processesMentioning(dir)) {
    const argv = (await fs.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0');
    if (path.basename(argv[0] ?? '') === 'vmpod-logger' && argv[1] === '--cri') pids.push(pid);
  }
  return pids;
}

describe.skipIf(skipReason)(`container logs${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let stateDir: string;
  const spawned: ChildProcess[] = [];

  beforeAll(async () => {
    await buildGuestAssets();
  });

  beforeEach(async () => {
    stateDir = await makeStateDir();
  });

  afterEach(async () => {
    try {
      for (const child of spawned.splice(0)) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      for (const info of await Sandbox.list({ stateDir })) await Sandbox.remove(info.id, { force: true, stateDir });
      await expectNothingLeft(stateDir);
    } finally {
      await forceCleanup(stateDir);
    }
  });

  it('a detached run keeps its output: vmpod logs from other processes, streams apart, --tail, --timestamps, --since, -f; removed at delete', async () => {
    const id = 'lgdet';
    // Lines on both streams, then a pause, then more: the second batch comes while `logs -f` follows.
    const script = 'echo out-1; echo err-1 >&2; printf "no-newline-yet"; sleep 1; echo " done"; ' + 'while [ ! -e /tmp/go ]; do sleep 0.2; done; echo out-2; echo err-2 >&2; sleep 600';
    const run = await vmpod(stateDir, ['run', '-d', '--name', id, '--', 'sh', '-c', script]);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toBe(`${id}\n`); // nothing of the container's output here
    const sandboxDir = path.join(stateDir, 'sandboxes', id);
    expect(await logWriters(sandboxDir)).toHaveLength(1);

    await until('the first lines in the log', async () => (await vmpod(stateDir, ['logs', id])).stdout.includes('no-newline-yet done'));
    const first = await vmpod(stateDir, ['logs', id]);
    expect(first).toEqual({ code: 0, stdout: 'out-1\nno-newline-yet done\n', stderr: 'err-1\n' });
    expect(await vmpod(stateDir, ['logs', '--tail', '1', `${id}/${id}`])).toEqual({ code: 0, stdout: 'no-newline-yet done\n', stderr: '' });
    const stamped = await vmpod(stateDir, ['logs', '-t', id]);
    expect(stamped.stdout).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z out-1\n\S+Z no-newline-yet done\n$/u);

    // Follow from another process, then make the container write again.
    const follow = spawnVmpod(stateDir, ['logs', '-f', '--since', '10m', id]);
    spawned.push(follow.child);
    let followed = '';
    follow.child.stdout!.on('data', (d: Buffer) => (followed += d.toString()));
    await until('logs -f to print what is there', () => followed === 'out-1\nno-newline-yet done\n');
    const mark = new Date();
    expect((await vmpod(stateDir, ['exec', id, 'touch', '/tmp/go'])).code).toBe(0);
    await until('logs -f to print the new line', () => followed === 'out-1\nno-newline-yet done\nout-2\n');
    expect(await vmpod(stateDir, ['logs', '--since', mark.toISOString(), id])).toEqual({ code: 0, stdout: 'out-2\n', stderr: 'err-2\n' });

    // The records themselves: CRI, each stream's in the order the container wrote them (the two
    // streams come through two ports: their records may interleave either way).
    const records = parseRecords(await fs.readFile(logPaths(sandboxDir, id).file)).records;
    const shown = (stream: string): string[] => records.filter((r) => r.stream === stream).map((r) => `${r.partial ? 'P' : 'F'} ${r.content.toString()}`);
    expect(shown('stdout')).toEqual(['F out-1', 'P no-newline-yet', 'F  done', 'F out-2']);
    expect(shown('stderr')).toEqual(['F err-1', 'F err-2']);

    // The container ends: the follower ends with it, and the detached writer is gone.
    expect((await vmpod(stateDir, ['kill', id, 'KILL'])).code).toBe(0);
    const r = await follow.result;
    expect(r.code).toBe(0);
    expect(r.stderr).toBe('err-1\nerr-2\n');
    await until('the log writer to exit', async () => (await logWriters(sandboxDir)).length === 0, 30_000);

    // Deleting the sandbox removes its folder, logs included.
    expect((await vmpod(stateDir, ['delete', '-f', id])).code).toBe(0);
    await expect(fs.stat(sandboxDir)).rejects.toThrow(/ENOENT/u);
  });

  it('rotation bounds the disk use of a container that writes more than its log keeps', async () => {
    const sandbox = await Sandbox.create({ stateDir, id: 'lgrot' });
    await sandbox.start();
    const maxBytes = 64 * 1024;
    // About 2 MB of numbered lines, much more than 3 files of 64 KiB.
    const c = await sandbox.createContainer({
      id: 'big',
      process: { args: ['sh', '-c', 'i=0; while [ $i -lt 40000 ]; do echo "line $i of the container"; i=$((i+1)); done'] },
      stdio: { detached: true },
      log: { maxBytes, maxFiles: 3 },
    });
    expect(c.stdout).toBeNull();
    await c.start();
    expect((await c.wait()).exitCode).toBe(0);
    const paths = logPaths(sandbox.dir, 'big');
    await until('the writer to finish', async () => (await logWriters(sandbox.dir)).length === 0, 30_000);
    const files = (await fs.readdir(paths.dir)).filter((f) => f.startsWith('stdio.log')).sort();
    expect(files).toEqual(['stdio.log', 'stdio.log.1', 'stdio.log.2']);
    let total = 0;
    for (const f of files) {
      const size = (await fs.stat(path.join(paths.dir, f))).size;
      expect(size).toBeLessThanOrEqual(maxBytes);
      total += size;
    }
    expect(total).toBeLessThanOrEqual(3 * maxBytes);
    // What is kept is the end, in order, ending with the last line.
    const text = (await new Promise<string>((resolve, reject) => {
      let s = '';
      sandbox.logs('big').on('data', (d: Buffer) => (s += d.toString())).on('end', () => resolve(s)).on('error', reject);
    })).split('\n');
    expect(text.at(-1)).toBe('');
    expect(text.at(-2)).toBe('line 39999 of the container');
    const numbers = text.slice(0, -1).map((l) => Number(/^line (\d+) /u.exec(l)?.[1]));
    for (let i = 1; i < numbers.length; i++) expect(numbers[i]).toBe(numbers[0]! + i);
    await c.delete();
    // A deleted container's log goes with it.
    await expect(fs.stat(paths.dir)).rejects.toThrow(/ENOENT/u);
    await sandbox.delete({ force: true });
  });

  it('a detached output that cannot have a stream port is refused before anything is left in the guest', async () => {
    const sandbox = await Sandbox.create({ stateDir, id: 'lgnop', streamPorts: 0 });
    await sandbox.start();
    const refused = (config: Parameters<typeof sandbox.createContainer>[0]) => sandbox.createContainer({ process: { args: ['true'] }, ...config });
    await expect(refused({ id: 'a', stdio: { detached: true } })).rejects.toThrow(/stdio\.detached.*2 wanted, 0 free/u);
    await expect(refused({ id: 'b', stdio: { detached: true }, process: { args: ['true'], terminal: true } })).rejects.toThrow(/stdio\.detached.*terminal/u);
    await expect(refused({ id: 'c', stdio: { detached: true, transport: 'agent' } })).rejects.toThrow(/stdio\.detached.*agent/u);
    await expect(refused({ id: 'd', stdio: { detached: true }, log: false })).rejects.toThrow(/stdio\.detached.*log: false/u);
    expect(await sandbox.containers()).toEqual([]);
    expect(Object.keys((await sandbox.record()).containers)).toEqual([]);
    expect(await logWriters(sandbox.dir)).toEqual([]);
    await sandbox.delete({ force: true });
  });

  it('the attached path logs what its reader gets; another process reads it through container.logs()', async () => {
    const sandbox = await Sandbox.create({ stateDir, id: 'lgatt' });
    await sandbox.start();
    const c = await sandbox.createContainer({ id: 'web', process: { args: ['sh', '-c', 'echo hello; echo oops >&2; echo bye'] } });
    let out = '';
    let err = '';
    c.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    c.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    await c.start();
    await c.wait();
    await until('the output', () => out === 'hello\nbye\n' && err === 'oops\n');
    const other = await Sandbox.attach('lgatt', { stateDir });
    try {
      const container = await other.container('web');
      const read = async (options: Parameters<typeof container.logs>[0]): Promise<string> => {
        let s = '';
        for await (const chunk of container.logs(options)) s += (chunk as Buffer).toString();
        return s;
      };
      // Both streams (their order between them is the order the host got them in), and each alone.
      expect((await read({})).split('\n').sort()).toEqual(['', 'bye', 'hello', 'oops']);
      expect(await read({ streams: ['stdout'] })).toBe('hello\nbye\n');
      expect(await read({ streams: ['stderr'] })).toBe('oops\n');
      expect(await read({ streams: ['stdout'], tail: 1, follow: true })).toBe('bye\n'); // the writer let go at the end of the output
    } finally {
      other.detach();
    }
    // Stopped, the sandbox keeps the log; `vmpod logs` reads it.
    await sandbox.stop();
    expect(await vmpod(stateDir, ['logs', 'lgatt/web'])).toEqual({ code: 0, stdout: 'hello\nbye\n', stderr: 'oops\n' });
    expect(await vmpod(stateDir, ['logs', 'lgatt'])).toEqual({ code: 0, stdout: 'hello\nbye\n', stderr: 'oops\n' }); // its only container
    await sandbox.delete();
  });

  it('vmpod logs --console escapes the console\'s control sequences (SeaBIOS clears the screen with them)', async () => {
    const id = 'lgcon';
    expect((await vmpod(stateDir, ['run', '-d', '--name', id, '--', 'sleep', '600'])).code).toBe(0);
    const raw = await fs.readFile(path.join(stateDir, 'sandboxes', id, 'console.log'));
    expect(raw.includes(0x1b)).toBe(true); // the firmware's escape sequences are there
    const shown = await vmpod(stateDir, ['logs', '--console', id]);
    expect(shown.code).toBe(0);
    expect(shown.stdout).toContain('vmpod-init: ready');
    expect(shown.stdout).toContain('\\x1b');
    expect(Buffer.from(shown.stdout, 'latin1').includes(0x1b)).toBe(false);
    expect(shown.stdout.includes('\r')).toBe(false);
    // Container logs need a container: the options of one do not go with --console.
    expect((await vmpod(stateDir, ['logs', '--console', '--tail', '3', id])).code).toBe(2);
    expect((await vmpod(stateDir, ['delete', '-f', id])).code).toBe(0);
  });
});
