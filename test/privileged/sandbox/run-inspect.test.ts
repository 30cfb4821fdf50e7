/**
 * sandbox.run(), Sandbox.run(), sandbox.inspect() and container.inspect() on real VMs: output
 * and exit status of a container run to completion (strings and Buffers, stdin input, the output
 * cap with the rest drained), a run cancelled or timed out (the container killed and deleted),
 * a throwaway sandbox that leaves nothing, and inspections that are plain JSON and agree with
 * what the record, the host and the agent say.
 */
import fs from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../../src/sandbox/sandbox.js';
import { expectNothingLeft, forceCleanup, makeStateDir, skipReason } from './fixture.js';

/** Polls `check` until it returns a value (or gives up after `ms`). */
async function eventually<T>(check: () => Promise<T | undefined>, ms = 60_000): Promise<T> {
  const until = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > until) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe.skipIf(skipReason)(`run and inspect${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let stateDir: string;
  let sandbox: Sandbox;

  beforeAll(async () => {
    stateDir = await makeStateDir();
    sandbox = await Sandbox.create({ stateDir, id: 'runner', memoryMiB: 256 });
    await sandbox.start();
  });

  afterAll(async () => {
    try {
      await sandbox?.delete({ force: true });
      for (const info of await Sandbox.list({ stateDir })) await Sandbox.remove(info.id, { stateDir, force: true });
      await expectNothingLeft(stateDir);
    } finally {
      await forceCleanup(stateDir);
    }
  });

  it('runs a container to completion: exit status, stdout and stderr apart; the container is gone after', async () => {
    const r = await sandbox.run(['sh', '-c', 'echo out; echo err >&2; exit 3']);
    expect(r).toEqual({ exitCode: 3, signal: 0, oomKilled: false, stdout: 'out\n', stderr: 'err\n', truncated: { stdout: false, stderr: false }, containerId: expect.any(String) });
    expect((await sandbox.containers()).map((c) => c.id)).not.toContain(r.containerId);
  });

  it('gives everything a terminal showed in stdout, with a terminal', async () => {
    const r = await sandbox.run({ args: ['sh', '-c', 'echo out; echo err >&2'], terminal: true });
    expect(r).toMatchObject({ exitCode: 0, stdout: 'out\r\nerr\r\n', stderr: '' });
  });

  it('feeds input to stdin, takes top-level process fields, and gives Buffers on request', async () => {
    const r = await sandbox.run({ args: ['sh', '-c', 'cat; echo "$GREETING"; pwd'], env: ['GREETING=hi'], cwd: '/tmp' }, { input: 'line one\n' });
    expect(r.stdout).toBe('line one\nhi\n/tmp\n');
    const bytes = await sandbox.run(['sh', '-c', 'printf "\\377\\000\\376"'], { encoding: 'buffer' });
    expect(Buffer.isBuffer(bytes.stdout)).toBe(true);
    expect([...bytes.stdout]).toEqual([0xff, 0x00, 0xfe]);
  });

  it('keeps maxOutputBytes of a large output and drains the rest, so the container runs to its end', async () => {
    const r = await sandbox.run(['sh', '-c', 'head -c 3000000 /dev/zero; echo done >&2'], { maxOutputBytes: 1000 });
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toBe('\0'.repeat(1000));
    expect(r.truncated).toEqual({ stdout: true, stderr: false });
    expect(r.stderr).toBe('done\n');
  });

  it('kills and deletes the container when the signal aborts, and when its deadline passes', async () => {
    const controller = new AbortController();
    const run = sandbox.run(['sleep', '1000'], { signal: controller.signal });
    // Abort once it runs (the agent lists it running).
    await eventually(async () => ((await sandbox.containers()).some((c) => c.status === 'running') ? true : undefined));
    controller.abort(new Error('enough'));
    await expect(run).rejects.toMatchObject({ code: 'ERR_VMPOD_ABORTED' });
    expect(await sandbox.containers()).toEqual([]);

    await expect(sandbox.run(['sleep', '1000'], { timeoutMs: 3000 })).rejects.toMatchObject({ code: 'ERR_VMPOD_TIMEOUT', message: 'running a container did not finish within 3000 ms' });
    expect(await sandbox.containers()).toEqual([]);
  });

  it('inspects a running sandbox and its containers as plain JSON that agrees with the host and the agent', async () => {
    await using c = await sandbox.createContainer({ id: 'looked-at', process: { args: ['sh', '-c', 'echo started; exec sleep 1000'] } });
    await c.start();
    const info = await sandbox.inspect();
    expect(JSON.parse(JSON.stringify(info))).toEqual(info);
    expect(info).toMatchObject({
      id: 'runner',
      state: 'running',
      dir: sandbox.dir,
      consoleLog: sandbox.consoleLog,
      config: { id: 'runner', memoryMiB: 256, cpus: 1, machine: 'q35', stateDir },
      resources: { cpus: 1, memoryMiB: 256, machine: 'q35', processes: { hypervisor: { pid: sandbox.pid, alive: true }, logger: { alive: true }, virtiofsd: { alive: true } } },
      volumes: [],
      devices: { vhostUser: [], pci: [] },
      networks: [],
      addresses: [],
      boot: { id: expect.stringMatching(/^[0-9a-f]{12}$/u), kernel: expect.any(String), initramfs: expect.any(String) },
    });
    expect(info.operation).toBeUndefined();
    for (const p of Object.values(info.resources.processes)) expect((await fs.readFile(`/proc/${p.pid}/cmdline`, 'utf8')).length).toBeGreaterThan(0);
    expect(info.containers).toEqual([expect.objectContaining({ id: 'looked-at', sandbox: 'runner', state: 'running', rootfs: 'builtin', terminal: false, exit: null, execs: [] })]);

    const mine = await c.inspect();
    expect(JSON.parse(JSON.stringify(mine))).toEqual(mine);
    expect(mine).toMatchObject({ id: 'looked-at', sandbox: 'runner', state: 'running', exit: null, stats: { containerId: 'looked-at', pids: { current: expect.any(Number) } } });
    expect(mine.pid).toBeGreaterThan(1);
    expect(mine.stats!.memory.currentBytes).toBeGreaterThan(0);
    expect(Date.parse(mine.createdAt)).not.toBeNaN();

    await c.kill('SIGKILL');
    await c.wait();
    const stopped = await c.inspect();
    expect(stopped).toMatchObject({ state: 'stopped', exit: { exitCode: 137, signal: 9, oomKilled: false } });
    expect(stopped.stats).toBeUndefined();
    await c.delete();
    await expect(c.inspect()).rejects.toMatchObject({ code: 'ERR_VMPOD_NOT_FOUND' });
  });

  it('inspects a stopped sandbox from the record alone: why it stopped, no processes, no containers', async () => {
    const other = await Sandbox.create({ stateDir, id: 'stopped-one', memoryMiB: 256 });
    try {
      const created = await other.inspect();
      expect(created).toMatchObject({ state: 'created', resources: { processes: {} } });
      expect(created.boot).toBeUndefined();
      expect(created.containers).toBeUndefined();
      await other.start();
      await other.stop();
      const info = await other.inspect();
      expect(info).toMatchObject({ state: 'stopped', stopReason: { reason: 'requested', detail: 'stop' }, resources: { processes: {} } });
      expect(info.boot).toBeUndefined();
      expect(info.containers).toBeUndefined();
    } finally {
      await other.delete({ force: true });
    }
  });

  it('Sandbox.run makes a sandbox for one container and deletes it after, also when the run fails', async () => {
    const before = (await Sandbox.list({ stateDir })).map((s) => s.id);
    const r = await Sandbox.run({ stateDir, memoryMiB: 256 }, ['sh', '-c', 'uname -r; exit 7']);
    expect(r.exitCode).toBe(7);
    expect(r.stdout).toMatch(/^\d+\.\d+/u);
    expect((await Sandbox.list({ stateDir })).map((s) => s.id)).toEqual(before);
    await expect(Sandbox.run({ stateDir, memoryMiB: 256 }, { rootfs: '/nonexistent-vmpod-rootfs', args: ['true'] })).rejects.toThrow();
    expect((await Sandbox.list({ stateDir })).map((s) => s.id)).toEqual(before);
  });
});
