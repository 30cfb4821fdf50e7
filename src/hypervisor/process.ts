/**
 * Detached daemon processes (QEMU, virtiofsd): started in their own session with stdio on a
 * log file, so they outlive the Node process that started them, and found again later by pid
 * plus start time, which guards against a recycled pid.
 *
 * @module
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

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

/** Sends a signal if the process is still the one identified; false when it is gone. */
export function signalProcess(identity: ProcessIdentity, signal: NodeJS.Signals): boolean {
  if (!isAlive(identity)) return false;
  try {
    process.kill(identity.pid, signal);
    return true;
  } catch {
    return false;
  }
}

/** Polls until the process is gone; false on timeout. */
export async function waitForProcessExit(identity: ProcessIdentity, timeoutMs: number, signal?: AbortSignal): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (isAlive(identity)) {
    if (Date.now() >= deadline || signal?.aborted) return false;
    await sleep(10);
  }
  return true;
}

/** Options of {@link spawnDetached}. */
export interface SpawnDetachedOptions {
  /** stdout and stderr are appended here (created 0600). */
  readonly logFile: string;
  /** Host fds the child inherits: `fds[i]` becomes fd `3 + i`. */
  readonly fds?: readonly number[];
  readonly env?: NodeJS.ProcessEnv;
}

/** A spawned daemon. `exit` of `child` still fires while this process lives. */
export interface DetachedProcess extends ProcessIdentity {
  readonly child: ChildProcess;
}

/**
 * Starts `binary args...` in a new session (setsid), stdin on /dev/null, stdout and stderr
 * appended to the log file, and unreferenced: this Node process may exit while it runs.
 */
export async function spawnDetached(binary: string, args: readonly string[], options: SpawnDetachedOptions): Promise<DetachedProcess> {
  const log = fs.openSync(options.logFile, 'a', 0o600);
  let child: ChildProcess;
  try {
    child = spawn(binary, args, {
      detached: true,
      stdio: ['ignore', log, log, ...(options.fds ?? [])],
      env: options.env ?? { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LC_ALL: 'C' },
    });
  } finally {
    fs.closeSync(log);
  }
  const pid = await new Promise<number>((resolve, reject) => {
    child.once('spawn', () => resolve(child.pid ?? -1));
    child.once('error', reject);
  });
  child.unref();
  // The identity is read right away: the process exists (at worst as a zombie we have not reaped).
  const stat = readProcStat(pid);
  return { pid, startTime: stat?.startTime ?? -1, child };
}

/** The last `bytes` of a log file, for error messages. */
export function logTail(file: string, bytes = 2048): string {
  try {
    const fd = fs.openSync(file, 'r');
    try {
      const size = fs.fstatSync(fd).size;
      const length = Math.min(size, bytes);
      const buffer = Buffer.alloc(length);
      fs.readSync(fd, buffer, 0, length, size - length);
      return buffer.toString('utf8').trim();
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return '';
  }
}
