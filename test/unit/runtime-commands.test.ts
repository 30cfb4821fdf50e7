/**
 * vmpod-runtime's commands without a VM: main() on hand-made records in a temporary --root
 * (state, list, features, --version, help, the --log line of each refusal), the checks each
 * command makes before it reaches a monitor, create's refusals before anything is made, delete
 * of a stopped container (its poststop hooks), spec, the monitor's control socket, the sandbox
 * release rule and the stdio ends the monitor makes of its fds.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { main } from '../../src/runtime/main.js';
import { control, serveControl } from '../../src/runtime/control.js';
import { releaseSandbox, sandboxesOf } from '../../src/runtime/release.js';
import { readableOf, writableOf } from '../../src/runtime/stdio.js';
import { RuntimeRoot, selfIdentity, type RuntimeRecord } from '../../src/runtime/state.js';

let dir: string;
let root: RuntimeRoot;
let out: string;
let err: string;

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vt-rtcmd-'));
  root = new RuntimeRoot(path.join(dir, 'root'));
  out = '';
  err = '';
  vi.spyOn(process.stdout, 'write').mockImplementation((chunk) => ((out += String(chunk)), true));
  vi.spyOn(process.stderr, 'write').mockImplementation((chunk) => ((err += String(chunk)), true));
});
afterEach(() => {
  vi.restoreAllMocks();
  fs.rmSync(dir, { recursive: true, force: true });
});

const dead = { pid: 999_999_999, startTime: 1 };

async function record(id: string, change: Partial<RuntimeRecord> = {}): Promise<RuntimeRecord> {
  const r: RuntimeRecord = {
    format: 1, id, bundle: path.join(dir, 'b'), rootfs: path.join(dir, 'b', 'rootfs'), created: '2026-12-08T00:00:00.000Z',
    annotations: {}, sandbox: `vt-rtcmd-sb-${id}`, status: 'stopped', terminal: false, monitor: dead, ...change,
  };
  fs.mkdirSync(root.containerDir(id), { recursive: true });
  await root.write(r);
  return r;
}

/** main() with this file's root and a JSON log; the exit code and the log's last msg. */
async function rt(...args: string[]): Promise<{ code: number; msg: string | undefined }> {
  const log = path.join(dir, 'log.json');
  const code = await main(['--root', root.dir, '--log', log, '--log-format', 'json', ...args]);
  const lines = fs.existsSync(log) ? fs.readFileSync(log, 'utf8').trim().split('\n') : [];
  const last = lines.length > 0 ? (JSON.parse(lines[lines.length - 1]!) as { msg: string }) : undefined;
  return { code, msg: code === 0 ? undefined : last?.msg };
}

function bundle(spec: object = {}): string {
  const b = path.join(dir, 'b');
  fs.mkdirSync(path.join(b, 'rootfs'), { recursive: true });
  fs.writeFileSync(path.join(b, 'config.json'), JSON.stringify({ ociVersion: '1.0.2', process: { args: ['true'], terminal: false, cwd: '/' }, root: { path: 'rootfs' }, ...spec }));
  return b;
}

