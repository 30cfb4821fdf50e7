// The shim bin without containerd: flags as Go's flag package parses containerd's command line,
// the server's names, the DeleteResponse `delete` prints, and the server process's rules
// (Reserve holds it, Shutdown with nothing left lets it go) over a unix socket in a temp dir.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { deleteResponseBytes, main, parseFlags, serverPaths, ShimUsageError, ttrpcAddressOf, validNamespace, type MainIo } from '../../src/shim/main.js';
import { decodeMessage } from '../../src/shim/proto/index.js';
import type { TaskApi } from '../../src/shim/proto/task-api.js';
import { MANAGER_SERVICE, ShimServer, type TaskServiceOptions } from '../../src/shim/server.js';
import { fileLog, silentLog } from '../../src/shim/log.js';
import { TtrpcClient } from '../../src/shim/ttrpc/client.js';
import { callTask, unimplementedTaskApi } from '../../src/shim/ttrpc/task.js';
import { GrpcCode } from '../../src/shim/ttrpc/status.js';

describe('shim flags', () => {
  it('parses the command lines containerd 1.6 runs', () => {
    const start = parseFlags(['-namespace', 'k8s.io', '-address', '/run/containerd/containerd.sock', '-publish-binary', '/usr/bin/containerd', '-id', 'abc', '-debug', 'start']);
    expect(start).toEqual({ namespace: 'k8s.io', address: '/run/containerd/containerd.sock', publishBinary: '/usr/bin/containerd', id: 'abc', debug: true, bundle: '', socket: '', version: false, action: 'start', args: [] });
    const del = parseFlags(['-namespace', 'default', '-address', '/a.sock', '-publish-binary', 'containerd', '-id', 'x', '-bundle', '/run/b/x', 'delete']);
    expect(del).toMatchObject({ id: 'x', bundle: '/run/b/x', action: 'delete', debug: false, publishBinary: 'containerd' });
  });

  it('takes -name=value, --name, -bool=false, stops at the first non-flag or after --', () => {
    expect(parseFlags(['--namespace=n', '-id=i', '-debug=false', '-v=true', 'start', '-x', 'y'])).toMatchObject({ namespace: 'n', id: 'i', debug: false, version: true, action: 'start', args: ['-x', 'y'] });
    expect(parseFlags(['-id', 'i', '--', '-start'])).toMatchObject({ id: 'i', action: '-start', args: [] });
    expect(parseFlags(['-id', '-debug'])).toMatchObject({ id: '-debug', debug: false, action: undefined });
    expect(parseFlags(['-', 'x'])).toMatchObject({ action: '-', args: ['x'] });
    expect(parseFlags([])).toMatchObject({ action: undefined, publishBinary: 'containerd' });
  });

  it('refuses what Go would refuse', () => {
    expect(() => parseFlags(['-nope', 'x'])).toThrow(new ShimUsageError('flag provided but not defined: -nope'));
    expect(() => parseFlags(['-id'])).toThrow(/needs an argument: -id/);
    expect(() => parseFlags(['-debug=maybe'])).toThrow(/invalid boolean/);
    expect(() => parseFlags(['---id', 'x'])).toThrow(/bad flag syntax/);
    expect(() => parseFlags(['-=x'])).toThrow(/bad flag syntax/);
  });
});

