/**
 * A containerd (Debian's 1.6) of its own for a test: started by the test with a config whose
 * root, state, temp dir, gRPC/ttrpc sockets and plugin paths are all under one temporary folder
 * (vmpod-ctd-*); the CRI plugin and the snapshotters this host lacks are disabled; no metrics or
 * debug listener. `ctr` talks to it through `--address`. stop() kills containerd and any shim it
 * started (the shims' command lines name our socket), unmounts what is left under the folder
 * and removes it.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { processesMentioning, runCommand, type CommandResult } from './podman.js';

const exec = promisify(execFile);
export const CONTAINERD = '/usr/bin/containerd';
export const CTR = '/usr/bin/ctr';
export const RUNC_SHIM = '/usr/bin/containerd-shim-runc-v2';

export type CtrResult = CommandResult;

export interface Containerd {
  readonly dir: string;
  readonly address: string;
  /** The namespace every ctr call uses. */
  readonly namespace: string;
  /** `ctr --address A --namespace N ARGS...`; resolves with its exit whatever it is. */
  ctr(args: string[], options?: { input?: string; timeoutMs?: number }): Promise<CtrResult>;
  /** containerd's own log (stderr) so far. */
  log(): string;
  /** Stops containerd and its shims, removes the folder. */
  stop(): Promise<void>;
}

/** Why containerd cannot run here, or undefined. */
export async function containerdSkipReason(): Promise<string | undefined> {
  if (process.getuid?.() !== 0) return 'needs root (containerd, mounts)';
  for (const file of [CONTAINERD, CTR, RUNC_SHIM]) {
    if (!(await fs.stat(file).catch(() => undefined))) return `needs ${file} (Debian's containerd: scripts/setup-host.sh installs it)`;
  }
  return undefined;
}

/** Starts a containerd of its own and waits until it answers. */
export async function startContainerd(): Promise<Containerd> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmpod-ctd-'));
  const sub = (name: string) => path.join(dir, name);
  for (const name of ['root', 'state', 'tmp', 'opt']) await fs.mkdir(sub(name), { mode: 0o700 });
  const address = sub('containerd.sock');
  const toml = (value: string) => JSON.stringify(value);
  await fs.writeFile(
    sub('config.toml'),
    [
      'version = 2',
      `root = ${toml(sub('root'))}`,
      `state = ${toml(sub('state'))}`,
      `temp = ${toml(sub('tmp'))}`,
      'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]',
      '[grpc]',
      `  address = ${toml(address)}`,
      '[ttrpc]',
      `  address = ${toml(`${address}.ttrpc`)}`,
      '[debug]',
      '  address = ""',
      '  level = "info"',
      '[metrics]',
      '  address = ""',
      '[plugins."io.containerd.internal.v1.opt"]',
      `  path = ${toml(sub('opt'))}`,
      '',
    ].join('\n'),
  );
  const env: NodeJS.ProcessEnv = { PATH: process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin', TMPDIR: sub('tmp'), HOME: dir };
  const daemon: ChildProcess = spawn(CONTAINERD, ['--config', sub('config.toml')], { env, stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  daemon.stderr?.setEncoding('utf8').on('data', (d: string) => (log += d));
  const exited = new Promise<void>((resolve) => daemon.on('exit', () => resolve()));
  const namespace = 'vmpod-test';
  const ctr = (args: string[], options?: { input?: string; timeoutMs?: number }) => runCommand(CTR, ['--address', address, '--namespace', namespace, ...args], env, options);

  async function stop(): Promise<void> {
    if (daemon.exitCode === null && daemon.signalCode === null) {
      daemon.kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
      if (daemon.exitCode === null && daemon.signalCode === null) daemon.kill('SIGKILL');
      await exited;
    }
    // Shims outlive containerd by design (they hold the containers): kill ours.
    for (const pid of await processesMentioning(dir)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone meanwhile
      }
    }
    const mounts = (await fs.readFile('/proc/self/mountinfo', 'utf8'))
      .split('\n')
      .map((line) => line.split(' ')[4] ?? '')
      .filter((point) => point === dir || point.startsWith(`${dir}/`))
      .reverse();
    for (const point of mounts) await exec('umount', ['-l', point]).catch(() => undefined);
    await fs.rm(dir, { recursive: true, force: true });
  }

  const deadline = Date.now() + 60_000;
  for (;;) {
    const v = await ctr(['version'], { timeoutMs: 10_000 });
    if (v.code === 0 && /Server:/u.test(v.stdout)) break;
    if (daemon.exitCode !== null || Date.now() > deadline) {
      await stop();
      throw new Error(`containerd did not answer: ${v.stderr}\n${log.slice(-4000)}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return { dir, address, namespace, ctr, log: () => log, stop };
}
