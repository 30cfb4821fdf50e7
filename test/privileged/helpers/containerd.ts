/**
 * A containerd (Debian's 1.6) of its own for a test: started by the test with a config whose
 * root, state, temp dir, gRPC/ttrpc sockets and plugin paths are all under one temporary folder
 * (vmpod-ctd-*); the snapshotters this host lacks are disabled; no metrics or debug listener.
 * The CRI plugin is off unless `cri` is given: then its state and root are under the folder too
 * (containerd's root and state, the pods' network namespaces too), its stream server listens on
 * 127.0.0.1 with a port of the kernel's choosing, no AppArmor profile is loaded, CNI reads the test's own conf dir, and each runtime handler named in
 * `runtimes` maps to a runtime_type (containerd looks its shim `containerd-shim-NAME-v2` up on
 * its PATH: `pathPrepend` puts directories before the default PATH). `ctr` talks to it through `--address`. stop() kills containerd and any shim it
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
  ctr(args: string[], options?: { input?: string; timeoutMs?: number; namespace?: string }): Promise<CtrResult>;
  /** containerd's own log (stderr) so far. */
  log(): string;
  /** containerd's pid (changes with restart). */
  pid(): number;
  /** Stops containerd alone (SIGTERM; its shims stay) and starts it again with the same config. */
  restart(): Promise<void>;
  /** Stops containerd and its shims, removes the folder. */
  stop(): Promise<void>;
}

/** The CRI plugin's settings (see startContainerd). */
export interface CriSettings {
  /** The image of the pods' sandbox containers (imported beforehand into the k8s.io namespace). */
  sandboxImage: string;
  /** Where the CNI conflist is (the test writes it before containerd starts). */
  cniConfDir: string;
  /** The CNI plugins (default /usr/lib/cni, Debian's containernetworking-plugins). */
  cniBinDir?: string;
  /** Runtime handler name → containerd runtime type, e.g. { runc: 'io.containerd.runc.v2' }. */
  runtimes: Record<string, string>;
  /** The handler of a RunPodSandbox without one (default: the first of `runtimes`). */
  defaultRuntime?: string;
}

export interface ContainerdOptions {
  /** Turns the CRI plugin on, with these settings. */
  cri?: CriSettings;
  /** Directories put before containerd's PATH (shims are looked up there). */
  pathPrepend?: string[];
  /** More environment for containerd and the shims it starts (VMPOD_STATE_DIR, say). */
  env?: Record<string, string>;
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
export async function startContainerd(options: ContainerdOptions = {}): Promise<Containerd> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmpod-ctd-'));
  const sub = (name: string) => path.join(dir, name);
  for (const name of ['root', 'state', 'tmp', 'opt']) await fs.mkdir(sub(name), { mode: 0o700 });
  const address = sub('containerd.sock');
  const toml = (value: string) => JSON.stringify(value);
  const cri = options.cri;
  const criSection = cri === undefined ? [] : criConfig(cri, toml);
  await fs.writeFile(
    sub('config.toml'),
    [
      'version = 2',
      `root = ${toml(sub('root'))}`,
      `state = ${toml(sub('state'))}`,
      `temp = ${toml(sub('tmp'))}`,
      `disabled_plugins = [${cri === undefined ? '"io.containerd.grpc.v1.cri", ' : ''}"io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]`,
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
      ...criSection,
      '',
    ].join('\n'),
  );
  const basePath = process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin';
  const env: NodeJS.ProcessEnv = { ...options.env, PATH: [...(options.pathPrepend ?? []), basePath].join(':'), TMPDIR: sub('tmp'), HOME: dir };
  let log = '';
  let daemon: ChildProcess;
  let exited: Promise<void>;
  const launch = () => {
    daemon = spawn(CONTAINERD, ['--config', sub('config.toml')], { env, stdio: ['ignore', 'ignore', 'pipe'] });
    daemon.stderr?.setEncoding('utf8').on('data', (d: string) => (log += d));
    exited = new Promise<void>((resolve) => daemon.on('exit', () => resolve()));
  };
  launch();
  const namespace = 'vmpod-test';
  const ctr = (args: string[], ctrOptions?: { input?: string; timeoutMs?: number; namespace?: string }) =>
    runCommand(CTR, ['--address', address, '--namespace', ctrOptions?.namespace ?? namespace, ...args], env, ctrOptions);

  async function stopDaemon(): Promise<void> {
    if (daemon.exitCode === null && daemon.signalCode === null) {
      daemon.kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
      if (daemon.exitCode === null && daemon.signalCode === null) daemon.kill('SIGKILL');
      await exited;
    }
  }

  async function stop(): Promise<void> {
    await stopDaemon();
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

  async function answering(): Promise<void> {
    const deadline = Date.now() + 60_000;
    for (;;) {
      const v = await ctr(['version'], { timeoutMs: 10_000 });
      if (v.code === 0 && /Server:/u.test(v.stdout)) return;
      if (daemon.exitCode !== null || Date.now() > deadline) throw new Error(`containerd did not answer: ${v.stderr}\n${log.slice(-4000)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  async function restart(): Promise<void> {
    await stopDaemon();
    launch();
    await answering();
  }

  try {
    await answering();
  } catch (err) {
    await stop();
    throw err;
  }
  return { dir, address, namespace, ctr, log: () => log, pid: () => daemon.pid ?? 0, restart, stop };
}

/** The CRI plugin's section of containerd 1.6's config (version 2). */
function criConfig(cri: CriSettings, toml: (value: string) => string): string[] {
  const names = Object.keys(cri.runtimes);
  const base = '[plugins."io.containerd.grpc.v1.cri"]';
  const lines = [
    base,
    `  sandbox_image = ${toml(cri.sandboxImage)}`,
    // Without CAP_SYS_RESOURCE in a user namespace it fails; harmless as root.
    '  restrict_oom_score_adj = true',
    '  stream_server_address = "127.0.0.1"',
    '  stream_server_port = "0"',
    '  enable_selinux = false',
    // No AppArmor profile loaded into the host's kernel for the tests' containers.
    '  disable_apparmor = true',
    // The pods' network namespaces under containerd's state (the test's folder), not /run/netns.
    '  netns_mounts_under_state_dir = true',
    `${base.slice(0, -1)}.cni]`,
    `  bin_dir = ${toml(cri.cniBinDir ?? '/usr/lib/cni')}`,
    `  conf_dir = ${toml(cri.cniConfDir)}`,
    '  max_conf_num = 1',
    `${base.slice(0, -1)}.containerd]`,
    `  default_runtime_name = ${toml(cri.defaultRuntime ?? names[0] ?? 'runc')}`,
    '  snapshotter = "overlayfs"',
  ];
  for (const name of names) {
    lines.push(`${base.slice(0, -1)}.containerd.runtimes.${name}]`, `  runtime_type = ${toml(cri.runtimes[name]!)}`);
  }
  return lines;
}
