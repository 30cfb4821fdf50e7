/**
 * OCI runtime specs on the host side: reading a bundle's config.json, the default spec of a
 * container made from a rootfs and a command, user overrides of `process`, and the changes a
 * spec needs to run inside a VM (its network is the VM's; host bind mounts are shared first).
 *
 * @module
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { ExecFailedError, InvalidArgumentError, NotFoundError, VmpodError, type InvalidStateError } from '../errors.js';
import { stateError } from '../sandbox/state-machine.js';
import { AgentError } from '../agent/errors.js';
import * as validate from '../validate.js';
import type { OciMount, OciProcess, OciSpec } from '../agent/messages.js';

export type { OciMount, OciProcess, OciSpec };

/** The bundle's config.json is unreadable or not a usable OCI runtime spec. */
export class InvalidBundleError extends VmpodError {
  constructor(readonly bundle: string, problem: string, options: { cause?: unknown } = {}) {
    super('ERR_VMPOD_INVALID_BUNDLE', `bundle ${bundle}: ${problem}`, options);
  }
}

/** What a user may override in a container's process (e.g. `vmpod run IMAGE -- CMD`). */
export interface ProcessOverrides {
  /** Command and arguments (`process.args`). */
  args?: string[];
  /** Extra `KEY=VALUE` variables, added to (and replacing same-named ones of) the spec's. */
  env?: string[];
  /** Working directory (`process.cwd`), absolute inside the container. */
  cwd?: string;
  /** User and group ids (`process.user`). */
  user?: { uid: number; gid: number; additionalGids?: number[] };
  /** Allocate a pseudo-terminal (`process.terminal`). */
  terminal?: boolean;
}

/** config.json larger than this is refused (runc has no limit; 4 MiB is far above real specs). */
const MAX_CONFIG_BYTES = 4 << 20;

/** Docker's default capability set: what a container process gets unless its spec says otherwise. */
export const DEFAULT_CAPABILITIES = [
  'CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_FSETID', 'CAP_FOWNER', 'CAP_MKNOD', 'CAP_NET_RAW', 'CAP_SETGID',
  'CAP_SETUID', 'CAP_SETFCAP', 'CAP_SETPCAP', 'CAP_NET_BIND_SERVICE', 'CAP_SYS_CHROOT', 'CAP_KILL', 'CAP_AUDIT_WRITE',
];

/** `PATH` given to processes whose spec has none. */
export const DEFAULT_PATH = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isStringArray(v: unknown): v is string[] {
  return Array.isArray(v) && v.every((s) => typeof s === 'string' && !s.includes('\0'));
}

/** Checks the parts of a spec vmpod relies on; throws with `describe(problem)`. */
export function checkSpec(value: unknown, fail: (problem: string) => never): OciSpec {
  if (!isObject(value)) fail('config.json must hold a JSON object');
  const spec = value as Record<string, unknown>;
  if (typeof spec['ociVersion'] !== 'string') fail('"ociVersion" is missing');
  const proc = spec['process'];
  if (!isObject(proc)) fail('"process" is missing');
  const p = proc as Record<string, unknown>;
  if (!isStringArray(p['args']) || (p['args'] as string[]).length === 0) fail('"process.args" must be a non-empty array of strings');
  if (p['env'] !== undefined && !isStringArray(p['env'])) fail('"process.env" must be an array of strings');
  if (p['cwd'] !== undefined && (typeof p['cwd'] !== 'string' || !p['cwd'].startsWith('/'))) fail('"process.cwd" must be an absolute path');
  const user = p['user'];
  if (user !== undefined) {
    if (!isObject(user)) fail('"process.user" must be an object');
    for (const k of ['uid', 'gid'] as const) {
      const id = (user as Record<string, unknown>)[k];
      if (id !== undefined && (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id > 0xfffffffe)) {
        fail(`"process.user.${k}" must be an integer id`);
      }
    }
  }
  const root = spec['root'];
  if (root !== undefined && (!isObject(root) || typeof root['path'] !== 'string' || root['path'].length === 0)) {
    fail('"root.path" must be a non-empty string');
  }
  const mounts = spec['mounts'];
  if (mounts !== undefined) {
    if (!Array.isArray(mounts)) fail('"mounts" must be an array');
    (mounts as unknown[]).forEach((m, i) => {
      if (!isObject(m) || typeof m['destination'] !== 'string' || !m['destination'].startsWith('/')) {
        fail(`"mounts[${i}].destination" must be an absolute path`);
      }
      if (m['options'] !== undefined && !isStringArray(m['options'])) fail(`"mounts[${i}].options" must be an array of strings`);
    });
  }
  return value as OciSpec;
}