describe('main', () => {
  it('prints the version, help, and features without a root', async () => {
    expect(await main(['--version'])).toBe(0);
    expect(out).toMatch(/^vmpod-runtime version \d+\.\d+\.\d+\nspec: 1\.0\.2\n$/u);
    out = '';
    expect(await main([])).toBe(1);
    expect(out).toContain('GLOBAL OPTIONS');
    expect(await main(['--help'])).toBe(0);
    out = '';
    expect(await main(['kill', '--help'])).toBe(0);
    expect(out).toContain('vmpod-runtime kill - ');
    out = '';
    expect(await main(['features'])).toBe(0);
    expect(JSON.parse(out)).toMatchObject({ ociVersionMin: '1.0.0', ociVersionMax: '1.0.2' });
  });
  it('prints the state of a record, pid and status read against its monitor', async () => {
    await record('c1', { status: 'running', monitor: selfIdentity(), annotations: { k: 'v' } });
    expect(await main(['--root', root.dir, 'state', 'c1'])).toBe(0);
    expect(JSON.parse(out)).toEqual({
      ociVersion: '1.0.2', id: 'c1', pid: process.pid, status: 'running', bundle: path.join(dir, 'b'), rootfs: path.join(dir, 'b', 'rootfs'),
      created: '2026-12-08T00:00:00.000Z', owner: '', annotations: { k: 'v' },
    });
  });
  it('lists the containers as a table, JSON or ids', async () => {
    await record('c1');
    await record('c2', { status: 'created', monitor: selfIdentity() });
    expect(await main(['--root', root.dir, 'list', '-q'])).toBe(0);
    expect(out).toBe('c1\nc2\n');
    out = '';
    expect(await main(['--root', root.dir, 'list', '--format', 'json'])).toBe(0);
    expect((JSON.parse(out) as { id: string; status: string; pid: number }[]).map((s) => [s.id, s.status, s.pid])).toEqual([['c1', 'stopped', 0], ['c2', 'created', process.pid]]);
    out = '';
    expect(await main(['--root', root.dir, 'list'])).toBe(0);
    expect(out.split('\n')[0]).toMatch(/^ID\s+PID\s+STATUS\s+BUNDLE\s+CREATED\s+OWNER$/u);
    expect((await rt('list', '--format', 'yaml')).msg).toBe('invalid format option');
  });
  it('refuses a bad --log-format, --rootless true, unknown flags and commands, with a log line', async () => {
    expect(await main(['--log-format', 'xml', 'list'])).toBe(1);
    expect(err).toContain('invalid log-format: xml');
    expect((await rt('--rootless', 'true', 'list')).msg).toMatch(/^rootless mode is not supported/u);
    expect((await rt('state', '--bogus', 'x')).msg).toBe('flag provided but not defined: -bogus');
    expect((await rt('bogus')).msg).toBe("No help topic for 'bogus'");
    expect((await rt('state', 'nope')).msg).toBe('container does not exist');
    expect(err).toContain('container does not exist\n');
  });
});

describe('commands, refused before they reach a monitor', () => {
  it('start, kill, pause, resume, update, exec of a stopped container', async () => {
    await record('s');
    expect(await rt('start', 's')).toEqual({ code: 1, msg: 'cannot start a container that has stopped' });
    expect(await rt('kill', 's', 'KILL')).toEqual({ code: 1, msg: 'container not running' });
    expect(await rt('kill', 's', 'NOPE')).toEqual({ code: 1, msg: 'unknown signal "NOPE"' });
    expect(await rt('pause', 's')).toEqual({ code: 1, msg: 'container not running' });
    expect(await rt('resume', 's')).toEqual({ code: 1, msg: 'container not paused' });
    expect(await rt('update', '--memory', '1048576', 's')).toEqual({ code: 1, msg: 'container not running' });
    expect(await rt('update', '--memory', 'lots', 's')).toEqual({ code: 1, msg: 'invalid value for --memory: lots' });
    expect(await rt('exec', 's', 'true')).toEqual({ code: 1, msg: 'cannot exec in a stopped container' });
  });
  it('a running container: start and delete without --force refused; a monitor that does not answer is "not running"', async () => {
    await record('r', { status: 'running', monitor: selfIdentity() });
    expect(await rt('start', 'r')).toEqual({ code: 1, msg: 'cannot start an already running container' });
    expect(await rt('delete', 'r')).toEqual({ code: 1, msg: 'cannot delete container r that is not stopped: running' });
    expect(await rt('resume', 'r')).toEqual({ code: 1, msg: 'container not paused' });
    // No control socket: the monitor is not there to ask.
    expect(await rt('kill', 'r')).toEqual({ code: 1, msg: 'container not running' });
    expect(await rt('exec', '--preserve-fds', '2', 'r', 'true')).toEqual({ code: 1, msg: '--preserve-fds: host file descriptors cannot be passed into the VM (only 0 is accepted)' });
    expect(await rt('exec', '-t', '-d', 'r', 'sh')).toEqual({ code: 1, msg: 'cannot allocate tty if vmpod-runtime will detach without setting console socket' });
    expect(await rt('exec', '--console-socket', '/nowhere', 'r', 'sh')).toEqual({ code: 1, msg: 'cannot use console socket if vmpod-runtime will not detach or allocate tty' });
  });
  it('ps of a stopped container: no host process', async () => {
    await record('p');
    expect(await main(['--root', root.dir, 'ps', '--format', 'json', 'p'])).toBe(0);
    expect(out).toBe('[]\n');
    expect((await rt('ps', '--format', 'xml', 'p')).msg).toBe('invalid format option');
  });
});

