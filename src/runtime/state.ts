/**
 * The runtime's own state, one folder per container under `--root` (default
 * /run/vmpod-runtime): `containers/ID/state.json`, the record every command reads (written
 * atomically), the monitor's control socket under `sock/` (short paths: a unix socket path has
 * 107 bytes at most, container ids have 64), the per-sandbox locks under `locks/`, and the
 * vmpod sandboxes themselves under `vmpod/` (a vmpod state directory of their own, so that
 * runtime sandboxes and `vmpod` CLI sandboxes do not mix).
 *
 * This module is what `vmpod-runtime state` loads: plain fs, no addon, no sandbox code.
 *
 * @module
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { writeFileAtomic } from '../state/atomic.js';
import { RuntimeError } from './log.js';

/** The runtime's default `--root`. */
export const DEFAULT_ROOT = '/run/vmpod-runtime';

/** The OCI runtime spec version of the state this runtime prints. */
export const OCI_VERSION = '1.0.2';

/** A container's status as the OCI runtime spec (and runc, with `paused`) names it. */
export type RuntimeStatus = 'creating' | 'created' | 'running' | 'paused' | 'stopped';

/** A host process known by pid and start time (field 22 of /proc/PID/stat), so a recycled pid is never taken for it. */
export interface Identity {
  pid: number;
  startTime: number;
}

/** A runtime-spec hook. */
export interface Hook {
  path: string;
  args?: string[];
  env?: string[];
  timeout?: number;
}

/** What `state.json` holds. */
export interface RuntimeRecord {
  format: 1;
  id: string;
  bundle: string;
  rootfs: string;
  /** RFC 3339 time of the create. */
  created: string;
  annotations: Record<string, string>;
  /** The vmpod sandbox (VM) the container runs in, an id under `ROOT/vmpod`. */
  sandbox: string;
  status: RuntimeStatus;
  /** The `create` process (while it runs). */
  creator?: Identity;
  /** The container's monitor, once spawned. */
  monitor?: Identity;
  /** How the container's init ended (status `stopped`). */
  exit?: { exitCode: number; signal: number };
  terminal: boolean;
  /** Hooks that run after `create` (poststop at delete), kept in case the bundle is gone by then. */
  poststop?: Hook[];
}

/** The OCI state of a container, as `runc state` prints it. */
export interface OciState {
  ociVersion: string;
  id: string;
  pid: number;
  status: Exclude<RuntimeStatus, never>;
  bundle: string;
  rootfs: string;
  created: string;
  owner: string;
  annotations?: Record<string, string>;
}

/** Container ids: what vmpod accepts for a container (runc takes `^[\w+-.]+$`; vmpod ids start with a letter or digit and have no `+` or `..`), at most 64 characters. */
const ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/u;

/** Checks a container id; throws the runtime error runc would give. */
export function checkId(id: string | undefined): string {
  if (id === undefined || id === '') throw new RuntimeError('container id cannot be empty');
  if (!ID.test(id) || id.includes('..')) throw new RuntimeError(`invalid container id format: ${id}`);
  return id;
}

/** The paths of runtime root `root`. */
export class RuntimeRoot {
  constructor(readonly dir: string) {}

  containers(): string {
    return path.join(this.dir, 'containers');
  }

  containerDir(id: string): string {
    return path.join(this.containers(), id);
  }

  recordFile(id: string): string {
    return path.join(this.containerDir(id), 'state.json');
  }

  /** The monitor's control socket: short whatever the id. */
  socket(id: string): string {
    return path.join(this.dir, 'sock', `${createHash('sha256').update(id).digest('hex').slice(0, 16)}.sock`);
  }

  /** The lock taken to create, join or delete the last container of sandbox `sandbox`. */
  sandboxLock(sandbox: string): string {
    return path.join(this.dir, 'locks', `${sandbox}.lock`);
  }

  /** The vmpod state directory of the runtime's sandboxes. */
  vmpodStateDir(): string {
    return path.join(this.dir, 'vmpod');
  }

  /** Reads the record of container `id`; RuntimeError "container does not exist" when there is none. */
  async read(id: string): Promise<RuntimeRecord> {
    let text: string;
    try {
      text = await fsp.readFile(this.recordFile(id), 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') throw new RuntimeError('container does not exist');
      throw error;
    }
    try {
      return JSON.parse(text) as RuntimeRecord;
    } catch (error) {
      throw new RuntimeError(`container ${id}: its state file is unreadable (${(error as Error).message}); delete --force removes it`);
    }
  }

  /** Writes the record atomically. */
  async write(record: RuntimeRecord): Promise<void> {
    await writeFileAtomic(this.recordFile(record.id), `${JSON.stringify(record)}\n`);
  }

  /** Changes the record under no lock: only the monitor (or a command when the monitor is gone) writes it. */
  async update(id: string, change: (r: RuntimeRecord) => void): Promise<RuntimeRecord> {
    const record = await this.read(id);
    change(record);
    await this.write(record);
    return record;
  }

  /** Every container id with a folder. */
  async ids(): Promise<string[]> {
    try {
      return (await fsp.readdir(this.containers())).filter((n) => ID.test(n)).sort();
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw error;
    }
  }
}

/** Start time of `pid` (field 22 of /proc/PID/stat), or undefined when there is no such process (or a zombie). */
export function startTimeOf(pid: number): number | undefined {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
  } catch {
    return undefined;
  }
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  if (fields[0] === 'Z' || fields[0] === 'X') return undefined;
  const start = Number(fields[19]);
  return Number.isFinite(start) ? start : undefined;
}

/** This process's identity. */
export function selfIdentity(): Identity {
  return { pid: process.pid, startTime: startTimeOf(process.pid) ?? 0 };
}

/** True when the process `identity` names still runs (not a zombie, not a recycled pid). */
export function alive(identity: Identity | undefined): boolean {
  return identity !== undefined && startTimeOf(identity.pid) === identity.startTime;
}

/**
 * The status a record stands for now: what the monitor recorded while it lives; `stopped` once
 * it is gone (it records the exit before it leaves; a monitor that died without recording it
 * leaves a container nobody can run any more). A record still `creating` is `creating` while its
 * creator or monitor lives, else `stopped` (a crashed create, which `delete --force` finishes).
 */
export function currentStatus(record: RuntimeRecord): RuntimeStatus {
  if (record.status === 'stopped') return 'stopped';
  if (record.status === 'creating') return alive(record.monitor) || alive(record.creator) ? 'creating' : 'stopped';
  return alive(record.monitor) ? record.status : 'stopped';
}

/** The OCI state JSON of a record (runc's fields: `rootfs`, `created`, `owner` besides the spec's). */
export function ociState(record: RuntimeRecord): OciState {
  const status = currentStatus(record);
  const state: OciState = {
    ociVersion: OCI_VERSION,
    id: record.id,
    pid: status === 'stopped' || !record.monitor ? 0 : record.monitor.pid,
    status,
    bundle: record.bundle,
    rootfs: record.rootfs,
    created: record.created,
    owner: '',
  };
  if (Object.keys(record.annotations).length > 0) state.annotations = record.annotations;
  return state;
}
