/**
 * Paths of the CLI and the API no other test walks, on real VMs (one sandbox per test, so that
 * each test stands alone): `kill --all` (CLI and API: the init and an exec'd process both get
 * the signal), `stop --timeout` of a guest that cannot power off (how it ended, in the record and
 * the 'stopped' event), `logs --console -f` (output written after the call, ends with the sandbox or on
 * SIGINT), `run` forwarding SIGINT/SIGHUP/SIGTERM to a running container, and `run -it` on a real
 * pseudo-terminal (raw mode: Ctrl-C reaches the container's tty as a byte; a window resize shows
 * in `stty size`).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { buildGuestAssets } from '../../../src/guest/build.js';
import { Sandbox, type StopInfo } from '../../../src/sandbox/sandbox.js';
import { PrintableDecoder } from '../../../src/printable.js';
import { collect, expectNothingLeft, forceCleanup, makeStateDir, processesMentioning, skipReason, spawnVmpod, vmpod, until } from './fixture.js';

/** Pids of the QEMU processes of the sandboxes under `stateDir`. */
async function qemuPids(stateDir: string): Promise<number[]> {
  const pids: number[] = [];
  for (const pid of await processesMentioning(stateDir)) {
    const cmdline = await fs.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.startsWith('/usr/bin/qemu-system') || cmdline.startsWith('qemu-system')) pids.push(pid);
  }
  return pids;
}

/** Collects what a child writes to stdout, readable at any time. */
function output(child: ChildProcess): () => string {
  let text = '';
  child.stdout!.on('data', (d: Buffer) => (text += d.toString('latin1')));
  return () => text;
}

const PTY_RELAY = path.resolve('test/privileged/sandbox/pty-relay.py');
const CLI = [process.execPath, '--import', 'tsx', path.resolve('src/cli/main.ts')];

