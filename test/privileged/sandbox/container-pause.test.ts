/**
 * Container.pause / resume / update in a real sandbox (QEMU; the guest's own cgroup v2 tree):
 * a paused container's counter and CPU time stop while another container of the same VM goes
 * on; resumed, it continues where it was; an update shows in the container's cgroup files
 * and a pids limit makes fork fail.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Container } from '../../../src/container/container.js';
import { InvalidArgumentError, InvalidStateError } from '../../../src/errors.js';
import { Sandbox } from '../../../src/sandbox/sandbox.js';
import { collect, deleteAllAndCheck, makeStateDir, runcSpecBundle, skipReason, until, vmpod } from './fixture.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The numbers a counter container printed so far, one per line. */
function counter(c: Container): { numbers(): number[] } {
  let text = '';
  c.stdout!.setEncoding('utf8').on('data', (s: string) => (text += s));
  return { numbers: () => text.split('\n').filter(Boolean).map(Number) };
}

const COUNTER = 'i=0; while :; do i=$((i+1)); echo $i; sleep 0.1; done';

describe.skipIf(skipReason)(`container pause, resume and update in a sandbox${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let stateDir: string;
  let sandbox: Sandbox;
  let bundle: string;

  beforeAll(async () => {
    stateDir = await makeStateDir();
    // `runc spec`'s config, with a cgroup namespace: /sys/fs/cgroup in the container is its own cgroup.
    bundle = await runcSpecBundle(path.join(stateDir, 'bundle'), (spec) => {
      spec.linux.namespaces.push({ type: 'cgroup' });
      spec.root.readonly = false;
    });
    sandbox = await Sandbox.create({ stateDir, cpus: 1, memoryMiB: 256 });
    await sandbox.start();
  });

  afterAll(async () => {
    await deleteAllAndCheck(stateDir);
    await fs.rm(path.join(stateDir, 'bundle'), { recursive: true, force: true }).catch(() => undefined);
  });

  async function exec(c: Container, script: string): Promise<{ out: string; err: string; code: number }> {
    const p = await c.exec({ args: ['sh', '-c', script] });
    const [out, err] = await Promise.all([collect(p.stdout), collect(p.stderr)]);
    return { out: out.toString(), err: err.toString(), code: (await p.wait()).exitCode };
  }

  it('freezes one container (counter and CPU time stop) while another runs on, then resumes it where it was', async () => {
    const paused = await sandbox.createContainer({ id: 'frozen', bundle, process: { args: ['sh', '-c', COUNTER] } });
    const other = await sandbox.createContainer({ id: 'other', bundle, process: { args: ['sh', '-c', COUNTER] } });
    const a = counter(paused);
    const b = counter(other);
    await paused.start();
    await other.start();
    await until('both counters to run', () => a.numbers().length >= 3 && b.numbers().length >= 3);

    await paused.pause();
    expect(paused.state).toBe('paused');
    expect((await sandbox.containers()).find((c) => c.id === 'frozen')?.status).toBe('paused');
    expect((await paused.inspect()).state).toBe('paused');
    const cpu = (await paused.stats()).cpu.usageUsec;
    expect(cpu).toBeGreaterThan(0);
    // What it printed before the freeze may still be on its way: give it time to arrive.
    await sleep(1000);
    const seen = a.numbers().length;
    const otherSeen = b.numbers().length;
    await sleep(1500);
    expect(a.numbers().length).toBe(seen); // not one more line while frozen
    expect((await paused.stats()).cpu.usageUsec).toBe(cpu); // not one more microsecond of CPU
    await until('the other container to go on', () => b.numbers().length > otherSeen);
    await expect(paused.exec({ args: ['true'] })).rejects.toBeInstanceOf(InvalidStateError);

    await paused.resume();
    expect(paused.state).toBe('running');
    expect((await sandbox.containers()).find((c) => c.id === 'frozen')?.status).toBe('running');
    await until('the counter to go on', () => a.numbers().length > seen + 2);
    // The same process went on counting: no number missing, none repeated.
    const numbers = a.numbers();
    expect(numbers).toEqual(numbers.map((_, i) => i + 1));
    expect((await exec(paused, 'echo alive')).out).toBe('alive\n');

    // Killed while paused: SIGKILL acts on a frozen process.
    await paused.pause();
    await paused.kill('SIGKILL');
    expect(await paused.wait()).toMatchObject({ exitCode: 137, signal: 9 });
    expect(paused.state).toBe('stopped');
    await paused.delete();
    await other.delete({ force: true });
  });

  it('updates memory, cpu and pids limits in the guest cgroup; a pids limit makes fork fail; bad values are refused before any call', async () => {
    const c = await sandbox.createContainer({ id: 'limits', bundle, process: { args: ['sh', '-c', 'while :; do sleep 1; done'] } });
    await c.start();
    try {
      const info = (await sandbox.agent()).info;
      expect(info.features).toEqual(expect.arrayContaining(['pause-container', 'update-container']));
      expect(info.controllers).toEqual(expect.arrayContaining(['memory', 'pids', 'cpu', 'cpuset']));
      await c.update({ memory: { limit: 64 * 2 ** 20, reservation: 16 * 2 ** 20 }, cpu: { shares: 512, quota: 50_000, period: 100_000 }, pids: { limit: 200 } });
      const files = await exec(c, 'cd /sys/fs/cgroup && cat memory.max memory.low cpu.weight cpu.max pids.max');
      expect(files.err).toBe('');
      // cpu.weight of 512 shares: 1 + (510 * 9999) / 262142, rounded down, as runc converts.
      expect(files.out.split('\n')).toEqual([String(64 * 2 ** 20), String(16 * 2 ** 20), '20', '50000 100000', '200', '']);

      // Only the period: the quota stays.
      await c.update({ cpu: { period: 200_000 } });
      expect((await exec(c, 'cat /sys/fs/cgroup/cpu.max')).out).toBe('50000 200000\n');

      // A pids limit below what the script forks: fork fails in the container.
      // The kernel counts the forks the limit refused in pids.events ("max N"): the reason is pinned
      // there, not in the shell's message (seen lost once in CI, where the script failed all the same).
      const refusals = async (): Promise<number> => Number(/^max (\d+)$/mu.exec((await exec(c, 'cat /sys/fs/cgroup/pids.events')).out)?.[1]);
      const refusedBefore = await refusals();
      const forks = 'for i in 1 2 3 4 5 6 7 8 9 10; do sleep 30 & done; echo forked-all';
      await c.update({ pids: { limit: 6 } });
      expect((await c.stats()).pids.max).toBe(6);
      const refused = await exec(c, forks);
      expect(refused.out).not.toContain('forked-all');
      expect(refused.code).not.toBe(0);
      await c.update({ pids: { limit: -1 } });
      expect((await exec(c, 'cat /sys/fs/cgroup/pids.max')).out).toBe('max\n');
      expect(await refusals()).toBeGreaterThan(refusedBefore);
      const allowed = await exec(c, `${forks}; kill $(jobs -p) 2>/dev/null; true`);
      expect(allowed.out).toBe('forked-all\n');

      // Refused on the host, typed, with the field named; the cgroup is unchanged.
      await expect(c.update({ memory: { limit: 4096 } })).rejects.toBeInstanceOf(InvalidArgumentError);
      await expect(c.update({ cpu: { cpus: '0-' } })).rejects.toThrow('resources.cpu.cpus');
      await expect(c.update({ devices: [] } as never)).rejects.toThrow('resources.devices: cannot be updated');
      // A value in range that the guest's kernel refuses: a cpu this 1-vCPU guest does not have.
      await expect(c.update({ cpu: { cpus: '3' } })).rejects.toMatchObject({ agentCode: 'INVALID_ARGUMENT', message: expect.stringContaining('cpuset.cpus') });
      expect((await exec(c, 'cat /sys/fs/cgroup/memory.max')).out).toBe(`${64 * 2 ** 20}\n`);
    } finally {
      await c.delete({ force: true });
    }
  });

  it('pauses, resumes and updates a container from the CLI', async () => {
    const c = await sandbox.createContainer({ id: 'cli', bundle, process: { args: ['sh', '-c', 'while :; do sleep 1; done'] } });
    await c.start();
    const target = `${sandbox.id}/cli`;
    try {
      const updated = await vmpod(stateDir, ['update', '--memory', '32', '--pids-limit', '50', '--cpus', '1', target]);
      expect(updated).toMatchObject({ code: 0, stderr: '' });
      expect((await exec(c, 'cd /sys/fs/cgroup && cat memory.max pids.max cpu.max')).out).toBe(`${32 * 2 ** 20}\n50\n100000 100000\n`);
      const refused = await vmpod(stateDir, ['update', '--memory', '1g', target]);
      expect(refused.code).toBe(2);
      expect(refused.stderr).toContain('--memory "1g"');

      expect(await vmpod(stateDir, ['pause', target])).toMatchObject({ code: 0, stderr: '' });
      const ps = JSON.parse((await vmpod(stateDir, ['ps', '--json'])).stdout) as { id: string; containers: { id: string; status: string }[] }[];
      expect(ps.find((r) => r.id === sandbox.id)?.containers.find((x) => x.id === 'cli')?.status).toBe('paused');
      const execPaused = await vmpod(stateDir, ['exec', target, 'true']);
      expect(execPaused.code).toBe(125);
      expect(execPaused.stderr).toContain('is paused');
      const twice = await vmpod(stateDir, ['pause', target]);
      expect(twice.code).toBe(125);
      expect(twice.stderr).toContain('is paused');
      expect(await vmpod(stateDir, ['resume', target])).toMatchObject({ code: 0, stderr: '' });
      expect((await vmpod(stateDir, ['exec', target, 'echo', 'thawed'])).stdout).toBe('thawed\n');
    } finally {
      await c.delete({ force: true });
    }
  });
});
