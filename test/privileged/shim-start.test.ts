/**
 * The shim bin as containerd runs it (dist/shim/main.js, root, no containerd needed for these):
 * `start` in bundles of one namespace makes one detached server and prints its address alone
 * (also with Node warnings provoked through NODE_OPTIONS), another namespace gets another
 * server, Shutdown with nothing left ends a server, and after kill -9 of a server `delete`
 * prints a DeleteResponse and a new `start` replaces the dead server. Sockets are the real ones
 * under /run/containerd/s (named from the test's own containerd address); the servers' folders
 * go to the test's temporary folder. Nothing is left: processes, sockets.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serverPaths } from '../../src/shim/main.js';
import { decodeMessage } from '../../src/shim/proto/index.js';
import { TtrpcClient } from '../../src/shim/ttrpc/client.js';
import { callTask } from '../../src/shim/ttrpc/task.js';
import { GrpcCode, TtrpcError } from '../../src/shim/ttrpc/status.js';

// VMPOD_SHIM_BIN: another build of the bin (e.g. one with a bug applied by hand, built elsewhere).
const SHIM = path.resolve(process.env['VMPOD_SHIM_BIN'] ?? 'dist/shim/main.js');
const skip = process.getuid?.() !== 0 ? 'needs root' : fs.existsSync(SHIM) && fs.existsSync(path.join(path.dirname(SHIM), 'proto', 'shim.proto')) ? undefined : `no ${SHIM} (npm run build:ts)`;

let dir: string;
let address: string;
const pids = new Set<number>();
const sockets = new Set<string>();

function run(args: string[], options: { cwd: string; env?: NodeJS.ProcessEnv }): Promise<{ code: number | null; stdout: Buffer; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(SHIM, args, { cwd: options.cwd, env: { ...process.env, VMPOD_SHIM_DIR: path.join(dir, 'servers'), VMPOD_SHIM_RESERVATION_MS: '1500', ...options.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let err = '';
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout: Buffer.concat(out), stderr: err });
    });
  });
}

function bundle(name: string): string {
  const b = path.join(dir, name);
  fs.mkdirSync(b, { recursive: true });
  return b;
}

const startArgs = (namespace: string, id: string, extra: string[] = []) => ['-namespace', namespace, '-address', address, '-publish-binary', '/usr/bin/containerd', '-id', id, ...extra, 'start'];

/** The pid of the server of `namespace`, from its log. */
function serverPid(namespace: string): number {
  const log = fs.readFileSync(serverPaths(address, namespace, { VMPOD_SHIM_DIR: path.join(dir, 'servers') }).logPath, 'utf8');
  const all = [...log.matchAll(/serving namespace \S+ on \S+ \(pid (\d+)\)/gu)].map((m) => Number(m[1]));
  for (const pid of all) pids.add(pid); // every server the log names is cleaned up, also when a test fails
  return all.at(-1)!;
}

const alive = (pid: number): boolean => fs.existsSync(`/proc/${pid}`) && !/^State:\s+Z/mu.test(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));

