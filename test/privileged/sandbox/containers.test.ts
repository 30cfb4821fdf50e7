/**
 * Containers in one real sandbox (QEMU under TCG here, KVM where usable): output and exit
 * codes, bundles (runc spec and hand-written), env/cwd/user, exec, signals, stdin, tty,
 * 50 MB of stdout, two containers at once, stats, bad input.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../../src/sandbox/sandbox.js';
import { InvalidBundleError } from '../../../src/container/spec.js';
import { AlreadyExistsError, InvalidArgumentError, InvalidStateError, NotFoundError } from '../../../src/errors.js';
import { mountPoints } from '../../../src/state/remove.js';
import { busyboxRootfs, collect, expectNothingLeft, forceCleanup, makeStateDir, runcSpecBundle, skipReason } from './fixture.js';

describe.skipIf(skipReason)(`containers in a sandbox${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let stateDir: string;
  let work: string;
  let sandbox: Sandbox;

  beforeAll(async () => {
    stateDir = await makeStateDir();
    work = await fs.mkdtemp(path.join(stateDir, 'work-'));
    sandbox = await Sandbox.create({ stateDir, cpus: 1, memoryMiB: 256 });
    await sandbox.start();
  });

  afterAll(async () => {
    try {
      await sandbox?.delete({ force: true });
      await fs.rm(work, { recursive: true, force: true });
      await expectNothingLeft(stateDir);
    } finally {
      await forceCleanup(stateDir);
    }
  });

  it('runs a container from the builtin rootfs and reports exit codes 0 and non-zero', async () => {
    const ok = await sandbox.createContainer({ process: { args: ['uname', '-r'] } });
    const out = collect(ok.stdout);
    await ok.start();
    expect(await ok.wait()).toEqual({ exitCode: 0, signal: 0, oomKilled: false });
    // The guest kernel, not the host's.
    expect((await out).toString().trim()).toMatch(/cloud-amd64$/);
    await ok.delete();

    const failing = await sandbox.createContainer({ process: { args: ['sh', '-c', 'echo oops >&2; exit 42'] } });
    const err = collect(failing.stderr);
    await failing.start();
    expect((await failing.wait()).exitCode).toBe(42);
    expect((await err).toString()).toBe('oops\n');
    await failing.delete();
  });

  // `runc spec` writes terminal: true; the bundle is used as it is: no terminal unless asked
  // for, so stderr is a stream of its own and stdout has no CR LF line ends.
  it('honours env, cwd and user of a config.json made by `runc spec`, without the terminal it asks for', async () => {
    const bundle = await runcSpecBundle(path.join(work, 'runc-bundle'), (spec) => {
      expect(spec.process.terminal).toBe(true);
      spec.process.args = ['sh', '-c', 'echo "$GREETING"; pwd; id -u; id -g; hostname; echo to-stderr >&2; [ -t 1 ] || echo no-tty'];
      spec.process.env.push('GREETING=hello from runc spec');
      spec.process.cwd = '/scratch';
      spec.process.user = { uid: 1000, gid: 1000 };
      spec.hostname = 'specbox';
      spec.root.readonly = false;
    });
    const c = await sandbox.createContainer({ bundle });
    const out = collect(c.stdout);
    const err = collect(c.stderr);
    await c.start();
    const status = await c.wait();
    // containers() names the bundle it was made from (it said '': the agent gets the spec inline).
    expect((await sandbox.containers()).find((info) => info.id === c.id)).toMatchObject({ bundle, terminal: false });
    expect((await err).toString()).toBe('to-stderr\n');
    expect(status.exitCode).toBe(0);
    expect((await out).toString().split('\n')).toEqual(['hello from runc spec', '/scratch', '1000', '1000', 'specbox', 'no-tty', '']);
    await c.delete();
  });

  it('honours a hand-written minimal config.json and a read-only root', async () => {
    const dir = path.join(work, 'hand-bundle');
    await busyboxRootfs(dir);
    await fs.writeFile(
      path.join(dir, 'config.json'),
      JSON.stringify({
        ociVersion: '1.0.2',
        process: { args: ['sh', '-c', 'cat /etc/motd; touch /x 2>/dev/null && echo writable || echo read-only'], cwd: '/', env: ['PATH=/bin'] },
        root: { path: 'rootfs', readonly: true },
        mounts: [{ destination: '/proc', type: 'proc', source: 'proc' }],
      }),
    );
    await fs.writeFile(path.join(dir, 'rootfs/etc/motd'), 'from the host\n');
    const c = await sandbox.createContainer({ bundle: dir });
    const out = collect(c.stdout);
    await c.start();
    expect((await c.wait()).exitCode).toBe(0);
    expect((await out).toString()).toBe('from the host\nread-only\n');
    await c.delete();
    // The bundle on the host is untouched and no longer mounted anywhere under the sandbox.
    expect(await fs.readFile(path.join(dir, 'rootfs/etc/motd'), 'utf8')).toBe('from the host\n');
  });

  it('execs into a running container, and delivers SIGTERM and SIGKILL', async () => {
    const c = await sandbox.createContainer({
      id: 'sig',
      process: { args: ['sh', '-c', 'trap "echo got TERM; exit 143" TERM; echo ready; while :; do sleep 0.1; done'] },
    });
    const out = collect(c.stdout);
    await c.start();
    const exec = await c.exec({ args: ['sh', '-c', 'echo exec in $(hostname); ls /proc | grep -c "^[0-9]"'] });
    const execOut = collect(exec.stdout);
    expect((await exec.wait()).exitCode).toBe(0);
    const [line, count] = (await execOut).toString().trim().split('\n');
    expect(line).toBe('exec in sig');
    expect(Number(count)).toBeGreaterThanOrEqual(2); // the init, its sleep and the exec share a pid namespace
    await c.kill('SIGTERM');
    const status = await c.wait();
    expect(status.exitCode).toBe(143);
    expect((await out).toString()).toContain('got TERM');
    await c.delete();

    const stubborn = await sandbox.createContainer({ process: { args: ['sh', '-c', 'trap "" TERM; while :; do sleep 1; done'] } });
    await stubborn.start();
    await stubborn.kill('SIGTERM');
    await stubborn.kill('SIGKILL');
    expect(await stubborn.wait()).toMatchObject({ signal: 9, exitCode: 137 });
    await stubborn.delete();
  });

  it('echoes stdin back, with EOF delivered on end()', async () => {
    const c = await sandbox.createContainer({ process: { args: ['cat'] }, stdio: { stdin: true } });
    const out = collect(c.stdout);
    await c.start();
    const text = 'line one\nline two\n'.repeat(1000);
    c.stdin!.end(text);
    expect((await c.wait()).exitCode).toBe(0);
    expect((await out).toString()).toBe(text);
    await c.delete();
  });

  it('runs a tty session and resizes it', async () => {
    const c = await sandbox.createContainer({ process: { args: ['sh'], terminal: true }, stdio: { stdin: true } });
    expect(c.stderr).toBeNull();
    const out = collect(c.stdout);
    await c.start();
    await c.resizeTty({ rows: 33, cols: 111 });
    c.stdin!.write('tty -s && echo is-a-tty; stty size; exit 5\n');
    expect((await c.wait()).exitCode).toBe(5);
    const text = (await out).toString();
    expect(text).toContain('is-a-tty');
    expect(text).toContain('33 111');
    await c.delete();
  });

  it('delivers 50 MB of stdout complete and in order', async () => {
    // 50 MiB of 8-byte little-endian counters: a lost, duplicated or reordered chunk changes the hash.
    const dir = path.join(work, 'bulk');
    await busyboxRootfs(dir);
    const data = Buffer.alloc(50 * 1024 * 1024);
    for (let i = 0; i < data.length / 8; i++) data.writeBigUInt64LE(BigInt(i), i * 8);
    await fs.writeFile(path.join(dir, 'rootfs', 'data.bin'), data);
    const c = await sandbox.createContainer({ rootfs: path.join(dir, 'rootfs'), process: { args: ['cat', '/data.bin'] } });
    const hash = createHash('sha256');
    let bytes = 0;
    c.stdout!.on('data', (chunk: Buffer) => {
      hash.update(chunk);
      bytes += chunk.length;
    });
    const ended = new Promise((resolve) => c.stdout!.on('end', resolve));
    await c.start();
    expect((await c.wait()).exitCode).toBe(0);
    await ended;
    expect(bytes).toBe(data.length);
    expect(hash.digest('hex')).toBe(createHash('sha256').update(data).digest('hex'));
    await c.delete();
  });

  it('runs two containers at once, isolated from each other, and reports stats', async () => {
    // What each has printed so far; a test waits for a line before it goes on.
    const printed = (stream: NodeJS.ReadableStream | null) => {
      const seen = { text: '' };
      stream!.setEncoding('utf8');
      stream!.on('data', (chunk: string) => (seen.text += chunk));
      return seen;
    };
    const until = async (what: string, done: () => boolean) => {
      for (const deadline = Date.now() + 60_000; !done(); await new Promise((r) => setTimeout(r, 50))) {
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      }
    };
    // alpha writes its /tmp first (and sees its file there); only then does beta list its own /tmp.
    const a = await sandbox.createContainer({ id: 'alpha', process: { args: ['sh', '-c', 'echo $$ > /tmp/me && ls /tmp && sleep 30'] } });
    const aOut = printed(a.stdout);
    await a.start();
    await until('alpha to write /tmp/me', () => aOut.text === 'me\n');
    const b = await sandbox.createContainer({ id: 'beta', process: { args: ['sh', '-c', 'ls /tmp; echo listed; sleep 30'] } });
    const bOut = printed(b.stdout);
    await b.start();
    await until('beta to list /tmp', () => bOut.text.endsWith('listed\n'));
    const list = (await sandbox.containers()).filter((c) => c.id === 'alpha' || c.id === 'beta');
    expect(list.map((c) => [c.id, c.status]).sort()).toEqual([['alpha', 'running'], ['beta', 'running']]);
    const stats = await a.stats();
    expect(stats.pids.current).toBeGreaterThanOrEqual(1);
    expect(stats.cpu.usageUsec).toBeGreaterThan(0);
    expect(stats.memory.currentBytes).toBeGreaterThan(0);
    await expect(sandbox.createContainer({ id: 'alpha' })).rejects.toBeInstanceOf(AlreadyExistsError);
    await expect(a.delete()).rejects.toBeInstanceOf(InvalidStateError);
    await a.delete({ force: true });
    await b.kill('SIGKILL');
    await b.wait();
    expect(bOut.text).toBe('listed\n'); // beta's /tmp is its own: alpha's file is not in it
    await b.delete();
    expect((await sandbox.containers()).map((c) => c.id)).not.toContain('alpha');
  });

  it("runs on the host's time: start() set the guest clock", async () => {
    const c = await sandbox.createContainer({ process: { args: ['date', '+%s'] } });
    const out = collect(c.stdout);
    await c.start();
    await c.wait();
    await c.delete();
    expect(Math.abs(Number((await out).toString()) - Date.now() / 1000)).toBeLessThan(3);
  });

  it('reports an OOM kill through wait() when a container passes its memory limit', async () => {
    const bundle = await runcSpecBundle(path.join(work, 'oom-bundle'), (spec) => {
      spec.process.terminal = false;
      // dd fills one 64 MiB buffer: twice the limit.
      spec.process.args = ['dd', 'if=/dev/zero', 'of=/dev/null', 'bs=64M', 'count=1'];
      spec.linux.resources = { memory: { limit: 32 * 1024 * 1024 } };
    });
    const c = await sandbox.createContainer({ bundle });
    await c.start();
    expect(await c.wait()).toEqual({ exitCode: 137, signal: 9, oomKilled: true });
    await c.delete();
  });

  it('binds a rootfs once for all the containers that use it, and releases it with the last', async () => {
    const rootfs = await busyboxRootfs(path.join(work, 'shared-rootfs'));
    const binds = async (): Promise<string[]> => {
      const dir = path.join(sandbox.dir, 'shared', 'rootfs');
      return (await mountPoints()).filter((m) => m.startsWith(`${dir}/`));
    };
    const one = await sandbox.createContainer({ id: 'one', rootfs, process: { args: ['sleep', '30'] } });
    await one.start();
    expect(await binds()).toHaveLength(1);
    const two = await sandbox.createContainer({ id: 'two', rootfs, process: { args: ['sh', '-c', 'echo from two > /scratch/marker'] } });
    await two.start();
    expect((await two.wait()).exitCode).toBe(0);
    expect(await binds()).toHaveLength(1);
    // The same directory, as with `runc run` of one bundle twice: the write is on the host.
    expect(await fs.readFile(path.join(rootfs, 'scratch/marker'), 'utf8')).toBe('from two\n');
    await two.delete();
    expect(await binds()).toHaveLength(1); // "one" still runs from it
    const exec = await one.exec({ args: ['cat', '/scratch/marker'] });
    const execOut = collect(exec.stdout);
    expect((await exec.wait()).exitCode).toBe(0);
    expect((await execOut).toString()).toBe('from two\n');
    await one.delete({ force: true });
    expect(await binds()).toEqual([]);
    expect(await fs.readdir(path.join(sandbox.dir, 'shared', 'rootfs'))).toEqual([]);
    const record = JSON.parse(await fs.readFile(path.join(sandbox.dir, 'state.json'), 'utf8'));
    expect(record.resources.sharedFs.binds).toEqual({});
    expect(record.containers).toEqual({});
  });

  it('rejects bad input with typed errors and leaves nothing behind', async () => {
    await expect(sandbox.createContainer({ bundle: path.join(work, 'missing') })).rejects.toBeInstanceOf(NotFoundError);
    const noConfig = path.join(work, 'no-config');
    await busyboxRootfs(noConfig);
    await expect(sandbox.createContainer({ bundle: noConfig })).rejects.toThrow(/config.json cannot be read/);
    await fs.writeFile(path.join(noConfig, 'config.json'), '{"ociVersion": "1.0.2", "process": {"args": []}}');
    await expect(sandbox.createContainer({ bundle: noConfig })).rejects.toThrow(/process.args/);
    await fs.writeFile(path.join(noConfig, 'config.json'), '{not json');
    await expect(sandbox.createContainer({ bundle: noConfig })).rejects.toBeInstanceOf(InvalidBundleError);
    await expect(sandbox.createContainer({ id: '../x' })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(sandbox.createContainer({ id: 'a/b' })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(sandbox.createContainer({ process: { args: ['/no/such/binary'] } }).then(async (c) => {
      await c.start();
    })).rejects.toThrow(/no\/such\/binary|No such file/);
    const leftovers = (await sandbox.containers()).map((c) => c.id);
    for (const id of leftovers) await (await sandbox.container(id)).delete({ force: true });
    const shared = await fs.readdir(path.join(sandbox.dir, 'shared', 'containers')).catch(() => []);
    expect(shared).toEqual([]);
  });
});