describe('create, refused before anything is made', () => {
  it('a terminal without a console socket, a socket without a terminal, preserved fds, hooks in the VM, a bad id or bundle', async () => {
    const tty = bundle({ process: { args: ['sh'], terminal: true } });
    expect((await rt('create', '--bundle', tty, 'c')).msg).toBe('vmpod-runtime create failed: cannot allocate tty if vmpod-runtime will detach without setting console socket');
    const plain = bundle();
    expect((await rt('create', '--bundle', plain, '--console-socket', '/s', 'c')).msg).toBe('vmpod-runtime create failed: cannot use console socket if vmpod-runtime will not detach or allocate tty');
    expect((await rt('create', '--bundle', plain, '--preserve-fds', '1', 'c')).msg).toMatch(/^vmpod-runtime create failed: --preserve-fds/u);
    const hooked = bundle({ hooks: { startContainer: [{ path: '/bin/true' }] } });
    expect((await rt('create', '--bundle', hooked, 'c')).msg).toMatch(/^vmpod-runtime create failed: startContainer hooks are not supported/u);
    expect((await rt('create', '--bundle', plain, 'a/b')).msg).toBe('vmpod-runtime create failed: invalid container id format: a/b');
    expect((await rt('create', '--bundle', path.join(dir, 'nowhere'), 'c')).msg).toMatch(/^vmpod-runtime create failed: bundle ".*nowhere" does not exist$/u);
    expect(await root.ids()).toEqual([]);
  });
  it('an id in use: refused, the record untouched', async () => {
    const before = await record('dup');
    expect((await rt('create', '--bundle', bundle(), 'dup')).msg).toBe('vmpod-runtime create failed: container with given ID already exists');
    expect(await root.read('dup')).toEqual(before);
  });
});

describe('delete of a stopped container', () => {
  it('removes its record, releases its (absent) VM and runs its poststop hooks with the stopped state', async () => {
    const file = path.join(dir, 'poststop.json');
    await record('gone', { poststop: [{ path: '/bin/sh', args: ['sh', '-c', `cat > ${file}`] }, { path: '/bin/sh', args: ['sh', '-c', 'exit 1'] }] });
    expect(await rt('delete', 'gone')).toEqual({ code: 0, msg: undefined });
    expect(fs.existsSync(root.containerDir('gone'))).toBe(false);
    expect(JSON.parse(fs.readFileSync(file, 'utf8'))).toMatchObject({ id: 'gone', status: 'stopped', pid: 0 });
    // The failing second hook is a warning in the log.
    expect(fs.readFileSync(path.join(dir, 'log.json'), 'utf8')).toContain('"level":"warning","msg":"poststop hook /bin/sh failed (exit status 1)"');
    expect((await rt('delete', 'gone')).msg).toBe('container does not exist');
  });
  it('--force removes a folder whose record is unreadable', async () => {
    fs.mkdirSync(root.containerDir('torn'), { recursive: true });
    fs.writeFileSync(root.recordFile('torn'), '{"format":');
    expect((await rt('delete', 'torn')).msg).toMatch(/state file is unreadable/u);
    expect(await rt('delete', '--force', 'torn')).toEqual({ code: 0, msg: undefined });
    expect(fs.existsSync(root.containerDir('torn'))).toBe(false);
  });
});