/** A bundle read from the host: its spec and the absolute host path of its rootfs. */
export interface HostBundle {
  dir: string;
  spec: OciSpec;
  rootfs: string;
}

/** Reads and checks `dir/config.json` and its rootfs (`runc` semantics: root.path is relative to the bundle). */
export async function readBundle(dir: string): Promise<HostBundle> {
  const bundle = validate.absolutePath(dir, 'bundle');
  const stat = await fs.stat(bundle).catch(() => undefined);
  if (!stat) throw new NotFoundError('bundle', bundle);
  if (!stat.isDirectory()) throw new InvalidBundleError(bundle, 'is not a directory');
  const fail = (problem: string, cause?: unknown): never => {
    throw new InvalidBundleError(bundle, problem, cause === undefined ? {} : { cause });
  };
  let text = '';
  try {
    const handle = await fs.open(path.join(bundle, 'config.json'), 'r');
    try {
      if ((await handle.stat()).size > MAX_CONFIG_BYTES) fail(`config.json is larger than ${MAX_CONFIG_BYTES} bytes`);
      text = await handle.readFile('utf8');
    } finally {
      await handle.close();
    }
  } catch (error) {
    if (error instanceof InvalidBundleError) throw error;
    fail('config.json cannot be read', error);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    fail(`config.json is not valid JSON (${(error as Error).message})`, error);
  }
  const spec = checkSpec(value, fail);
  const rootPath = spec.root?.path ?? 'rootfs';
  const rootfs = path.resolve(bundle, rootPath);
  if (!(await fs.stat(rootfs).catch(() => undefined))?.isDirectory()) fail(`root.path ${rootPath} is not a directory`);
  return { dir: bundle, spec, rootfs };
}

