/**
 * Host processes that outlive the Node process that started them (QEMU, virtiofsd, their log
 * writers): started detached in their own session, known afterwards by pid plus start time (field
 * 22 of /proc/PID/stat), which guards against a recycled pid, and signalled through a pidfd opened
 * and checked against that identity first, so a signal never reaches another process that got the
 * same pid.
 *
 * @module
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import os from 'node:os';
import path from 'node:path';
import { native, packageRoot } from '../native.js';
import { printable } from '../printable.js';
import { afterSpawn } from '../failpoint.js';
import * as validate from '../validate.js';

/** A process as /proc knows it. */
export interface ProcessIdentity {
  readonly pid: number;
  /** Field 22 of /proc/PID/stat: clock ticks after boot when the process started. */
  readonly startTime: number;
}

/** State and start time from /proc/PID/stat, or undefined when there is no such process. */
export function readProcStat(pid: number): { state: string; startTime: number } | undefined {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
  } catch {
    return undefined;
  }
  // comm (field 2) may hold spaces and parentheses: parse after the last ')'.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const state = fields[0] ?? '';
  const startTime = Number(fields[19]);
  return Number.isFinite(startTime) ? { state, startTime } : undefined;
}

/** True while the process runs (a zombie counts as gone) and is the one identified. */
export function isAlive(identity: ProcessIdentity): boolean {
  const stat = readProcStat(identity.pid);
  return stat !== undefined && stat.startTime === identity.startTime && stat.state !== 'Z' && stat.state !== 'X';
}

/** True for a well-formed identity (a record from disk may hold anything). */
export function isProcessIdentity(value: unknown): value is ProcessIdentity {
  const v = value as Partial<ProcessIdentity> | undefined;
  return (
    typeof v === 'object' && v !== null &&
    Number.isInteger(v.pid) && (v.pid as number) > 1 && (v.pid as number) < 2 ** 22 &&
    Number.isInteger(v.startTime) && (v.startTime as number) >= 0
  );
}

/**
 * Sends `signal` to the process if it is still the one identified: opens a pidfd for its pid,
 * checks the start time of the process that pidfd holds, and signals through the pidfd (so the
 * pid cannot be reused in between). False when the process is gone (or was never that one).
 */
export function signalProcess(identity: ProcessIdentity, signal: NodeJS.Signals): boolean {
  if (!isProcessIdentity(identity)) return false;
  let pidfd: number;
  try {
    pidfd = native().pidfdOpen(identity.pid);
  } catch {
    return false; // ESRCH: no such process
  }
  try {
    // The pidfd pins the process it was opened for: if that is still ours, so is what we signal.
    if (!isAlive(identity)) return false;
    native().pidfdSendSignal(pidfd, os.constants.signals[signal]);
    return true;
  } catch {
    return false;
  } finally {
    native().closeFd(pidfd);
  }
}

/** Polls until the process is gone; false on timeout or abort. */
export async function waitForProcessExit(identity: ProcessIdentity, timeoutMs: number, signal?: AbortSignal): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  let delay = 2;
  while (isAlive(identity)) {
    if (Date.now() >= deadline || signal?.aborted) return false;
    await sleep(delay);
    delay = Math.min(delay * 2, 20);
  }
  return true;
}

/**
 * Ends the process: SIGTERM, then SIGKILL after `graceMs` (0: SIGKILL at once), and waits until
 * it is gone (at most 10 s more). True once it is gone; false if it survived SIGKILL that long
 * (e.g. stuck in the kernel).
 */
export async function terminate(identity: ProcessIdentity, graceMs = 3000): Promise<boolean> {
  if (graceMs > 0 && signalProcess(identity, 'SIGTERM') && (await waitForProcessExit(identity, graceMs))) return true;
  signalProcess(identity, 'SIGKILL');
  return waitForProcessExit(identity, 10_000);
}

/** Options of {@link spawnDetached}. */
export interface SpawnDetachedOptions {
  /** stdout and stderr are written here: a file (appended, created 0600) or an fd (e.g. a pipe to a log writer). */
  readonly output: { readonly file: string } | { readonly fd: number };
  /** Host fds the child inherits: `fds[i]` becomes fd `3 + i`. */
  readonly fds?: readonly number[];
  /** stdin: default /dev/null. */
  readonly stdin?: number;
  readonly env?: NodeJS.ProcessEnv;
  /** Its umask: default 077 (what it makes is its owner's alone); 0177 for a daemon that makes no folders (sockets 0600). */
  readonly umask?: 0o077 | 0o177;
}

