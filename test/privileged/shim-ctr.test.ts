/**
 * The vmpod shim (`containerd-shim-vmpod-v2`) end to end with containerd 1.6 and `ctr`, no CRI: a
 * containerd of the test's own (helpers/containerd.ts) finds the shim on its PATH (a link to
 * dist/shim/main.js in the test's folder) for `--runtime io.containerd.vmpod.v2`; the busybox test
 * image is imported from its oci-archive. Each task runs in a VM: `uname -r` prints the guest's
 * kernel. Covered: exit codes, stdin, a terminal (`-t` under a pty), `task exec`, `kill`, `ps`, `metrics`,
 * `pause`/`resume`, and the events containerd received (ctr prints them decoded) and their
 * order. Afterwards: no task, container, VM, QEMU, mount or shim server left.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../src/sandbox/sandbox.js';
import { serverPaths } from '../../src/shim/main.js';
import { CTR, containerdSkipReason, type Containerd } from './helpers/containerd.js';
import { SHIM_MAIN, startShimContainerd, vmpodShimSkipReason } from './helpers/cri-node.js';
import { imageSkipReason, removeTestImages } from './helpers/oci-images.js';
import { vmpodRuntime } from './helpers/oci-runtimes.js';
import { processesMentioning, runCommand } from './helpers/podman.js';

const skip = (await containerdSkipReason()) ?? (await imageSkipReason()) ?? (await vmpodShimSkipReason());
const IMAGE = 'localhost/vmpod-test/busybox:busybox';
const RUNTIME = 'io.containerd.vmpod.v2';

// Runs argv[1:] with a pty as its stdin, stdout and stderr (24x80), prints what the pty showed,
// exits with its status: `ctr run -t` needs a terminal.
const UNDER_PTY = [
  'import fcntl, os, struct, subprocess, sys, termios',
  'm, s = os.openpty()',
  "fcntl.ioctl(s, termios.TIOCSWINSZ, struct.pack('HHHH', 24, 80, 0, 0))",
  'p = subprocess.Popen(sys.argv[1:], stdin=s, stdout=s, stderr=s, start_new_session=True)',
  'os.close(s)',
  "out = b''",
  'while True:',
  '    try:',
  '        d = os.read(m, 4096)',
  '    except OSError:',
  '        break',
  '    if not d:',
  '        break',
  '    out += d',
  'sys.stdout.buffer.write(out)',
  'sys.exit(p.wait())',
].join('\n');

interface CtrEvent {
  namespace: string;
  topic: string;
  event: Record<string, unknown>;
}

describe.skipIf(skip !== undefined)('containerd-shim-vmpod-v2 under ctr', () => {
  let dir: string;
  let stateDir: string;
  let ctd: Containerd | undefined;
  let events: ChildProcess | undefined;
  let eventText = '';
  let n = 0;

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmpod-shimctr-'));
    ({ ctd, stateDir } = await startShimContainerd(dir));
    // Every event containerd publishes from now on, as ctr prints them (decoded).
    events = spawn(CTR, ['--address', ctd.address, 'events'], { stdio: ['ignore', 'pipe', 'pipe'] });
    events.stdout!.setEncoding('utf8').on('data', (d: string) => (eventText += d));
    events.stderr!.setEncoding('utf8').on('data', (d: string) => (eventText += d));
  });

  afterAll(async () => {
    try {
      if (ctd !== undefined) {
        const c = ctd;
        expect((await c.ctr(['tasks', 'ls', '--quiet'])).stdout.trim()).toBe('');
        expect((await c.ctr(['containers', 'ls', '--quiet'])).stdout.trim()).toBe('');
        // The shim's server exits once containerd has shut down its last task.
        const deadline = Date.now() + 30_000;
        let shims = await shimServers(c);
        while (shims.length > 0 && Date.now() < deadline) {
          await new Promise((r) => setTimeout(r, 250));
          shims = await shimServers(c);
        }
        expect(shims, 'shim server processes left').toEqual([]);
        expect((await Sandbox.list({ stateDir })).map((s) => s.id), 'VMs left').toEqual([]);
        expect(await processesMentioning(stateDir), 'QEMU or helpers of a VM left').toEqual([]);
        expect(await mountsUnder(c.dir), 'mounts left under containerd').toEqual([]);
        expect(await fs.stat(shimPaths().socketPath).catch(() => undefined), 'the shim server\'s socket').toBeUndefined();
      }
    } finally {
      events?.kill('SIGKILL');
      await ctd?.stop();
      for (const info of await Sandbox.list({ stateDir }).catch(() => [])) await Sandbox.remove(info.id, { stateDir, force: true }).catch(() => undefined);
      for (const pid of await processesMentioning(dir)) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone meanwhile
        }
      }
      if (ctd !== undefined) await fs.rm(shimPaths().socketPath, { force: true });
      await fs.rm(dir, { recursive: true, force: true });
      await removeTestImages();
    }
  });

  /** The shim's processes (node running its main, naming this containerd), containerd itself left out. */
  async function shimServers(c: Containerd): Promise<number[]> {
    const pids: number[] = [];
    for (const pid of await processesMentioning(c.dir)) {
      if (pid === c.pid() || pid === events?.pid) continue;
      const cmdline = await fs.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
      if (cmdline.includes('containerd-shim-vmpod-v2') || cmdline.includes(SHIM_MAIN)) pids.push(pid);
    }
    return pids;
  }

  async function mountsUnder(root: string): Promise<string[]> {
    return (await fs.readFile('/proc/self/mountinfo', 'utf8'))
      .split('\n')
      .map((line) => line.split(' ')[4] ?? '')
      .filter((point) => point === root || point.startsWith(`${root}/`));
  }

  function newId(): string {
    return `vt-shimctr-${process.pid}-${n++}`;
  }

  const shimPaths = () => serverPaths(ctd!.address, ctd!.namespace, { VMPOD_SHIM_DIR: path.join(dir, 'shim') });
  const shimLog = (): string => {
    try {
      return readFileSync(shimPaths().logPath, 'utf8').slice(-4000);
    } catch (error) {
      return String(error);
    }
  };
  const diagnose = (r: { stderr: string }): string => `${r.stderr}\n--- containerd:\n${ctd!.log().slice(-3000)}\n--- shim:\n${shimLog()}`;

  async function taskState(id: string): Promise<string | undefined> {
    const ls = await ctd!.ctr(['tasks', 'ls']);
    const row = ls.stdout.split('\n').find((line) => line.split(/\s+/u)[0] === id) ?? '';
    return row.split(/\s+/u)[2];
  }

  async function untilState(id: string, state: string): Promise<void> {
    const deadline = Date.now() + 150_000;
    while ((await taskState(id)) !== state && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
    expect(await taskState(id), `task ${id}`).toBe(state);
  }

  async function until(check: () => boolean, what: string): Promise<void> {
    const deadline = Date.now() + 30_000;
    while (!check() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    expect(check(), `${what}; events so far:\n${eventText.slice(-4000)}`).toBe(true);
  }

  /** The events of container `id` received so far, decoded by ctr (one JSON object each). */
  function eventsOf(id: string): CtrEvent[] {
    const out: CtrEvent[] = [];
    for (const line of eventText.split('\n')) {
      // TIMESTAMP (with spaces) NAMESPACE TOPIC JSON
      const m = /^.* (\S+) (\/\S+) (\{.*\})$/u.exec(line);
      if (!m) continue;
      const event = JSON.parse(m[3]!) as Record<string, unknown>;
      if (event['container_id'] === id || event['id'] === id) out.push({ namespace: m[1]!, topic: m[2]!, event });
    }
    return out;
  }

  it('ctr run --rm: the guest kernel answers uname -r, and the exit code comes back', async () => {
    const id = newId();
    const r = await ctd!.ctr(['run', '--rm', '--runtime', RUNTIME, IMAGE, id, 'sh', '-c', 'uname -r; echo to-stderr >&2; exit 7']);
    expect(r.code, diagnose(r)).toBe(7);
    const release = await vmpodRuntime.kernelRelease();
    expect(r.stdout).toBe(`${release}\n`);
    expect(release).not.toBe(os.release());
    expect(r.stderr).toContain('to-stderr\n');
  });

  it('ctr run passes its stdin to the task, and its end', async () => {
    const r = await ctd!.ctr(['run', '--rm', '--runtime', RUNTIME, IMAGE, newId(), 'sh', '-c', 'cat; echo done'], { input: 'hello\nworld\n' });
    expect(r.code, diagnose(r)).toBe(0);
    expect(r.stdout).toBe('hello\nworld\ndone\n');
  });

  it('ctr run -t runs the task on a terminal in the guest', async () => {
    const args = ['--address', ctd!.address, '--namespace', ctd!.namespace, 'run', '--rm', '-t', '--runtime', RUNTIME, IMAGE, newId(), 'sh', '-c', 'tty; sleep 1; exit 5'];
    const r = await runCommand('/usr/bin/python3', ['-c', UNDER_PTY, CTR, ...args], process.env, { timeoutMs: 170_000 });
    expect(r.code, `${r.stdout}\n${diagnose(r)}`).toBe(5);
    // The guest terminal writes CR LF (onlcr); the host pty may add its own CR. ctr logs on the
    // same terminal: its resize right after Start fails (as with runc) when the task has already
    // stopped, which a loaded machine can make happen even with the task's sleep.
    const shown = r.stdout.split('\n').filter((line) => !/^(\u001b\[[0-9;]*m)?ERRO(\u001b\[0m)?\[[0-9]+\] resize pty /u.test(line)).join('\n');
    expect(shown).toMatch(/^\/dev\/pts\/[0-9]+\r+\n$/u);
  });

  it('task exec, ps, metrics, pause/resume, kill and rm of a detached task; ctr events shows each step, decoded and in order', async () => {
    const id = newId();
    const run = await ctd!.ctr(['run', '-d', '--null-io', '--runtime', RUNTIME, IMAGE, id, 'sh', '-c', 'trap "exit 3" TERM; while true; do sleep 0.2; done']);
    expect(run.code, diagnose(run)).toBe(0);
    await untilState(id, 'RUNNING');

    const exec = await ctd!.ctr(['tasks', 'exec', '--exec-id', 'e1', id, 'sh', '-c', 'cat /etc/motd; exit 4']);
    expect(exec.code, diagnose(exec)).toBe(4);
    expect(exec.stdout).toBe('vmpod test image\n');

    const sleeper = await ctd!.ctr(['tasks', 'exec', '-d', '--exec-id', 'e2', id, 'sleep', '300']);
    expect(sleeper.code, diagnose(sleeper)).toBe(0);
    const ps = await ctd!.ctr(['tasks', 'ps', id]);
    expect(ps.code, diagnose(ps)).toBe(0);
    // The header, then the guest pids of the init and of e2.
    const pids = ps.stdout.trim().split('\n').slice(1).map((line) => Number(line.trim().split(/\s+/u)[0]));
    expect(pids, ps.stdout).toHaveLength(2);
    for (const pid of pids) expect(pid).toBeGreaterThan(0);
    // Stats: the guest cgroup's figures as the cgroup v2 Metrics containerd decodes.
    const metrics = await ctd!.ctr(['tasks', 'metrics', id]);
    expect(metrics.code, diagnose(metrics)).toBe(0);
    expect(metrics.stdout).toMatch(/^pids\.current +[1-9][0-9]* *$/mu);
    expect(metrics.stdout).toMatch(/^cpu\.usage_usec +[1-9][0-9]* *$/mu);
    expect(metrics.stdout).toMatch(/^memory\.usage +[1-9][0-9]* *$/mu);
    const killExec = await ctd!.ctr(['tasks', 'kill', '--signal', 'SIGKILL', '--exec-id', 'e2', id]);
    expect(killExec.code, diagnose(killExec)).toBe(0);
    // Its exit is published once its output is closed: seen before the pause, so the order below is fixed.
    await until(() => eventsOf(id).some((e) => e.topic === '/tasks/exit' && e.event['id'] === 'e2'), 'the exit of e2 among the events');

    const pause = await ctd!.ctr(['tasks', 'pause', id]);
    expect(pause.code, diagnose(pause)).toBe(0);
    expect(await taskState(id)).toBe('PAUSED');
    const resume = await ctd!.ctr(['tasks', 'resume', id]);
    expect(resume.code, diagnose(resume)).toBe(0);
    expect(await taskState(id)).toBe('RUNNING');

    const kill = await ctd!.ctr(['tasks', 'kill', '--signal', 'SIGTERM', id]);
    expect(kill.code, diagnose(kill)).toBe(0);
    await untilState(id, 'STOPPED');
    // A stopped task cannot be signalled any more: containerd hears NOT_FOUND.
    const again = await ctd!.ctr(['tasks', 'kill', '--signal', 'SIGKILL', id]);
    expect(again.code).not.toBe(0);
    expect(again.stderr).toMatch(/not found/u);
    const rm = await ctd!.ctr(['tasks', 'rm', id]);
    expect(rm.code, diagnose(rm)).toBe(0);
    const crm = await ctd!.ctr(['containers', 'rm', id]);
    expect(crm.code, diagnose(crm)).toBe(0);

    // The delete event reaches ctr events shortly after the call returned.
    await until(() => eventsOf(id).some((e) => e.topic === '/tasks/delete'), 'the delete among the events');
    const seen = eventsOf(id);
    const topics = seen.map((e) => `${e.topic}${e.event['exec_id'] === undefined ? '' : `:${String(e.event['exec_id'])}`}${e.topic === '/tasks/exit' ? `:${String(e.event['id'])}=${String(e.event['exit_status'] ?? 0)}` : ''}`);
    const ordered = [
      '/tasks/create',
      '/tasks/start',
      '/tasks/exec-added:e1',
      '/tasks/exec-started:e1',
      '/tasks/exit:e1=4',
      '/tasks/exec-added:e2',
      '/tasks/exec-started:e2',
      '/tasks/exit:e2=137',
      '/tasks/paused',
      '/tasks/resumed',
      `/tasks/exit:${id}=3`,
      '/tasks/delete',
    ];
    const positions = ordered.map((t) => topics.indexOf(t));
    expect(positions.every((p) => p >= 0), `events of ${id}: ${JSON.stringify(topics)}`).toBe(true);
    expect([...positions].sort((a, b) => a - b), JSON.stringify(topics)).toEqual(positions);
    for (const e of seen) expect(e.namespace).toBe(ctd!.namespace);
    const taskExit = seen.find((e) => e.topic === '/tasks/exit' && e.event['id'] === id)!;
    expect(taskExit.event['pid']).toEqual(expect.any(Number));
    expect(typeof taskExit.event['exited_at']).toBe('string');
    expect(Number.isNaN(Date.parse(String(taskExit.event['exited_at'])))).toBe(false);
    expect(seen.find((e) => e.topic === '/tasks/delete')!.event['exit_status']).toBe(3);
  });
});
