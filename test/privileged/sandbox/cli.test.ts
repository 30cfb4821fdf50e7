/**
 * The vmpod CLI end to end, as a script would call it: run (with and without a bundle, exit
 * codes, stdin), detached run + ps + exec + kill + logs + stop + delete, its errors, and a run
 * interrupted by a signal while its sandbox boots.
 */
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildGuestAssets } from '../../../src/guest/build.js';
import { expectNothingLeft, forceCleanup, makeStateDir, processesMentioning, runcSpecBundle, skipReason, spawnVmpod, vmpod } from './fixture.js';

/** Polls `check` until it holds (or fails after `timeoutMs`). */
async function until(what: string, check: () => Promise<boolean>, timeoutMs = 120_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

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

  it('runs an OCI bundle with -e, -w and -u overrides', async () => {
    const bundle = await runcSpecBundle(path.join(stateDir, 'bundle'), (spec) => {
      spec.process.terminal = false;
    });
    const r = await vmpod(stateDir, ['run', '--rm', '-e', 'WHO=cli', '-w', '/tmp', '-u', '1000:1000', bundle, '--', 'sh', '-c', 'echo $WHO $(pwd) $(id -u)']);
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe('cli /tmp 1000\n');
    expect(r.code).toBe(0);
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

    expect((await vmpod(stateDir, ['delete', 'clijob'])).code).toBe(125); // still running: needs stop or -f
    expect((await vmpod(stateDir, ['stop', 'clijob'])).code).toBe(0);
    expect(JSON.parse((await vmpod(stateDir, ['ps', '--json'])).stdout)[0]).toMatchObject({ state: 'stopped' });
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