describe('spec', () => {
  it('writes runc\'s default bundle config once, refuses to overwrite it or --rootless', async () => {
    expect(await rt('spec', '--bundle', dir)).toEqual({ code: 0, msg: undefined });
    const spec = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
    expect(spec.process).toMatchObject({ args: ['sh'], terminal: true });
    expect((await rt('spec', '--bundle', dir)).msg).toBe(`File ${path.join(dir, 'config.json')} exists. Remove it first`);
    expect((await rt('spec', '--rootless')).msg).toBe('--rootless: vmpod-runtime runs VMs as root only');
  });
});

describe('the control socket', () => {
  it('carries one request and its answer; a failure comes back as the RuntimeError of its message', async () => {
    const socket = path.join(dir, 'c.sock');
    const seen: unknown[] = [];
    let after = false;
    const server = await serveControl(socket, async (request) => {
      seen.push(request);
      if (request.op === 'pause') throw new Error('cannot pause now');
      return request.op === 'delete' ? () => void (after = true) : undefined;
    });
    try {
      expect(await control(socket, { op: 'kill', signal: 9, all: true })).toEqual({ ok: true });
      await expect(control(socket, { op: 'pause' })).rejects.toThrow('cannot pause now');
      await control(socket, { op: 'delete', force: true });
      await new Promise((resolve) => setTimeout(resolve, 50));
      expect(after).toBe(true);
      expect(seen).toEqual([{ op: 'kill', signal: 9, all: true }, { op: 'pause' }, { op: 'delete', force: true }]);
    } finally {
      server.close();
    }
    await expect(control(path.join(dir, 'none.sock'), { op: 'start' })).rejects.toThrow('container not running');
  });
});

describe('sandbox release', () => {
  it('keeps a VM another container names, and lists the readable records only', async () => {
    await record('a', { sandbox: 'vt-rtcmd-pod' });
    await record('b', { sandbox: 'vt-rtcmd-pod' });
    fs.mkdirSync(root.containerDir('c'), { recursive: true });
    expect((await sandboxesOf(root)).map((r) => r.id)).toEqual(['a', 'b']);
    expect(await releaseSandbox(root, 'vt-rtcmd-pod', 'a')).toBe(false);
    fs.rmSync(root.containerDir('b'), { recursive: true });
    // The last one: its VM is deleted (here there is none to find).
    expect(await releaseSandbox(root, 'vt-rtcmd-pod', 'a')).toBe(true);
  });
});

describe('the monitor\'s ends of its fds', () => {
  it('pipes as sockets, files as fs streams, closed fds as nothing', async () => {
    const fifo = path.join(dir, 'fifo');
    execFileSync('mkfifo', [fifo]);
    // Two descriptions of the FIFO: each stream owns (and closes) its fd.
    const readFd = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    const writeFd = fs.openSync(fifo, fs.constants.O_WRONLY);
    const file = path.join(dir, 'file');
    fs.writeFileSync(file, 'data');
    const fileFd = fs.openSync(file, 'r+');
    try {
      const r = readableOf(readFd)!;
      const w = writableOf(writeFd)!;
      expect(r.constructor.name).toBe('Socket');
      expect(w.constructor.name).toBe('Socket');
      const got = new Promise<string>((resolve) => r.once('data', (d: Buffer) => resolve(d.toString())));
      w.write('through the fifo');
      expect(await got).toBe('through the fifo');
      r.destroy();
      w.destroy();
      // Files are not the stream's to close (autoClose off): the fd stays the monitor's.
      const fr = readableOf(fileFd)!;
      expect(fr.constructor.name).toBe('ReadStream');
      const chunks: Buffer[] = [];
      for await (const c of fr) chunks.push(c as Buffer);
      expect(Buffer.concat(chunks).toString()).toBe('data');
      expect(writableOf(fileFd)!.constructor.name).toBe('WriteStream');
      expect(readableOf(987_654)).toBeUndefined();
      expect(writableOf(987_654)).toBeUndefined();
    } finally {
      fs.closeSync(fileFd);
    }
  });
});
