/**
 * A podman (Debian's 4.3) of its own for a test or a benchmark: every path it writes under one
 * temporary folder (vmpod-pm-*), nothing read from or written to the host's configuration.
 *
 * - storage: `--root`, `--runroot`, `--tmpdir` in the folder, the vfs driver (no mounts of
 *   layers), CONTAINERS_STORAGE_CONF pointing at a file of ours;
 * - engine: CONTAINERS_CONF = a containers.conf of ours: cgroupfs, events to a file, k8s-file
 *   logs, file locks in our tmpdir (the default shm locks are one host-wide segment that any
 *   other podman's first start frees), conmon from Debian, network configs in our folder (never
 *   /etc/cni/net.d or /etc/containers/networks);
 * - registries: CONTAINERS_REGISTRIES_CONF = no registry to search, none to reach; a signature
 *   policy file of ours; images come only from `oci:` layouts and archives;
 * - every container: `--network none` (podman's default bridge would add firewall rules to the
 *   host), `--ulimit nofile=1024:1024 --ulimit nproc=1024:1024`, and the runtime given by
 *   absolute path (`--runtime`), as a user of `podman --runtime $(which vmpod-runtime)` would.
 * The runtime keeps its state where it does by default (runc: /run/runc): podman passes
 * `--runtime-flag` options to its own runtime calls but not to the `podman container cleanup` that
 * conmon runs when a container exits, so a `--root` given that way would split one container's
 * state between two roots. Container ids are podman's 64-hex ids: no clash with anyone else's.
 */
import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const exec = promisify(execFile);
export const PODMAN = '/usr/bin/podman';
export const CONMON = '/usr/bin/conmon';

/** What a command run by {@link runCommand} did. */
export interface CommandResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export type PodmanResult = CommandResult;

/** Runs `file` with `args` and `env`, `input` on its stdin; killed after `timeoutMs` (default 170 s). */
export function runCommand(file: string, args: string[], env: NodeJS.ProcessEnv, options: { input?: string; timeoutMs?: number } = {}): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 170_000);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
    // A command that exits without reading all its input makes the write fail (EPIPE): its exit
    // is the result, not an uncaught error.
    child.stdin.on('error', () => undefined);
    child.stdin.end(options.input ?? '');
  });
}

export interface Podman {
  /** The temporary folder holding podman's storage, state and configuration. */
  readonly dir: string;
  /** The absolute path of the OCI runtime podman calls. */
  readonly runtime: string;
  /** The global arguments (before the command). */
  readonly globalArgs: string[];
  /** The arguments every `run`/`create` gets (network none, ulimits). */
  readonly containerArgs: string[];
  /** The environment podman runs with. */
  readonly env: NodeJS.ProcessEnv;
  /** Runs `podman GLOBAL... ARGS...`; resolves with its exit whatever it is. */
  podman(args: string[], options?: { input?: string; timeoutMs?: number }): Promise<PodmanResult>;
  /** Removes every container and image, then the folder; kills what is left of conmon. */
  destroy(): Promise<void>;
}

/** Why podman cannot run here, or undefined. */
export async function podmanSkipReason(): Promise<string | undefined> {
  if (process.getuid?.() !== 0) return 'needs root (podman with its own storage, cgroupfs)';
  for (const [file, pkg] of [[PODMAN, 'podman'], [CONMON, 'conmon']] as const) {
    if (!(await fs.stat(file).catch(() => undefined))) return `needs ${file} (Debian's ${pkg}: scripts/setup-host.sh installs it)`;
  }
  return undefined;
}

/** A podman of its own, calling `runtime` (an absolute path). */
export async function makePodman(runtime: string): Promise<Podman> {
  if (!path.isAbsolute(runtime)) throw new Error(`the runtime must be an absolute path, not ${runtime}`);
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmpod-pm-'));
  const sub = (name: string) => path.join(dir, name);
  for (const name of ['root', 'runroot', 'tmp', 'networks', 'registries.d', 'volumes']) await fs.mkdir(sub(name), { mode: 0o700 });
  const toml = (value: string) => JSON.stringify(value);
  await fs.writeFile(
    sub('containers.conf'),
    [
      '[containers]',
      `log_driver = "k8s-file"`,
      `netns = "none"`,
      `default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]`,
      '[engine]',
      `cgroup_manager = "cgroupfs"`,
      `events_logger = "file"`,
      `events_logfile_path = ${toml(sub('events.log'))}`,
      `lock_type = "file"`,
      `tmp_dir = ${toml(sub('tmp'))}`,
      `static_dir = ${toml(path.join(sub('root'), 'libpod'))}`,
      `volume_path = ${toml(sub('volumes'))}`,
      `conmon_path = [${toml(CONMON)}]`,
      `image_copy_tmp_dir = ${toml(sub('tmp'))}`,
      '[network]',
      `network_config_dir = ${toml(sub('networks'))}`,
      `cni_plugin_dirs = [${toml(sub('networks'))}]`,
      '',
    ].join('\n'),
  );
  await fs.writeFile(sub('registries.conf'), 'unqualified-search-registries = []\n');
  await fs.writeFile(
    sub('storage.conf'),
    `[storage]\ndriver = "vfs"\nrunroot = ${toml(sub('runroot'))}\ngraphroot = ${toml(sub('root'))}\n`,
  );
  await fs.writeFile(sub('policy.json'), JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }));
  const env: NodeJS.ProcessEnv = {
    PATH: process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin',
    HOME: dir,
    TMPDIR: sub('tmp'),
    CONTAINERS_CONF: sub('containers.conf'),
    CONTAINERS_REGISTRIES_CONF: sub('registries.conf'),
    CONTAINERS_STORAGE_CONF: sub('storage.conf'),
    REGISTRIES_CONFIG_PATH: sub('registries.conf'),
    XDG_RUNTIME_DIR: sub('tmp'),
    XDG_CONFIG_HOME: dir,
    XDG_DATA_HOME: dir,
  };
  const globalArgs = [
    '--root', sub('root'),
    '--runroot', sub('runroot'),
    '--tmpdir', sub('tmp'),
    '--storage-driver', 'vfs',
    '--cgroup-manager', 'cgroupfs',
    '--events-backend', 'file',
    '--network-config-dir', sub('networks'),
    '--conmon', CONMON,
    '--runtime', runtime,
  ];
  const containerArgs = ['--network', 'none', '--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=1024:1024'];

  function podman(args: string[], options: { input?: string; timeoutMs?: number } = {}): Promise<PodmanResult> {
    return runCommand(PODMAN, [...globalArgs, ...args], env, options);
  }

  async function destroy(): Promise<void> {
    // Containers first (their VMs or processes, conmon), then images, then the folder.
    await podman(['rm', '--all', '--force', '--time', '0'], { timeoutMs: 120_000 }).catch(() => undefined);
    await podman(['rmi', '--all', '--force'], { timeoutMs: 60_000 }).catch(() => undefined);
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

  return { dir, runtime, globalArgs, containerArgs, env, podman, destroy };
}

/** Pids of processes whose command line mentions `text` (not this one). */
export async function processesMentioning(text: string): Promise<number[]> {
  const pids: number[] = [];
  for (const name of await fs.readdir('/proc')) {
    if (!/^\d+$/u.test(name) || Number(name) === process.pid) continue;
    const cmdline = await fs.readFile(`/proc/${name}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.replaceAll('\0', ' ').includes(text)) pids.push(Number(name));
  }
  return pids;
}
