/**
 * The vmpod CLI end to end, as a script would call it: run (with and without a bundle, exit
 * codes, stdin), detached run + ps + exec + kill + logs + stop + delete, its errors, and a run
 * interrupted by a signal while its sandbox boots.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildGuestAssets } from '../../../src/guest/build.js';
import { expectNothingLeft, forceCleanup, makeStateDir, processesMentioning, runcSpecBundle, skipReason, spawnVmpod, vmpod, until } from './fixture.js';

const PTY_RELAY = path.resolve('test/privileged/sandbox/pty-relay.py');
const CLI = [process.execPath, '--import', 'tsx', path.resolve('src/cli/main.ts')];

/** Pids of the QEMU processes of the sandboxes under `stateDir`. */
async function qemuPids(stateDir: string): Promise<number[]> {
  const pids: number[] = [];
  for (const pid of await processesMentioning(stateDir)) {
    const cmdline = await fs.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.includes('qemu-system')) pids.push(pid);
  }
  return pids;
}

/** The state of sandbox `id` as its record says, or undefined before the record exists. */
async function recordedState(stateDir: string, id: string): Promise<string | undefined> {
  const file = path.join(stateDir, 'sandboxes', id, 'state.json');
  const text = await fs.readFile(file, 'utf8').catch(() => undefined);
  try {
    return text === undefined ? undefined : (JSON.parse(text) as { state: string }).state;
  } catch {
    return undefined; // caught between two writes
  }
}

/**
 * Runs `test` on a state directory of its own, then checks that nothing is left; kills the CLI
 * and everything under the directory even if the test failed.
 */
async function withOwnStateDir(test: (stateDir: string, spawned: ChildProcess[]) => Promise<void>): Promise<void> {
  const stateDir = await makeStateDir();
  const spawned: ChildProcess[] = [];
  try {
    await test(stateDir, spawned);
    await expectNothingLeft(stateDir);
  } finally {
    for (const child of spawned) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await forceCleanup(stateDir);
  }
}