describe('shim server names', () => {
  it('one socket per (containerd address, namespace), a hash under /run/containerd/s within the unix path limit', () => {
    const a = serverPaths('/run/containerd/containerd.sock', 'k8s.io', {});
    expect(a.socketPath).toMatch(/^\/run\/containerd\/s\/[0-9a-f]{64}$/u);
    expect(a.address).toBe(`unix://${a.socketPath}`);
    expect(Buffer.byteLength(a.socketPath)).toBeLessThanOrEqual(107);
    expect(a.serverDir).toBe(`/run/vmpod-shim/k8s.io-${a.key.slice(0, 16)}`);
    expect(a.lockPath).toBe(path.join(a.serverDir, 'start.lock'));
    expect(serverPaths('/run/containerd/containerd.sock', 'k8s.io', {})).toEqual(a);
    expect(serverPaths('/run/containerd/containerd.sock', 'default', {}).socketPath).not.toBe(a.socketPath);
    expect(serverPaths('/tmp/other/containerd.sock', 'k8s.io', {}).socketPath).not.toBe(a.socketPath);
    // the separator keeps ('a', 'bc') and ('ab', 'c') apart
    expect(serverPaths('/x/a', 'bc', {}).key).not.toBe(serverPaths('/x/a', 'b', {}).key);
    expect(serverPaths('/x', 'n', { VMPOD_SHIM_SOCKET_DIR: '/tmp/s', VMPOD_SHIM_DIR: '/tmp/d' }).socketPath).toMatch(/^\/tmp\/s\/[0-9a-f]{64}$/u);
  });

  it('refuses a namespace containerd would refuse (a path could be made of it) and a socket path over 107 bytes', () => {
    for (const bad of ['', '..', '../x', 'a/b', '-a', 'a-', 'a..b', 'x'.repeat(77)]) expect(validNamespace(bad), bad).toBe(false);
    for (const good of ['default', 'k8s.io', 'moby', 'a_b-c.d', 'x'.repeat(76)]) expect(validNamespace(good), good).toBe(true);
    expect(() => serverPaths('/a', '../etc', {})).toThrow(ShimUsageError);
    expect(() => serverPaths('/a', 'n', { VMPOD_SHIM_SOCKET_DIR: `/${'d'.repeat(60)}` })).toThrow(/107 bytes/);
  });

  it('the ttRPC address: TTRPC_ADDRESS, else the address + .ttrpc', () => {
    const flags = parseFlags(['-address', '/run/c.sock', 'start']);
    expect(ttrpcAddressOf(flags, { TTRPC_ADDRESS: '/run/c.sock.ttrpc2' })).toBe('/run/c.sock.ttrpc2');
    expect(ttrpcAddressOf(flags, {})).toBe('/run/c.sock.ttrpc');
  });
});

function memoryIo(extra: Partial<MainIo> = {}): MainIo & { out: Buffer[]; err: string[] } {
  const out: Buffer[] = [];
  const err: string[] = [];
  return { out, err, stdout: (d) => out.push(Buffer.from(d)), stderr: (d) => err.push(d), env: {}, cwd: '/', ...extra };
}

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmpod-shimw-main-'));
});
afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('shim main', () => {
  it('DeleteResponse: pid 0, exit status 137, exited now, decodable as containerd does', () => {
    const now = new Date(1_765_000_000_250);
    expect(decodeMessage('containerd.task.v2.DeleteResponse', deleteResponseBytes(now))).toEqual({ pid: 0, exitStatus: 137, exitedAt: now });
  });

  it('delete of a task nobody has a record of prints the DeleteResponse alone and exits 0', async () => {
    const bundle = path.join(dir, 'bundle');
    fs.mkdirSync(bundle);
    const saved = process.env['VMPOD_STATE_DIR'];
    process.env['VMPOD_STATE_DIR'] = path.join(dir, 'state');
    try {
      const io = memoryIo({ cwd: bundle, env: { VMPOD_SHIM_SOCKET_DIR: path.join(dir, 's'), VMPOD_SHIM_DIR: path.join(dir, 'd') } });
      const before = Date.now();
      expect(await main(['-namespace', 'default', '-address', path.join(dir, 'c.sock'), '-publish-binary', 'containerd', '-id', 'gone', '-bundle', bundle, 'delete'], io)).toBe(0);
      const response = decodeMessage<{ pid: number; exitStatus: number; exitedAt: Date }>('containerd.task.v2.DeleteResponse', Buffer.concat(io.out));
      expect(response.pid).toBe(0);
      expect(response.exitStatus).toBe(137);
      expect(response.exitedAt.getTime()).toBeGreaterThanOrEqual(before - 1000);
      expect(io.err).toEqual([]);
    } finally {
      if (saved === undefined) delete process.env['VMPOD_STATE_DIR'];
      else process.env['VMPOD_STATE_DIR'] = saved;
    }
  });

  it('-v prints the version; usage errors exit 2 on stderr with nothing on stdout', async () => {
    const io = memoryIo();
    expect(await main(['-v'], io)).toBe(0);
    expect(Buffer.concat(io.out).toString()).toMatch(/^containerd-shim-vmpod-v2:\n {2}Version: {2}\d+\.\d+\.\d+/u);
    for (const argv of [['-bogus', 'start'], [], ['-id', 'x', 'frobnicate']]) {
      const e = memoryIo();
      expect(await main(argv, e)).toBe(2);
      expect(e.out).toEqual([]);
      expect(e.err.join('')).toMatch(/^containerd-shim-vmpod-v2: /u);
    }
    const missing = memoryIo();
    expect(await main(['-address', '/a', '-id', 'x', 'start'], missing)).toBe(1);
    expect(missing.err.join('')).toMatch(/-namespace is required/);
    expect(missing.out).toEqual([]);
  });
});

