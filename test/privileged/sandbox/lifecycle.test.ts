/**
 * The sandbox lifecycle on real VMs: the checked state machine, pause/resume, stop and
 * restart, attach and wait from a second Node process, a VM killed from outside, bad configs,
 * and that delete leaves nothing behind.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Sandbox, type StopInfo } from '../../../src/sandbox/sandbox.js';
import { VmStartError } from '../../../src/hypervisor/errors.js';
import { AbortError, AlreadyExistsError, InvalidArgumentError, InvalidStateError, NotFoundError } from '../../../src/errors.js';
import { collect, expectNothingLeft, forceCleanup, makeStateDir, processesMentioning, skipReason } from './fixture.js';

const exec = promisify(execFile);

describe.skipIf(skipReason)(`sandbox lifecycle${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let stateDir: string;

  beforeEach(async () => {
    stateDir = await makeStateDir();
  });

  afterEach(async () => {
    try {
      for (const info of await Sandbox.list({ stateDir })) {
        await (await Sandbox.attach(info.id, { stateDir })).delete({ force: true });
      }
      await expectNothingLeft(stateDir);
    } finally {
      await forceCleanup(stateDir);
    }
  });

  it('follows the state machine: create, start, pause, resume, stop, start again, delete', async () => {
    const sandbox = await Sandbox.create({ stateDir, id: 'life' });
    expect(sandbox.state).toBe('created');
    await expect(sandbox.pause()).rejects.toThrow(InvalidStateError);
    await expect(sandbox.pause()).rejects.toThrow('cannot pause sandbox "life": it has not been started; start it first');
    await expect(Sandbox.create({ stateDir, id: 'life' })).rejects.toBeInstanceOf(AlreadyExistsError);

    await sandbox.start();
    expect(sandbox.state).toBe('running');
    expect((await Sandbox.list({ stateDir })).map((s) => [s.id, s.state])).toEqual([['life', 'running']]);
    await expect(sandbox.delete()).rejects.toThrow('cannot delete sandbox "life": it is running; stop it first, or delete with force');

    const ticker = await sandbox.createContainer({ process: { args: ['sh', '-c', 'while :; do date +%s; sleep 0.2; done'] } });
    await ticker.start();
    await sandbox.pause();
    expect(sandbox.state).toBe('paused');
    await expect(sandbox.createContainer()).rejects.toThrow('sandbox "life" is paused: creating a container needs it running; resume it first');
    // A paused VM is resumed, never booted a second time; and only a paused one resumes.
    const pid = sandbox.pid;
    await expect(sandbox.start()).rejects.toThrow('cannot start sandbox "life": it is paused; start() boots a VM: resume() a paused one');
    await expect(sandbox.start()).rejects.toBeInstanceOf(InvalidStateError);
    expect(sandbox.state).toBe('paused');
    expect(sandbox.pid).toBe(pid);
    // The vCPUs are frozen: the agent cannot answer until resume.
    await expect(ticker.stats({ signal: AbortSignal.timeout(1500) })).rejects.toThrow(/aborted/);
    await sandbox.resume();
    expect(sandbox.state).toBe('running');
    await expect(sandbox.resume()).rejects.toThrow('sandbox "life" is running: resume() needs it paused');
    await expect(sandbox.start()).rejects.toBeInstanceOf(InvalidStateError);
    expect((await ticker.stats()).pids.current).toBeGreaterThan(0);
    await ticker.kill('SIGKILL');
    await ticker.wait();

    const stopped: StopInfo[] = [];
    sandbox.on('stopped', (info) => stopped.push(info));
    await sandbox.stop();
    expect(sandbox.state).toBe('stopped');
    expect(stopped).toEqual([{ reason: 'requested', detail: 'stop' }]);
    expect(sandbox.pid).toBeUndefined();

    await sandbox.start(); // a stopped sandbox boots again
    const again = await sandbox.createContainer({ process: { args: ['true'] } });
    await again.start();
    expect((await again.wait()).exitCode).toBe(0);
    // No time to power off: the stop says the hypervisor had to be ended (above, 'stop' alone
    // was a graceful power-off).
    await sandbox.stop({ timeoutMs: 0 });
    expect(stopped.at(-1)).toEqual({ reason: 'requested', detail: expect.stringMatching(/^stop: the guest did not power off in time, the hypervisor was (told to quit|killed)$/u) });
    await sandbox.delete();
    expect(sandbox.state).toBe('deleted');
    await expect(Sandbox.attach('life', { stateDir })).rejects.toBeInstanceOf(NotFoundError);
  });

  it("keeps its state root's alone: folders 0700, files and sockets 0600", async () => {
    const sandbox = await Sandbox.create({ stateDir, id: 'modes' });
    await sandbox.start();
    const c = await sandbox.createContainer({ process: { args: ['true'] } });
    await c.start();
    await c.wait();
    const seen: string[] = [];
    const walk = async (dir: string): Promise<void> => {
      for (const entry of await fs.readdir(dir, { withFileTypes: true })) {
        const file = path.join(dir, entry.name);
        const stat = await fs.lstat(file);
        const mode = (stat.mode & 0o7777).toString(8);
        seen.push(`${path.relative(stateDir, file)} ${entry.isDirectory() ? 'dir' : entry.isSocket() ? 'socket' : 'file'} ${mode} ${stat.uid}`);
        // The share's tree is the guest's view (its own tmpfs, read-only to the guest): not state.
        if (entry.isDirectory() && !(path.basename(dir) === 'modes' && (entry.name === 'share' || entry.name === 'shared'))) await walk(file);
      }
    };
    await walk(stateDir);
    const sockets = seen.filter((line) => line.includes(' socket '));
    expect(sockets.length).toBeGreaterThanOrEqual(3); // QMP, agent ports, virtiofsd at least
    expect(seen.filter((line) => line.includes(' file ')).length).toBeGreaterThanOrEqual(3); // state.json, lock, console.log
    const wrong = seen.filter((line) => {
      const [name, kind, mode, uid] = line.split(' ');
      if (name === 'sandboxes/modes/share' || name === 'sandboxes/modes/shared') return false;
      return uid !== '0' || mode !== (kind === 'dir' ? '700' : '600');
    });
    expect(wrong).toEqual([]);
    expect((await fs.stat(stateDir)).mode & 0o077).toBe(0);
    await sandbox.delete({ force: true });
  });

  it('lets a second Node process attach and wait for a container started by the first', async () => {
    const sandbox = await Sandbox.create({ stateDir, id: 'shared' });
    await sandbox.start();
    const c = await sandbox.createContainer({ id: 'job', process: { args: ['sh', '-c', 'sleep 2; echo done; exit 5'] } });
    const out = collect(c.stdout);
    await c.start();
    const script = `
      import { Sandbox } from ${JSON.stringify(path.resolve('src/index.ts'))};
      const sandbox = await Sandbox.attach('shared', { stateDir: ${JSON.stringify(stateDir)} });
      const container = await sandbox.container('job');
      const status = await container.wait();
      console.log(JSON.stringify({ status, containers: (await sandbox.containers()).map((c) => c.id) }));
      sandbox.detach();
    `;
    const file = path.join(stateDir, 'attach.mts');
    await fs.writeFile(file, script);
    const { stdout } = await exec(path.resolve('node_modules/.bin/tsx'), [file], { timeout: 60_000 });
    const result = JSON.parse(stdout.trim().split('\n').pop()!);
    expect(result).toEqual({ status: { exitCode: 5, signal: 0, oomKilled: false }, containers: ['job'] });
    expect((await c.wait()).exitCode).toBe(5);
    expect((await out).toString()).toBe('done\n');
    await sandbox.delete({ force: true });
  });

  it('reports a VM killed with SIGKILL as stopped, and delete removes everything', async () => {
    const sandbox = await Sandbox.create({ stateDir, id: 'victim' });
    await sandbox.start();
    const c = await sandbox.createContainer({ process: { args: ['sleep', '300'] } });
    await c.start();
    const stopped = new Promise<StopInfo>((resolve) => sandbox.once('stopped', resolve));
    process.kill(sandbox.pid!, 'SIGKILL');
    expect(await stopped).toMatchObject({ reason: 'unexpected' });
    expect(sandbox.state).toBe('stopped');
    // The sandbox is stopped: the container's wait is refused as such, not with a broken socket.
    await expect(c.wait()).rejects.toThrow(InvalidStateError);
    await expect(c.wait()).rejects.toMatchObject({ code: 'ERR_VMPOD_INVALID_STATE', from: 'stopped' });
    expect((await Sandbox.list({ stateDir }))[0]).toMatchObject({ id: 'victim', state: 'stopped' });
    await sandbox.delete();
  });

  it('tells the creator "stopped" when another holder stops or deletes the sandbox', async () => {
    const creator = await Sandbox.create({ stateDir, id: 'told' });
    await creator.start();
    const other = await Sandbox.attach('told', { stateDir });
    const stopped = new Promise<StopInfo>((resolve) => creator.once('stopped', resolve));
    await other.stop();
    expect(await stopped).toEqual({ reason: 'requested', detail: 'stop' });
    expect(creator.state).toBe('stopped');

    await other.start();
    const again = await Sandbox.attach('told', { stateDir });
    const gone = new Promise<StopInfo>((resolve) => other.once('stopped', resolve));
    await again.delete({ force: true });
    expect(await gone).toEqual({ reason: 'requested', detail: 'deleted by another process' });
    expect(other.state).toBe('deleted');
    creator.detach();
  });

  it('cleans up with await using: a container when its scope ends, then the sandbox when its own does', async () => {
    let dir = '';
    {
      await using sandbox = await Sandbox.create({ stateDir, id: 'scoped' });
      await sandbox.start();
      dir = sandbox.dir;
      {
        await using c = await sandbox.createContainer({ id: 'inner', process: { args: ['sleep', '300'] } });
        await c.start();
        expect((await sandbox.containers()).map((x) => x.id)).toEqual(['inner']);
      }
      expect(await sandbox.containers()).toEqual([]);
      expect(sandbox.state).toBe('running');
    }
    expect(await fs.stat(dir).then(() => true, () => false)).toBe(false);
    expect(await processesMentioning(dir)).toEqual([]);
  });

  it('aborts start() midway through an AbortSignal: AbortError, the VM killed, a sandbox that delete removes', async () => {
    const sandbox = await Sandbox.create({ stateDir, id: 'aborted' });
    const controller = new AbortController();
    const starting = sandbox.start({ signal: controller.signal });
    // Abort once QEMU runs next to virtiofsd (its two processes); the boot takes seconds under TCG.
    while ((await processesMentioning(sandbox.dir)).length < 3) await new Promise((r) => setTimeout(r, 20));
    controller.abort();
    await expect(starting).rejects.toBeInstanceOf(AbortError);
    // start() records the end of the boot it started whichever step the abort cut short.
    expect(sandbox.state).toBe('stopped');
    expect((await Sandbox.list({ stateDir })).find((s) => s.id === 'aborted')).toMatchObject({ state: 'stopped' });
    expect(await processesMentioning(sandbox.dir)).toEqual([]);
    await sandbox.delete();
  });

  it('finds a VM that died while nobody watched, from another process', async () => {
    const sandbox = await Sandbox.create({ stateDir, id: 'orphan' });
    await sandbox.start();
    const pid = sandbox.pid!;
    sandbox.detach();
    process.kill(pid, 'SIGKILL');
    while (await fs.stat(`/proc/${pid}`).then(() => true, () => false)) await new Promise((r) => setTimeout(r, 50));
    expect((await Sandbox.list({ stateDir }))[0]).toMatchObject({ id: 'orphan', state: 'stopped' });
    const attached = await Sandbox.attach('orphan', { stateDir });
    expect(attached.state).toBe('stopped');
    await attached.delete();
  });

  it('rejects bad configs before doing anything', async () => {
    await expect(Sandbox.create({ stateDir, id: 'a/b' })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(Sandbox.create({ stateDir, id: '..' })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(Sandbox.create({ stateDir, id: 'x..y' })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(Sandbox.create({ stateDir, cpus: 0 })).rejects.toThrow(/cpus/);
    await expect(Sandbox.create({ stateDir, memoryMiB: 1.5 })).rejects.toThrow(/memoryMiB/);
    await expect(Sandbox.create({ stateDir, machine: 'pc' as 'q35' })).rejects.toThrow(/machine/);
    await expect(Sandbox.create({ stateDir, bogus: 1 } as never)).rejects.toThrow(/bogus: unknown field/);
    await expect(Sandbox.create({ stateDir, guest: { kernel: '/no/such/vmlinux', initramfs: '/no/such/initrd' } })).rejects.toThrow(
      /guest.kernel: \/no\/such\/vmlinux does not exist/,
    );
    expect(await fs.readdir(path.join(stateDir, 'sandboxes')).catch(() => [])).toEqual([]);
  });

  it('cleans up after a start that fails (a kernel that is not a kernel)', async () => {
    const bogus = path.join(stateDir, 'not-a-kernel');
    await fs.writeFile(bogus, 'this is not a kernel\n');
    const sandbox = await Sandbox.create({ stateDir, id: 'badboot', guest: { kernel: bogus } });
    // QEMU refuses the kernel: its start error, with QEMU's words in the log tail.
    const failed = await sandbox.start().catch((error: unknown) => error);
    expect(failed).toBeInstanceOf(VmStartError);
    expect(failed).toMatchObject({ code: 'ERR_VMPOD_VM_START', vmId: 'badboot' });
    expect(sandbox.state).toBe('stopped');
    expect(sandbox.pid).toBeUndefined();
    await sandbox.delete({ force: true });
  });
});