describe.skipIf(skipReason)(`CLI and API paths${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let stateDir: string;
  const spawned: ChildProcess[] = [];

  beforeAll(async () => {
    await buildGuestAssets(); // up to date first, so that `run` prints nothing of its own
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

  /** `vmpod exec ID cat FILE` in the container, '' while FILE does not exist. */
  async function catIn(id: string, file: string): Promise<string> {
    const r = await vmpod(stateDir, ['exec', id, 'sh', '-c', `cat ${file} 2>/dev/null; true`]);
    expect(r.code, r.stderr).toBe(0);
    return r.stdout;
  }

  // The init records USR1 and USR2 and exits 7 on TERM; its sleeps die of whatever --all sends.
  const TRAPPING_INIT =
    "trap 'echo USR1 >> /tmp/init.log' USR1; trap 'echo USR2 >> /tmp/init.log' USR2; trap 'echo TERM >> /tmp/init.log; exit 7' TERM; " +
    'echo ready > /tmp/init.log; while :; do sleep 0.1; done';

  it('vmpod kill --all signals every process of the container; without --all only its init', async () => {
    const id = 'cpkill';
    const started = await vmpod(stateDir, ['run', '-d', '--name', id, '--', 'sh', '-c', TRAPPING_INIT]);
    expect(started.code, started.stderr).toBe(0);
    await until('the init to be ready', async () => (await catIn(id, '/tmp/init.log')) === 'ready\n');
    // A second process in the container, attached to its `vmpod exec`: exits 5 on USR1.
    const execd = spawnVmpod(stateDir, ['exec', id, 'sh', '-c', "trap 'echo USR1 >> /tmp/exec.log; exit 5' USR1; trap 'echo USR2 >> /tmp/exec.log' USR2; echo up; while :; do sleep 0.1; done"]);
    spawned.push(execd.child);
    const execOut = output(execd.child);
    await until('the exec to be up', () => execOut() === 'up\n');

    const one = await vmpod(stateDir, ['kill', id, 'USR2']);
    expect(one).toEqual({ code: 0, stdout: '', stderr: '' });
    await until('the init to record USR2', async () => (await catIn(id, '/tmp/init.log')) === 'ready\nUSR2\n');

    const all = await vmpod(stateDir, ['kill', '--all', id, 'USR1']);
    expect(all).toEqual({ code: 0, stdout: '', stderr: '' });
    const ended = await execd.result;
    expect(ended.code).toBe(5);
    expect(ended.stdout).toBe('up\n');
    await until('the init to record USR1', async () => (await catIn(id, '/tmp/init.log')) === 'ready\nUSR2\nUSR1\n');
    // The exec'd process got USR1 only: the USR2 without --all went to the init alone.
    expect(await catIn(id, '/tmp/exec.log')).toBe('USR1\n');
    expect((await vmpod(stateDir, ['delete', '-f', id])).code).toBe(0);
  });

  it('Container.kill(signal, { all: true }) reaches the init and an exec\'d process, each through its own trap', async () => {
    const sandbox = await Sandbox.create({ stateDir, id: 'cpapikill' });
    await sandbox.start();
    // The init records TERM and lives on (an init that exits has the agent kill the rest of the
    // container, which would race the exec'd process's own trap).
    const init = "trap 'echo TERM >> /tmp/init.log' TERM; echo ready > /tmp/init.log; while :; do sleep 0.1; done";
    const c = await sandbox.createContainer({ process: { args: ['sh', '-c', init] } });
    await c.start();
    const proc = await c.exec({ args: ['sh', '-c', "trap 'echo exec-TERM; exit 6' TERM; echo up; while :; do sleep 0.1; done"] });
    const procOut = collect(proc.stdout);
    // `up` printed means its trap is set; the init's is set before it writes `ready`.
    let seen = '';
    proc.stdout!.on('data', (d: Buffer) => (seen += d));
    await until('the exec to be up', () => seen.includes('up\n'));
    const initLog = async (): Promise<string> => {
      const r = await c.exec({ args: ['cat', '/tmp/init.log'] });
      const text = collect(r.stdout);
      await r.wait();
      return (await text).toString();
    };
    await until('the init to be ready', async () => (await initLog()) === 'ready\n');
    await c.kill('SIGTERM', { all: true });
    expect(await proc.wait()).toMatchObject({ exitCode: 6, signal: 0 });
    expect((await procOut).toString()).toBe('up\nexec-TERM\n');
    await until('the init to record TERM', async () => (await initLog()) === 'ready\nTERM\n');
    await c.kill('SIGKILL');
    expect(await c.wait()).toMatchObject({ exitCode: 137, signal: 9 });
    await sandbox.delete({ force: true });
  });

  it('vmpod stop --timeout S of a guest that cannot power off (paused) tells QEMU to quit, and the record says so', async () => {
    const id = 'cpstopcli';
    const sandbox = await Sandbox.create({ stateDir, id });
    await sandbox.start();
    await sandbox.pause(); // its vCPUs frozen: the agent cannot answer, the guest cannot power off
    sandbox.detach();
    const r = await vmpod(stateDir, ['stop', '--timeout', '1', id]);
    expect(r).toEqual({ code: 0, stdout: '', stderr: '' });
    expect(await qemuPids(stateDir)).toEqual([]);
    const record = await (await Sandbox.attach(id, { stateDir })).record();
    expect(record.state).toBe('stopped');
    expect(record.stopReason).toEqual({ reason: 'requested', detail: 'stop: the guest did not power off in time, the hypervisor was told to quit' });
    expect((await vmpod(stateDir, ['delete', id])).code).toBe(0);
  });

  it('stop({ timeoutMs }) of a VM that answers nothing (SIGSTOP) kills it, and the stopped event says so', async () => {
    const sandbox = await Sandbox.create({ stateDir, id: 'cpstopapi' });
    await sandbox.start();
    const stopped: StopInfo[] = [];
    sandbox.on('stopped', (info) => stopped.push(info));
    const pid = sandbox.pid!;
    process.kill(pid, 'SIGSTOP'); // neither the agent nor QMP answers now
    try {
      await sandbox.stop({ timeoutMs: 1000 });
    } finally {
      try {
        process.kill(pid, 'SIGCONT');
      } catch {
        // killed, as it should be
      }
    }
    expect(stopped).toEqual([{ reason: 'requested', detail: 'stop: the guest did not power off in time, the hypervisor was killed' }]);
    expect(sandbox.state).toBe('stopped');
    expect(await qemuPids(stateDir)).toEqual([]);
    await sandbox.delete();
  });

  it('vmpod logs --console -f prints what the guest logs after the call and ends when the sandbox stops (graceful stop --timeout)', async () => {
    const id = 'cplogs';
    expect((await vmpod(stateDir, ['run', '-d', '--name', id, '--', 'sleep', '600'])).code).toBe(0);
    const follow = spawnVmpod(stateDir, ['logs', '--console', '-f', id]);
    spawned.push(follow.child);
    const followed = output(follow.child);
    await until('the log so far', () => followed().includes('vmpod-init: ready'));
    // The agent logs the exit of this exec on the console, after logs -f started.
    const exec = await vmpod(stateDir, ['exec', id, 'sh', '-c', 'exit 42']);
    expect(exec.code).toBe(42);
    await until('the exec\'s exit in the followed log', () => /cplogs\/exec-[0-9a-f]+: pid \d+ exited \(code 42, signal 0/u.test(followed()));
    const stop = await vmpod(stateDir, ['stop', '--timeout', '60', id]);
    expect(stop).toEqual({ code: 0, stdout: '', stderr: '' });
    const r = await follow.result;
    expect(r.code).toBe(0);
    expect(r.stderr).toBe('');
    // What the file holds, its control characters escaped (also into a pipe).
    const info = (await Sandbox.list({ stateDir })).find((s) => s.id === id)!;
    const decoder = new PrintableDecoder();
    expect(r.stdout).toBe(decoder.write(await fs.readFile(info.consoleLog)) + decoder.end());
    expect((await (await Sandbox.attach(id, { stateDir })).record()).stopReason).toEqual({ reason: 'requested', detail: 'stop' });
    expect((await vmpod(stateDir, ['delete', id])).code).toBe(0);
  });

  it('vmpod logs --console -f follows a paused sandbox on, and ends on SIGINT while the sandbox runs', async () => {
    const id = 'cplogsint';
    expect((await vmpod(stateDir, ['run', '-d', '--name', id, '--', 'sleep', '600'])).code).toBe(0);
    const follow = spawnVmpod(stateDir, ['logs', '--console', '-f', id]);
    spawned.push(follow.child);
    const followed = output(follow.child);
    await until('the log so far', () => followed().includes('vmpod-init: ready'));
    // A paused sandbox is still followed (it polls every 250 ms: a second paused is seen).
    const sandbox = await Sandbox.attach(id, { stateDir });
    await sandbox.pause();
    await new Promise((r) => setTimeout(r, 1000));
    expect(follow.child.exitCode).toBeNull();
    await sandbox.resume();
    sandbox.detach();
    expect((await vmpod(stateDir, ['exec', id, 'sh', '-c', 'exit 43'])).code).toBe(43);
    await until('a line logged after the pause', () => /cplogsint\/exec-[0-9a-f]+: pid \d+ exited \(code 43, signal 0/u.test(followed()));
    follow.child.kill('SIGINT');
    await follow.result;
    expect(follow.child.signalCode).toBe('SIGINT');
    expect((await Sandbox.list({ stateDir })).map((s) => [s.id, s.state])).toEqual([[id, 'running']]);
    expect((await vmpod(stateDir, ['delete', '-f', id])).code).toBe(0);
  });

  it('vmpod run forwards SIGINT, SIGHUP and SIGTERM to the running container, and exits with its code', async () => {
    const { child, result } = spawnVmpod(stateDir, [
      'run', '--rm', '--name', 'cpsig', '--', 'sh', '-c',
      "trap 'echo got-INT' INT; trap 'echo got-HUP' HUP; trap 'echo got-TERM; exit 21' TERM; echo ready; while :; do sleep 0.1; done",
    ]);
    spawned.push(child);
    const seen = output(child);
    await until('the container to run', () => seen() === 'ready\n');
    child.kill('SIGINT');
    await until('INT in the container', () => seen() === 'ready\ngot-INT\n');
    child.kill('SIGHUP');
    await until('HUP in the container', () => seen() === 'ready\ngot-INT\ngot-HUP\n');
    child.kill('SIGTERM');
    const r = await result;
    expect(r).toEqual({ code: 21, stdout: 'ready\ngot-INT\ngot-HUP\ngot-TERM\n', stderr: '' });
    expect(await Sandbox.list({ stateDir })).toEqual([]); // --rm
  });

  it('vmpod run -it on a pty: raw mode passes Ctrl-C to the container, a window resize shows in stty size', async () => {
    const relay = spawn('python3', [PTY_RELAY, '24', '80', '--', ...CLI, 'run', '--rm', '-i', '-t', '--name', 'cptty', '--', 'sh'], {
      env: { ...process.env, VMPOD_STATE_DIR: stateDir },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    spawned.push(relay);
    // What the terminal shows, line ends as \n (both ttys, the container's and the host's, add a CR).
    const shown = output(relay);
    const screen = (): string => shown().replace(/\r+\n/gu, '\n');
    let relayErr = '';
    relay.stderr!.on('data', (d: Buffer) => (relayErr += d));
    const closed = new Promise<number | null>((resolve) => relay.on('close', resolve));
    const type = (text: string): void => {
      relay.stdin!.write(`${JSON.stringify({ write: Buffer.from(text, 'latin1').toString('base64') })}\n`);
    };
    /** Types `line`, then waits for `expected` to appear in what the terminal shows after it. */
    const answer = async (line: string, expected: RegExp): Promise<void> => {
      const from = screen().length;
      type(line);
      await until(`${JSON.stringify(line)} to answer ${expected}`, () => expected.test(screen().slice(from)), 60_000);
    };
    // busybox's prompt, then its cursor position query (ESC [6n), which it does not wait on.
    await until('the shell prompt', () => /# (\x1b\[6n)?$/u.test(screen()));
    await answer('stty size\r', /\n24 80\n/u);
    // Ctrl-C: in raw mode the host's terminal makes no SIGINT of it (the CLI would die: with -t it
    // forwards no signal); the byte reaches the container's tty, whose line discipline interrupts
    // the foreground `sleep`: the shell lives on and says 130.
    await answer('sleep 600\r', /sleep 600\n/u);
    type('\x03');
    await answer('echo status=$?\r', /\nstatus=130\n/u);
    // The window grows: TIOCSWINSZ on the master, SIGWINCH to the CLI, which resizes the
    // container's tty (asynchronously: asked again until it shows).
    relay.stdin!.write(`${JSON.stringify({ resize: [40, 100] })}\n`);
    await until('the new size in the container', async () => {
      const from = screen().length;
      type('stty size\r');
      const deadline = Date.now() + 5000;
      while (Date.now() < deadline && !/\n\d+ \d+\n/u.test(screen().slice(from))) await new Promise((r) => setTimeout(r, 50));
      return /\n40 100\n/u.test(screen().slice(from));
    }, 60_000);
    type('exit 3\r');
    expect(await closed).toBe(0);
    expect(relayErr).toBe('exit 3\n');
    expect(await Sandbox.list({ stateDir })).toEqual([]); // --rm
  });
});