describe('shim server process rules', () => {
  function fakeTasks(): { factory: (o: TaskServiceOptions) => TaskApi & { taskCount: number }; count: { n: number }; idle: () => void } {
    const count = { n: 0 };
    let onIdle = (): void => undefined;
    const factory = (o: TaskServiceOptions): TaskApi & { taskCount: number } => {
      onIdle = o.onIdle;
      const api = unimplementedTaskApi() as TaskApi & { taskCount: number };
      Object.defineProperty(api, 'taskCount', { get: () => count.n });
      api.create = async () => {
        count.n += 1;
        return { pid: 1 };
      };
      return api;
    };
    return { factory, count, idle: () => onIdle() };
  }

  it('serves the Task API; a reservation holds the server until its Create; idle with no task closes it and removes its socket', async () => {
    const fake = fakeTasks();
    const socketPath = path.join(dir, 'shim.sock');
    let closed = false;
    const server = new ShimServer({ namespace: 'ns', ttrpcAddress: path.join(dir, 'none.sock'), socketPath, serverDir: path.join(dir, 'srv'), lockPath: path.join(dir, 'srv', 'start.lock'), taskService: fake.factory, log: silentLog, onClosed: () => (closed = true) });
    await server.listen();
    expect(fs.statSync(socketPath).mode & 0o777).toBe(0o600);
    const client = await TtrpcClient.connect(socketPath);
    await client.call(MANAGER_SERVICE, 'Reserve', Buffer.from('t1'));
    expect(server.reservations).toEqual(['t1']);
    // Shutdown was asked with no task: the reservation keeps it
    fake.idle();
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(closed).toBe(false);
    await expect(callTask(client, 'State', { id: 't1' })).rejects.toMatchObject({ grpcCode: GrpcCode.UNIMPLEMENTED });
    expect(await callTask(client, 'Create', { id: 't1' })).toEqual({ pid: 1 });
    expect(server.reservations).toEqual([]);
    // a task is there: idle keeps it too
    fake.idle();
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(closed).toBe(false);
    fake.count.n = 0;
    fake.idle();
    for (let i = 0; i < 100 && !closed; i++) await new Promise((resolve) => setTimeout(resolve, 10));
    expect(closed).toBe(true);
    expect(fs.existsSync(socketPath)).toBe(false);
    await client.whenClosed();
  });

  it('an expired reservation lets an idle server go', async () => {
    const fake = fakeTasks();
    const socketPath = path.join(dir, 'shim2.sock');
    let closed = false;
    const server = new ShimServer({ namespace: 'ns', ttrpcAddress: path.join(dir, 'none.sock'), socketPath, serverDir: path.join(dir, 'srv2'), lockPath: path.join(dir, 'srv2', 'start.lock'), taskService: fake.factory, log: silentLog, reservationMs: 30, onClosed: () => (closed = true) });
    await server.listen();
    const client = await TtrpcClient.connect(socketPath);
    await client.call(MANAGER_SERVICE, 'Reserve', Buffer.from('t9'));
    client.close();
    fake.idle();
    await new Promise((resolve) => setTimeout(resolve, 10));
    expect(closed).toBe(false);
    for (let i = 0; i < 100 && !closed; i++) await new Promise((resolve) => setTimeout(resolve, 10));
    expect(closed).toBe(true);
  });
});

describe('shim log', () => {
  it('JSON lines with time and level; debug only with debug; capped, one old file kept', () => {
    const file = path.join(dir, 'shim.log');
    const log = fileLog(file, { maxBytes: 400 });
    log.debug('not written');
    log.info('hello');
    log.error('bad "thing"');
    const lines = fs.readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { time: string; level: string; msg: string });
    expect(lines.map((l) => [l.level, l.msg])).toEqual([
      ['info', 'hello'],
      ['error', 'bad "thing"'],
    ]);
    expect(Number.isNaN(Date.parse(lines[0]!.time))).toBe(false);
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    for (let i = 0; i < 50; i++) log.warn(`line ${i} ${'x'.repeat(20)}`);
    expect(fs.statSync(file).size).toBeLessThanOrEqual(400);
    expect(fs.statSync(`${file}.1`).size).toBeLessThanOrEqual(400);
    expect(fs.readFileSync(file, 'utf8')).toContain('line 49');
    const debug = fileLog(path.join(dir, 'debug.log'), { debug: true });
    debug.debug('shown');
    expect(fs.readFileSync(path.join(dir, 'debug.log'), 'utf8')).toContain('"level":"debug","msg":"shown"');
  });
});
