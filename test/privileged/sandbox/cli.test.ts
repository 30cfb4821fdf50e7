/**
 * The vmpod CLI end to end, as a script would call it: run (with and without a bundle, exit
 * codes, stdin), detached run + ps + exec + kill + logs + stop + delete, and its errors.
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildGuestAssets } from '../../../src/guest/build.js';
import { expectNothingLeft, forceCleanup, makeStateDir, runcSpecBundle, skipReason } from './fixture.js';

const CLI = [path.resolve('node_modules/.bin/tsx'), path.resolve('src/cli/main.ts')];

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

function vmpod(stateDir: string, args: string[], input?: string): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(CLI[0]!, [CLI[1]!, ...args], {
      env: { ...process.env, VMPOD_STATE_DIR: stateDir },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d));
    child.stderr.on('data', (d: Buffer) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(input ?? '');
  });
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
      await vmpod(stateDir, ['delete', '-f', 'clijob']);
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

    expect((await vmpod(stateDir, ['kill', 'clijob', 'TERM'])).code).toBe(0);
    const logs = await vmpod(stateDir, ['logs', 'clijob']);
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
});
