/**
 * Fixtures of the sandbox tests: a private state directory per test file, OCI bundles made
 * from busybox (with `runc spec`, an OCI tool, or by hand), and the leftover check every test
 * file ends with: no VM, virtiofsd, mount, socket or state folder may survive.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fsSync from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { expect } from 'vitest';
import { mountPoints } from '../../../src/state/remove.js';
import { Sandbox, type ContainerConfig } from '../../../src/sandbox/sandbox.js';

const exec = promisify(execFile);

/** Why VM tests cannot run here, or undefined. */
export const skipReason: string | undefined =
  process.getuid?.() !== 0
    ? 'needs root (VMs, mounts, namespaces)'
    : !(await fs.stat('/usr/bin/qemu-system-x86_64').catch(() => undefined))
      ? 'needs qemu-system-x86_64 (scripts/setup-host.sh installs it)'
      : undefined;

/** A fresh state directory for one test file. */
export async function makeStateDir(): Promise<string> {
  return fs.mkdtemp(path.join(os.tmpdir(), 'vmpod-st-'));
}

/** Pids of processes whose command line mentions `text`. */
export async function processesMentioning(text: string): Promise<number[]> {
  const pids: number[] = [];
  for (const name of await fs.readdir('/proc')) {
    if (!/^\d+$/u.test(name) || Number(name) === process.pid) continue;
    const cmdline = await fs.readFile(`/proc/${name}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.includes(text)) pids.push(Number(name));
  }
  return pids;
}

/** Asserts that nothing of the sandboxes under `stateDir` is left, then removes the dir. */
export async function expectNothingLeft(stateDir: string): Promise<void> {
  expect(await processesMentioning(stateDir)).toEqual([]);
  expect((await mountPoints()).filter((m) => m.startsWith(stateDir))).toEqual([]);
  const left = await fs.readdir(path.join(stateDir, 'sandboxes')).catch(() => []);
  expect(left).toEqual([]);
  await fs.rm(stateDir, { recursive: true, force: true });
}

/** Kills and unmounts whatever a failed test left (so one failure does not poison the host). */
export async function forceCleanup(stateDir: string): Promise<void> {
  for (const pid of await processesMentioning(stateDir)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  for (const point of (await mountPoints()).filter((m) => m.startsWith(stateDir)).reverse()) {
    await exec('umount', ['-l', point]).catch(() => undefined);
  }
  if (!(await mountPoints()).some((m) => m.startsWith(stateDir))) await fs.rm(stateDir, { recursive: true, force: true });
}

/** A test's teardown: deletes every sandbox under `stateDir` (force), asserts nothing is left, and cleans up even when that fails. */
export async function deleteAllAndCheck(stateDir: string): Promise<void> {
  try {
    for (const info of await Sandbox.list({ stateDir })) await Sandbox.remove(info.id, { stateDir, force: true });
    await expectNothingLeft(stateDir);
  } finally {
    await forceCleanup(stateDir);
  }
}

/** Polls `check` every 50 ms until it holds; throws naming `what` after `timeoutMs`. */
export async function until(what: string, check: () => Promise<boolean> | boolean, timeoutMs = 120_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** Makes `dir/rootfs` a busybox root filesystem. */
export async function busyboxRootfs(dir: string): Promise<string> {
  const rootfs = path.join(dir, 'rootfs');
  for (const sub of ['bin', 'etc', 'proc', 'sys', 'dev', 'tmp', 'root', 'home/app', 'scratch']) {
    await fs.mkdir(path.join(rootfs, sub), { recursive: true });
  }
  await fs.copyFile('/bin/busybox', path.join(rootfs, 'bin/busybox'));
  await fs.chmod(path.join(rootfs, 'bin/busybox'), 0o755);
  const { stdout } = await exec('/bin/busybox', ['--list']);
  for (const applet of stdout.split('\n').filter((a) => a && a !== 'busybox')) {
    await fs.symlink('busybox', path.join(rootfs, 'bin', applet)).catch(() => undefined);
  }
  await fs.writeFile(path.join(rootfs, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n');
  await fs.writeFile(path.join(rootfs, 'etc/group'), 'root:x:0:\napp:x:1000:\n');
  await fs.chown(path.join(rootfs, 'home/app'), 1000, 1000);
  return rootfs;
}

/** An OCI bundle whose config.json `runc spec` wrote, edited by `edit`. */
export async function runcSpecBundle(dir: string, edit: (spec: any) => void): Promise<string> {
  await fs.mkdir(dir, { recursive: true });
  await busyboxRootfs(dir);
  await exec('runc', ['spec'], { cwd: dir });
  const file = path.join(dir, 'config.json');
  const spec = JSON.parse(await fs.readFile(file, 'utf8'));
  edit(spec);
  await fs.writeFile(file, JSON.stringify(spec, null, 2));
  return dir;
}

/** Collects a readable stream into one buffer. */
export async function collect(stream: NodeJS.ReadableStream | null): Promise<Buffer> {
  if (!stream) return Buffer.alloc(0);
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** Runs `sh -c SCRIPT` in a new container of `sandbox` made from `options`, then deletes it. */
export async function runScript(sandbox: Sandbox, options: ContainerConfig, script: string): Promise<{ out: string; err: string; code: number }> {
  const c = await sandbox.createContainer({ ...options, process: { ...options.process, args: ['sh', '-c', script] } });
  const out = collect(c.stdout);
  const err = collect(c.stderr);
  await c.start();
  const status = await c.wait();
  await c.delete();
  return { out: (await out).toString(), err: (await err).toString(), code: status.exitCode };
}

// The CLI as Node with tsx's loader: one process that gets the signals sent to it (the tsx
// command relays them to a child, and kills it if it does not acknowledge within 30 ms).
const CLI = [process.execPath, '--import', 'tsx', path.resolve('src/cli/main.ts')];

/** How a `vmpod` command ended. */
export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Starts `vmpod ARGS` with its state under `stateDir`; `result` settles when it exits. */
export function spawnVmpod(stateDir: string, args: string[], input?: string): { child: ChildProcess; result: Promise<CliResult> } {
  const child = spawn(CLI[0]!, [...CLI.slice(1), ...args], {
    env: { ...process.env, VMPOD_STATE_DIR: stateDir },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const result = new Promise<CliResult>((resolve, reject) => {
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d: Buffer) => (stdout += d));
    child.stderr!.on('data', (d: Buffer) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
  child.stdin!.end(input ?? '');
  return { child, result };
}

/** Runs `vmpod ARGS` (stdin: `input`, or nothing) with its state under `stateDir`. */
export function vmpod(stateDir: string, args: string[], input?: string): Promise<CliResult> {
  return spawnVmpod(stateDir, args, input).result;
}

/**
 * A Node script (TypeScript, run by tsx, with `vmpod` the package's index) started in its own
 * process; `output()` is what it printed so far, `result` settles when it exits.
 */
export function nodeScript(dir: string, code: string, env: NodeJS.ProcessEnv = {}): { child: ChildProcess; output(): string; result: Promise<CliResult> } {
  const file = path.join(dir, `script-${process.hrtime.bigint()}.mts`);
  fsSync.writeFileSync(file, `import * as vmpod from ${JSON.stringify(path.resolve('src/index.ts'))};\n${code}`);
  const child = spawn(process.execPath, ['--import', 'tsx', file], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d));
  child.stderr!.on('data', (d: Buffer) => (stderr += d));
  const result = new Promise<CliResult>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
  return { child, output: () => stdout, result };
}