async function until(cond: () => boolean, what: string, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe.skipIf(skip !== undefined)(`containerd-shim-vmpod-v2 start/delete${skip ? ` (skipped: ${skip})` : ''}`, () => {
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmpod-shimw-start-'));
    address = path.join(dir, 'containerd.sock'); // a containerd address of this test alone: its own servers
    for (const ns of ['one', 'two-a', 'two-b', 'kill']) sockets.add(serverPaths(address, ns, {}).socketPath);
  });

  afterAll(async () => {
    // SIGTERM: a server removes its socket as it goes; SIGKILL for one that does not go
    for (const pid of pids) if (alive(pid)) process.kill(pid, 'SIGTERM');
    for (const pid of pids) await until(() => !alive(pid), `server ${pid} gone`, 10_000).catch(() => process.kill(pid, 'SIGKILL'));
    for (const pid of pids) await until(() => !alive(pid), `server ${pid} gone`).catch(() => undefined);
    const left = [...sockets].filter((s) => fs.existsSync(s));
    for (const s of left) fs.rmSync(s, { force: true });
    fs.rmSync(dir, { recursive: true, force: true });
    expect(left, 'sockets left by the servers').toEqual([]);
  });

  it('start twice in one namespace: one server, one address, printed alone (Node warnings provoked), both address files', async () => {
    const b1 = bundle('b1');
    const b2 = bundle('b2');
    // an experimental loader makes Node print a warning at startup unless warnings are off
    const env = { NODE_OPTIONS: '--experimental-loader=data:text/javascript,export{}' };
    const [r1, r2] = await Promise.all([run(startArgs('one', 't1', ['-debug']), { cwd: b1, env }), run(startArgs('one', 't2'), { cwd: b2, env })]);
    const expected = serverPaths(address, 'one', {}).address;
    expect(r1).toMatchObject({ code: 0, stderr: '' });
    expect(r2).toMatchObject({ code: 0, stderr: '' });
    expect(r1.stdout.toString()).toBe(expected);
    expect(r2.stdout.toString()).toBe(expected);
    expect(fs.readFileSync(path.join(b1, 'address'), 'utf8')).toBe(expected);
    expect(fs.readFileSync(path.join(b2, 'address'), 'utf8')).toBe(expected);
    const pid = serverPid('one');
    expect(alive(pid)).toBe(true);
    // one server for both: its log says it started once
    const log = fs.readFileSync(serverPaths(address, 'one', { VMPOD_SHIM_DIR: path.join(dir, 'servers') }).logPath, 'utf8');
    expect([...log.matchAll(/serving namespace one/gu)]).toHaveLength(1);
    // detached: its own session, not a child of this test
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    expect(Number(stat[3])).toBe(pid); // session id (field 6 of stat) is its own pid
    expect(Number(stat[1])).not.toBe(process.pid); // parent
    // it answers the Task API (Connect: the server's pid)
    const client = await TtrpcClient.connect(expected);
    try {
      // the task service answers (t1 was never created: an answer or a refusal of its own, not UNIMPLEMENTED)
      const connect = await callTask(client, 'Connect', { id: 't1' }, { metadata: { 'containerd-namespace-ttrpc': 'one' }, timeoutMs: 10_000 }).catch((e: TtrpcError) => e);
      if (connect instanceof TtrpcError) expect([GrpcCode.UNIMPLEMENTED, GrpcCode.UNAVAILABLE]).not.toContain(connect.grpcCode);
    } finally {
      client.close();
    }
    // its memory with no pod
    const pss = /^Pss:\s+(\d+) kB/mu.exec(fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'))?.[1];
    const rss = /^Rss:\s+(\d+) kB/mu.exec(fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'))?.[1];
    console.log(`[shim-start] server with no pod: PSS ${pss} kB, RSS ${rss} kB`);
    expect(Number(pss)).toBeGreaterThan(0);
  });

  it('another namespace gets another server; Shutdown with no task left ends a server and removes its socket', async () => {
    const [ra, rb] = await Promise.all([run(startArgs('two-a', 'a1'), { cwd: bundle('a1') }), run(startArgs('two-b', 'b1'), { cwd: bundle('b1') })]);
    expect(ra).toMatchObject({ code: 0, stderr: '' });
    expect(rb).toMatchObject({ code: 0, stderr: '' });
    const a = serverPaths(address, 'two-a', {});
    const b = serverPaths(address, 'two-b', {});
    expect(ra.stdout.toString()).toBe(a.address);
    expect(rb.stdout.toString()).toBe(b.address);
    expect(a.address).not.toBe(b.address);
    const pidA = serverPid('two-a');
    const pidB = serverPid('two-b');
    expect(pidA).not.toBe(pidB);
    expect(alive(pidA) && alive(pidB)).toBe(true);
    const client = await TtrpcClient.connect(a.address);
    try {
      await callTask(client, 'Shutdown', { id: 'a1' }, { metadata: { 'containerd-namespace-ttrpc': 'two-a' }, timeoutMs: 10_000 });
    } finally {
      client.close();
    }
    // the reservation `start` made for a1 (1.5 s here) runs out, then the server goes
    await until(() => !alive(pidA), 'the idle server exits');
    expect(fs.existsSync(a.socketPath)).toBe(false);
    expect(alive(pidB)).toBe(true);
  });

  it('kill -9 of a server: delete prints a DeleteResponse (137); a new start replaces the dead server', async () => {
    const b = bundle('k1');
    const first = await run(startArgs('kill', 'k1'), { cwd: b });
    expect(first.code).toBe(0);
    const pid = serverPid('kill');
    process.kill(pid, 'SIGKILL');
    await until(() => !alive(pid), 'the killed server is gone');
    const before = Date.now();
    const del = await run(['-namespace', 'kill', '-address', address, '-publish-binary', '/usr/bin/containerd', '-id', 'k1', '-bundle', b, 'delete'], { cwd: b });
    expect(del.code).toBe(0);
    const response = decodeMessage<{ pid: number; exitStatus: number; exitedAt: Date }>('containerd.task.v2.DeleteResponse', del.stdout);
    expect(response.pid).toBe(0);
    expect(response.exitStatus).toBe(137);
    expect(response.exitedAt.getTime()).toBeGreaterThanOrEqual(before - 2000);
    // the dead server's socket file is still there; start makes a new server behind it
    const again = await run(startArgs('kill', 'k2'), { cwd: bundle('k2') });
    expect(again).toMatchObject({ code: 0, stderr: '' });
    const pid2 = serverPid('kill');
    expect(pid2).not.toBe(pid);
    expect(alive(pid2)).toBe(true);
    // SIGTERM: it closes and removes its socket
    process.kill(pid2, 'SIGTERM');
    await until(() => !alive(pid2), 'the server exits on SIGTERM');
    expect(fs.existsSync(serverPaths(address, 'kill', {}).socketPath)).toBe(false);
  });
});