/** The spec of a container made from a rootfs and a command (like `runc spec`, with Docker's capabilities). */
export function defaultSpec(options: { args: string[]; hostname: string; terminal?: boolean }): OciSpec {
  return {
    ociVersion: '1.0.2',
    process: {
      terminal: options.terminal ?? false,
      user: { uid: 0, gid: 0 },
      args: options.args,
      env: [DEFAULT_PATH, options.terminal ? 'TERM=xterm' : 'TERM=dumb', `HOSTNAME=${options.hostname}`],
      cwd: '/',
      capabilities: {
        bounding: DEFAULT_CAPABILITIES,
        effective: DEFAULT_CAPABILITIES,
        permitted: DEFAULT_CAPABILITIES,
      },
      rlimits: [{ type: 'RLIMIT_NOFILE', hard: 1024, soft: 1024 }],
      noNewPrivileges: true,
    },
    root: { path: 'rootfs', readonly: false },
    hostname: options.hostname,
    mounts: [
      { destination: '/proc', type: 'proc', source: 'proc' },
      { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
      { destination: '/dev/pts', type: 'devpts', source: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620'] },
      { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'] },
      { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
      { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
      { destination: '/tmp', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'nodev', 'mode=1777'] },
    ],
    linux: {
      namespaces: [{ type: 'pid' }, { type: 'ipc' }, { type: 'uts' }, { type: 'mount' }],
      maskedPaths: ['/proc/kcore', '/proc/keys', '/proc/timer_list', '/proc/sched_debug', '/sys/firmware'],
      readonlyPaths: ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'],
    },
  };
}

/** Checks user overrides before anything runs. */
export function checkOverrides(overrides: ProcessOverrides, field = 'process'): ProcessOverrides {
  if (overrides.args !== undefined && (!isStringArray(overrides.args) || overrides.args.length === 0)) {
    throw new InvalidArgumentError(`${field}.args`, 'must be a non-empty array of strings');
  }
  if (overrides.env !== undefined && (!isStringArray(overrides.env) || overrides.env.some((e) => !/^[^=]+=/u.test(e)))) {
    throw new InvalidArgumentError(`${field}.env`, 'must be an array of KEY=VALUE strings');
  }
  if (overrides.cwd !== undefined) validate.absolutePath(overrides.cwd, `${field}.cwd`);
  if (overrides.user !== undefined) {
    validate.integer(overrides.user.uid, `${field}.user.uid`, 0, 0xfffffffe);
    validate.integer(overrides.user.gid, `${field}.user.gid`, 0, 0xfffffffe);
    overrides.user.additionalGids?.forEach((g, i) => validate.integer(g, `${field}.user.additionalGids[${i}]`, 0, 0xfffffffe));
  }
  return overrides;
}

/**
 * The {@link ExecFailedError} for an agent's answer to StartContainer or Exec that says the
 * command could not be executed, or undefined for any other error. The agent reports a command
 * missing from `$PATH` as `executable "NAME" not found in $PATH (DIRS)`, and a failed execve as
 * `exec FILE: STRERROR` with its errno: ENOENT is "not found" (exit code 127 in a shell),
 * anything else (EACCES, ENOEXEC, ...) "cannot execute" (126). `label` names the container (or
 * the exec) for the message; the agent's error, RPC name included, is its cause.
 */
export function execFailure(error: unknown, label: string): ExecFailedError | undefined {
  if (!(error instanceof AgentError) || (error.method !== 'StartContainer' && error.method !== 'Exec')) return undefined;
  const notInPath = /: executable "(.*)" not found in \$PATH \((.*)\)$/su.exec(error.message);
  if (notInPath) {
    return new ExecFailedError(notInPath[1]!, 'not-found', `${label}: command "${notInPath[1]}" not found in $PATH (${notInPath[2]})`, { cause: error });
  }
  const execve = /: exec (.*): ([^:]*)$/su.exec(error.message);
  if (!execve) return undefined;
  const [, file, reason] = execve as unknown as [string, string, string];
  if (error.errnoName === 'ENOENT') return new ExecFailedError(file, 'not-found', `${label}: command "${file}" not found`, { cause: error });
  return new ExecFailedError(file, 'not-executable', `${label}: cannot execute "${file}": ${reason}`, { cause: error });
}

/**
 * The {@link InvalidStateError} for an agent's answer to Exec that says the container does not
 * run (it exited, or was never started: the host had not heard of it yet), or undefined.
 */
export function execStateFailure(error: unknown, label: string): InvalidStateError | undefined {
  if (!(error instanceof AgentError) || error.method !== 'Exec' || error.agentCode !== 'FAILED_PRECONDITION') return undefined;
  const state = /: container ".*" is (created|stopped), not running$/su.exec(error.message)?.[1];
  return state === undefined ? undefined : stateError('container', label, state, 'running', { action: 'exec' });
}

/**
 * Applies overrides to a copy of `spec.process`. The terminal is the user's choice alone
 * (`overrides.terminal`, the CLI's `-t`): a spec's own `terminal: true`, which `runc spec`
 * writes into every bundle, is not a request for one, so a process gets a separate stderr and
 * output without `\r\n` unless a terminal is asked for (docs/sandbox.md, "Containers").
 */
export function applyOverrides(spec: OciSpec, overrides: ProcessOverrides): OciSpec {
  const process: OciProcess = { ...spec.process };
  if (overrides.args) process.args = [...overrides.args];
  if (overrides.env) {
    const keys = new Set(overrides.env.map((e) => e.slice(0, e.indexOf('='))));
    process.env = [...(process.env ?? []).filter((e) => !keys.has(e.slice(0, e.indexOf('=')))), ...overrides.env];
  }
  if (overrides.cwd) process.cwd = overrides.cwd;
  if (overrides.user) process.user = { ...process.user, ...overrides.user };
  process.terminal = overrides.terminal === true;
  return { ...spec, process };
}

/** A host path a container needs in the guest (a bind mount source), and where it will appear. */
export interface HostShare {
  /** Index of the mount in `spec.mounts`. */
  index: number;
  source: string;
  readOnly: boolean;
}

/**
 * Adapts a spec to run in the VM: the container shares the VM's network (as in Kata, the VM
 * is the pod's network sandbox), so a `network` namespace entry is dropped, and namespaces
 * given by host `path` are meaningless in the guest. Returns the host bind mounts that must be
 * shared into the guest first.
 */
export function adaptSpecForGuest(spec: OciSpec): { spec: OciSpec; shares: HostShare[] } {
  const linux = spec.linux ? { ...spec.linux } : undefined;
  if (linux?.namespaces) {
    linux.namespaces = linux.namespaces.filter((n) => n.type !== 'network').map((n) => ({ type: n.type }));
  }
  const shares: HostShare[] = [];
  (spec.mounts ?? []).forEach((m, index) => {
    const options = m.options ?? [];
    const isBind = m.type === 'bind' || options.includes('bind') || options.includes('rbind');
    if (isBind && m.source !== undefined) {
      shares.push({ index, source: validate.absolutePath(m.source, `mounts[${index}].source`), readOnly: options.includes('ro') });
    }
  });
  const adapted: OciSpec = { ...spec, mounts: (spec.mounts ?? []).map((m) => ({ ...m })) };
  if (linux) adapted.linux = linux;
  return { spec: adapted, shares };
}