/** A spawned daemon. `exit` of `child` still fires while this process lives. */
export interface DetachedProcess extends ProcessIdentity {
  readonly child: ChildProcess;
}

/**
 * Starts `binary args...` in a new session (setsid), stdout and stderr on `output`, with umask
 * 077 or 0177 (the sockets and files it makes are its owner's alone), and unreferenced: this Node process
 * may exit while it runs. Resolves once it exists, with its identity read at once.
 */
export async function spawnDetached(binary: string, args: readonly string[], options: SpawnDetachedOptions): Promise<DetachedProcess> {
  const out = 'file' in options.output ? fs.openSync(options.output.file, 'a', 0o600) : options.output.fd;
  let child: ChildProcess;
  // spawn() forks synchronously: the umask set around it is the child's, and nobody else's.
  const umask = process.umask(options.umask ?? 0o077);
  try {
    child = spawn(binary, args, {
      detached: true,
      stdio: [options.stdin ?? 'ignore', out, out, ...(options.fds ?? [])],
      env: options.env ?? { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LC_ALL: 'C' },
    });
  } finally {
    process.umask(umask);
    if ('file' in options.output) fs.closeSync(out);
  }
  const pid = await new Promise<number>((resolve, reject) => {
    child.once('spawn', () => resolve(child.pid ?? -1));
    child.once('error', reject);
  });
  child.unref();
  afterSpawn(path.basename(binary));
  // The identity is read right away: the process exists (at worst as a zombie we have not reaped).
  const stat = readProcStat(pid);
  return { pid, startTime: stat?.startTime ?? -1, child };
}

/** The log writer built with the addon (native/logger): copies its stdin into a capped, rotated log. */
export const LOGGER_BINARY = process.env['VMPOD_LOGGER'] ?? path.join(packageRoot, 'build', 'Release', 'vmpod-logger');

/** Bytes a log keeps before it is rotated (the previous ones stay in `FILE.1`). */
export const DEFAULT_LOG_BYTES = 4 * 1024 * 1024;

/** A running log writer and the write end of its pipe (give it to the writing process as its output, then close it). */
export interface LogPipe {
  readonly logger: DetachedProcess;
  readonly fd: number;
  /** Closes this process's copy of the write end (the writer has its own). */
  close(): void;
}

/**
 * Starts a detached log writer that appends what comes down a pipe to `file`, keeping at most
 * `maxBytes` there and the `maxBytes` before in `file.1`: what a guest can make its hypervisor
 * print then never grows without bound. The writer ends when every write end is closed.
 */
export async function spawnLogPipe(file: string, maxBytes = DEFAULT_LOG_BYTES): Promise<LogPipe> {
  validate.integer(maxBytes, 'maxBytes', 4096, Number.MAX_SAFE_INTEGER);
  const [read, write] = native().pipe();
  try {
    const logger = await spawnDetached(LOGGER_BINARY, [file, String(maxBytes)], { output: { file: '/dev/null' }, stdin: read });
    let closed = false;
    return {
      logger,
      fd: write,
      close() {
        if (!closed) native().closeFd(write);
        closed = true;
      },
    };
  } catch (error) {
    native().closeFd(write);
    throw error;
  } finally {
    native().closeFd(read);
  }
}

/**
 * The last `bytes` of a log file, for error messages. A guest writes what is in a console log, so
 * the text is made safe for a terminal (escape sequences and control characters shown escaped).
 */
export function logTail(file: string, bytes = 2048): string {
  const last = tailOf(file, bytes);
  // Just after a rotation the file is short: the rest of the tail is in FILE.1.
  const text = last.length < bytes ? Buffer.concat([tailOf(`${file}.1`, bytes - last.length), last]) : last;
  return printable(text.toString('utf8').trim());
}

function tailOf(file: string, bytes: number): Buffer {
  try {
    const fd = fs.openSync(file, 'r');
    try {
      const size = fs.fstatSync(fd).size;
      const length = Math.min(size, bytes);
      const buffer = Buffer.alloc(length);
      fs.readSync(fd, buffer, 0, length, size - length);
      return buffer;
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return Buffer.alloc(0);
  }
}