describe.skipIf(skipReason)(`vmpod CLI${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let stateDir: string;

  beforeAll(async () => {
    stateDir = await makeStateDir();
    // Bring the guest assets up to date first, so that `run` prints nothing of its own.
    await buildGuestAssets();
  });

  afterAll(async () => {
    try {
      // The detach test deletes its sandbox itself; one a failed test left is deleted here, and
      // reported.
      const left = JSON.parse((await vmpod(stateDir, ['ps', '--json'])).stdout || '[]') as { id: string }[];
      for (const { id } of left) expect(await vmpod(stateDir, ['delete', '-f', id])).toMatchObject({ code: 0, stderr: '' });
      expect(left.map((l) => l.id)).toEqual([]);
      await expectNothingLeft(stateDir);
    } finally {
      await forceCleanup(stateDir);
    }
  });

  it('runs the builtin rootfs, prints the guest kernel and exits with the container code', async () => {
    const ok = await vmpod(stateDir, ['run', '--rm', '--', 'uname', '-r']);
    expect(ok.stderr).toBe('');
    expect(ok.code).toBe(0);
    expect(ok.stdout.trim()).toMatch(/cloud-amd64$/);
    const failing = await vmpod(stateDir, ['run', '--rm', '--', 'sh', '-c', 'echo to-stderr >&2; exit 3']);
    expect(failing.code).toBe(3);
    expect(failing.stderr).toBe('to-stderr\n');
    const stdin = await vmpod(stateDir, ['run', '--rm', '-i', '--', 'tr', 'a-z', 'A-Z'], 'shout\n');
    expect(stdin.stdout).toBe('SHOUT\n');
  });

  // The bundle is runc spec's as it is (terminal: true): without -t the process gets no terminal,
  // so its stderr is the CLI's stderr and its stdout has no CR LF.
  it('runs an OCI bundle from runc spec with -e, -w and -u overrides, without a terminal unless -t', async () => {
    const bundle = await runcSpecBundle(path.join(stateDir, 'bundle'), (spec) => {
      expect(spec.process.terminal).toBe(true);
    });
    const r = await vmpod(stateDir, ['run', '--rm', '-e', 'WHO=cli', '-w', '/tmp', '-u', '1000:1000', bundle, '--', 'sh', '-c', 'echo $WHO $(pwd) $(id -u); echo oops >&2; [ -t 1 ] || echo no-tty']);
    expect(r.stderr).toBe('oops\n');
    expect(r.stdout).toBe('cli /tmp 1000\nno-tty\n');
    expect(r.code).toBe(0);
    // With -t it has one: stdout and stderr both go to the terminal, with its CR LF line ends.
    const tty = await vmpod(stateDir, ['run', '--rm', '-t', bundle, '--', 'sh', '-c', 'echo out; echo oops >&2; [ -t 1 ] && echo tty']);
    expect(tty.stderr).toBe('');
    expect(tty.stdout).toBe('out\r\noops\r\ntty\r\n');
    expect(tty.code).toBe(0);
  });

  it('detaches, lists, execs, kills, shows logs, stops and deletes', async () => {
    const started = await vmpod(stateDir, ['run', '-d', '--name', 'clijob', '--json', '--', 'sh', '-c', 'trap "exit 9" TERM; while :; do sleep 0.2; done']);
    expect(started.code).toBe(0);
    expect(JSON.parse(started.stdout)).toMatchObject({ id: 'clijob', container: 'clijob' });

    const ps = await vmpod(stateDir, ['ps', '--json']);
    const listed = JSON.parse(ps.stdout);
    expect(listed).toHaveLength(1);
    expect(listed[0]).toMatchObject({ id: 'clijob', state: 'running', containers: [{ id: 'clijob', status: 'running' }] });

    const exec = await vmpod(stateDir, ['exec', 'clijob', 'sh', '-c', 'hostname; exit 4']);
    expect(exec.stdout).toBe('clijob\n');
    expect(exec.code).toBe(4);
    // Commands that cannot run: docker's 127 and 126, the message in the user's terms (the
    // agent's request name only in a "caused by" line).
    const notFound = await vmpod(stateDir, ['exec', 'clijob', 'nosuch-command']);
    expect(notFound.code).toBe(127);
    expect(notFound.stderr.split('\n')[0]).toMatch(/^vmpod: container "clijob" in sandbox "clijob": command "nosuch-command" not found in \$PATH \(/u);
    const notExecutable = await vmpod(stateDir, ['exec', 'clijob', '/etc']);
    expect(notExecutable.code).toBe(126);
    expect(notExecutable.stderr.split('\n')[0]).toBe('vmpod: container "clijob" in sandbox "clijob": cannot execute "/etc": Permission denied');
    for (const r of [notFound, notExecutable]) expect(r.stderr.split('\n')[0]).not.toMatch(/Exec|StartContainer/u);

    expect(await vmpod(stateDir, ['kill', 'clijob', 'TERM'])).toMatchObject({ code: 0, stderr: '' });
    // The container's trap ran: it exited with 9, not killed by the signal (143).
    let after: any[] = [];
    for (const deadline = Date.now() + 30_000; Date.now() < deadline; await new Promise((r) => setTimeout(r, 100))) {
      after = JSON.parse((await vmpod(stateDir, ['ps', '--json'])).stdout);
      if (after[0]?.containers[0]?.status === 'stopped') break;
    }
    expect(after).toMatchObject([{ id: 'clijob', state: 'running', containers: [{ id: 'clijob', status: 'stopped', exit: { exitCode: 9, signal: 0, oomKilled: false } }] }]);
    const logs = await vmpod(stateDir, ['logs', '--console', 'clijob']);
    expect(logs.stdout).toContain('vmpod-init: ready');

    // An exec into the exited container says so (it said 'cannot go from "stopped" to "running"').
    const exited = await vmpod(stateDir, ['exec', 'clijob', 'true']);
    expect(exited.code).toBe(125);
    expect(exited.stderr).toBe('vmpod: container "clijob" in sandbox "clijob" has exited: exec needs it running\n');

    // Still running: delete needs stop or -f, and says so.
    const running = await vmpod(stateDir, ['delete', 'clijob']);
    expect(running.code).toBe(125);
    expect(running.stderr).toBe(
      'vmpod: cannot delete sandbox "clijob": it is running; stop it first, or delete with force\n  "vmpod stop clijob" stops it; "vmpod delete -f clijob" stops and deletes it\n',
    );
    expect((await vmpod(stateDir, ['stop', 'clijob'])).code).toBe(0);
    expect(JSON.parse((await vmpod(stateDir, ['ps', '--json'])).stdout)[0]).toMatchObject({ state: 'stopped' });
    // Stopping a stopped sandbox succeeds (idempotent).
    expect(await vmpod(stateDir, ['stop', 'clijob'])).toMatchObject({ code: 0, stderr: '' });
    expect((await vmpod(stateDir, ['delete', 'clijob'])).code).toBe(0);
    expect(JSON.parse((await vmpod(stateDir, ['ps', '--json'])).stdout)).toEqual([]);
  });

  it('reports errors with a message and the right exit code', async () => {
    const unknown = await vmpod(stateDir, ['frobnicate']);
    expect(unknown.code).toBe(2);
    const badId = await vmpod(stateDir, ['run', '--name', 'a/b', '--', 'true']);
    expect(badId.code).toBe(125);
    expect(badId.stderr).toContain('--name');
    const missing = await vmpod(stateDir, ['exec', 'nosuch', 'true']);
    expect(missing.code).toBe(125);
    expect(missing.stderr).toContain('sandbox "nosuch" does not exist');
    const json = await vmpod(stateDir, ['stop', 'nosuch', '--json']);
    expect(JSON.parse(json.stderr)).toEqual({ error: { code: 'ERR_VMPOD_NOT_FOUND', message: 'sandbox "nosuch" does not exist' } });
  });

  it('run of a command that does not exist exits 127; with --rm nothing is left, without it the sandbox stays listed', async () => {
    await withOwnStateDir(async (dir) => {
      const rm = await vmpod(dir, ['run', '--rm', '--name', 'clinf', '--', 'nosuch-command']);
      expect(rm.code).toBe(127);
      expect(rm.stderr.split('\n')[0]).toMatch(/^vmpod: container "clinf" in sandbox "clinf": command "nosuch-command" not found in \$PATH \(/u);
      expect(JSON.parse((await vmpod(dir, ['ps', '--json'])).stdout)).toEqual([]);
      const kept = await vmpod(dir, ['run', '--name', 'clinf2', '--', 'nosuch-command']);
      expect(kept.code).toBe(127);
      expect(JSON.parse((await vmpod(dir, ['ps', '--json'])).stdout)).toMatchObject([{ id: 'clinf2', state: 'stopped' }]);
      expect((await vmpod(dir, ['delete', 'clinf2'])).code).toBe(0);
    });
  });

  // A guest that dies while it boots (here: an initramfs the kernel cannot unpack, so it panics).
  // Without --rm the sandbox stays listed, stopped, with the console log that says why (it was
  // deleted, console log and all); with --rm it is deleted.
  it('keeps the sandbox of a run whose guest dies during boot unless --rm, with the console tail in the error', async () => {
    await withOwnStateDir(async (dir) => {
      const junk = path.join(dir, 'junk-initramfs');
      await fs.writeFile(junk, 'this is not a cpio archive\n'.repeat(64));
      const failed = await vmpod(dir, ['run', '--name', 'clidead', '--initramfs', junk, '--', 'true']);
      expect(failed.code).toBe(125);
      expect(failed.stderr).toMatch(/^vmpod: sandbox "clidead": the (VM exited during start|guest's agent hung up during start) .*; console:\n/u);
      expect(failed.stderr).toContain('Kernel panic');
      expect(failed.stderr).toContain('\n  the sandbox stays listed: "vmpod logs --console clidead" shows its console, "vmpod delete clidead" removes it\n');
      expect(JSON.parse((await vmpod(dir, ['ps', '--json'])).stdout)).toMatchObject([{ id: 'clidead', state: 'stopped' }]);
      expect(await fs.readFile(path.join(dir, 'sandboxes', 'clidead', 'console.log'), 'utf8')).toContain('Kernel panic');
      // What the hint says works: the console shows why.
      const consoleLog = await vmpod(dir, ['logs', '--console', 'clidead']);
      expect(consoleLog.code).toBe(0);
      expect(consoleLog.stdout).toContain('Kernel panic - not syncing');
      expect(await qemuPids(dir)).toEqual([]);
      expect((await vmpod(dir, ['delete', 'clidead'])).code).toBe(0);

      const removed = await vmpod(dir, ['run', '--rm', '--name', 'clidead2', '--initramfs', junk, '--', 'true']);
      expect(removed.code).toBe(125);
      expect(removed.stderr).toContain('Kernel panic');
      expect(removed.stderr).not.toContain('stays listed');
      expect(JSON.parse((await vmpod(dir, ['ps', '--json'])).stdout)).toEqual([]);
    });
  });

  it('shows boot progress on stderr when it is a terminal, not with -q (and never into a pipe: see the first test)', async () => {
    const onTty = async (args: string[]): Promise<string> => {
      const relay = spawn('python3', [PTY_RELAY, '24', '80', '--', ...CLI, ...args], { env: { ...process.env, VMPOD_STATE_DIR: stateDir }, stdio: ['pipe', 'pipe', 'pipe'] });
      let shown = '';
      relay.stdout!.on('data', (d: Buffer) => (shown += d.toString('latin1')));
      relay.stdin!.end();
      const code = await new Promise<number | null>((resolve) => relay.on('close', resolve));
      expect(code).toBe(0);
      return shown.replace(/\r+\n/gu, '\n');
    };
    const shown = await onTty(['run', '--rm', '--name', 'cliprog', '--', 'echo', 'done']);
    expect(shown).toMatch(/^vmpod: booting sandbox cliprog \(q35, 1 vCPU, 256 MiB\)\nvmpod: sandbox cliprog is running \([0-9.]+ s\); starting the container\ndone\n$/u);
    expect(await onTty(['run', '--rm', '-q', '--name', 'cliprog', '--', 'echo', 'done'])).toBe('done\n');
  });

  it('deletes the sandbox of a --rm run interrupted by SIGINT while it boots, and exits with 130', async () => {
    await withOwnStateDir(async (dir, spawned) => {
      const { child, result } = spawnVmpod(dir, ['run', '--rm', '--', 'sleep', '100']);
      spawned.push(child);
      await until('the QEMU of the sandbox', async () => (await qemuPids(dir)).length > 0 || child.exitCode !== null);
      child.kill('SIGINT');
      const r = await result;
      expect(r.stderr).toMatch(/^vmpod: interrupted by SIGINT, deleting sandbox \S+\n$/);
      expect(r.code).toBe(130);
      // withOwnStateDir then checks that no QEMU, virtiofsd, mount or sandbox folder is left.
    });
  });

  it('stops the sandbox of a run interrupted by SIGTERM while it boots, and exits with 143', async () => {
    await withOwnStateDir(async (dir, spawned) => {
      const { child, result } = spawnVmpod(dir, ['run', '--name', 'cliint', '--', 'sleep', '100']);
      spawned.push(child);
      // The VM is up (so there is one to stop), but the agent is still coming up: no container yet.
      await until('the sandbox to run', async () => (await recordedState(dir, 'cliint')) === 'running' || child.exitCode !== null);
      child.kill('SIGTERM');
      const r = await result;
      expect(r.stderr).toBe('vmpod: interrupted by SIGTERM; "vmpod delete cliint" removes the sandbox\n');
      expect(r.code).toBe(143);
      expect(await qemuPids(dir)).toEqual([]);
      const listed = JSON.parse((await vmpod(dir, ['ps', '--json'])).stdout);
      expect(listed).toMatchObject([{ id: 'cliint', state: 'stopped' }]);
      expect((await vmpod(dir, ['delete', 'cliint'])).code).toBe(0);
    });
  });
});
